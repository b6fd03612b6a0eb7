"""End-to-end throughput and latency: our data plane next to the kernel's VXLAN.

Both topologies are built in the same run on the same kind of testbed: two
node namespaces joined by a veth (198.18.0.0/24), one pod on each node
(10.244.1.2 -> 10.244.1.3). Ours: pods on TAPs of the userspace engine. The
kernel's: pods on veths bridged to a Linux ``vxlan`` device. Each figure is
taken over several rounds; ``extra_info`` holds min/median/max per side and
the ratio of the medians (ours / kernel, or kernel / ours for latency).
"""

from __future__ import annotations

import socket
import statistics
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from overlay._native import ffi, lib
from overlay.node import Encap
from overlay.testing.cluster import Cluster, KernelCluster
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import iperf3, ping

pytestmark = pytest.mark.root

ROUNDS = 5
TCP_SECONDS = 3
PPS_SECONDS = 2.0
PAYLOAD_BYTES = 18


class Side:
    def __init__(self, name: str, a: Netns, b: Netns, a_ip: str, b_ip: str) -> None:
        self.name, self.a, self.b, self.a_ip, self.b_ip = name, a, b, a_ip, b_ip


@pytest.fixture(scope="module")
def sides() -> Iterator[dict[str, Side]]:
    with Topology() as topo:
        kern = KernelCluster(topo)
        ka = kern.add_pod(0, "10.244.1.2/24")
        kb = kern.add_pod(1, "10.244.1.3/24")
        with Cluster(topo, Encap.VXLAN) as c:
            c.add_network(100, "bench")
            oa = c.add_pod(0, 100, "10.244.1.2/24")
            ob = c.add_pod(1, 100, "10.244.1.3/24")
            c.start()
            yield {
                "overlay": Side("overlay", oa.netns, ob.netns, oa.ip, ob.ip),
                "kernel": Side("kernel", ka.netns, kb.netns, ka.ip, kb.ip),
            }


def small_udp_pps(side: Side) -> float:
    """Datagrams per second delivered pod to pod, offered by the C generator."""
    rx = side.b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = side.a.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind((side.b_ip, 0))
        tx.connect((side.b_ip, rx.getsockname()[1]))
        got: dict[str, int] = {}

        def sink() -> None:
            p, b = ffi.new("uint64_t *"), ffi.new("uint64_t *")
            lib.ovl_gen_recv(rx.fileno(), int((PPS_SECONDS + 3) * 1e9), int(0.5e9), p, b)
            got["packets"] = int(p[0])

        t = threading.Thread(target=sink)
        t.start()
        payload = b"\x00" * PAYLOAD_BYTES
        sent = lib.ovl_gen_send(
            tx.fileno(), payload, len(payload), 10**12, 64, int(PPS_SECONDS * 1e9)
        )
        t.join()
        return got.get("packets", 0) / PPS_SECONDS if sent > 0 else 0.0
    finally:
        rx.close()
        tx.close()


def tcp_gbps(side: Side) -> float:
    return iperf3(side.a, side.b, side.b_ip, seconds=TCP_SECONDS).bits_per_second / 1e9


def ping_rtt_ms(side: Side) -> float:
    r = ping(side.a, side.b_ip, count=20, interval=0.02, timeout=5)
    return statistics.median(r.rtts_ms) if r.rtts_ms else float("nan")


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _compare(
    benchmark: Any,
    sides: dict[str, Side],
    measure: Callable[[Side], float],
    unit: str,
    higher_is_better: bool = True,
) -> None:
    results: dict[str, list[float]] = {"overlay": [], "kernel": []}

    def one_round() -> None:
        for name in ("kernel", "overlay"):  # alternate, so drift hits both alike
            results[name].append(measure(sides[name]))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    ours, kern = _summary(results["overlay"]), _summary(results["kernel"])
    ratio = (
        (ours["median"] / kern["median"] if higher_is_better else kern["median"] / ours["median"])
        if ours["median"] and kern["median"]
        else float("nan")
    )
    benchmark.extra_info.update(
        {
            "unit": unit,
            "rounds": ROUNDS,
            "overlay": ours,
            "kernel": kern,
            "ratio": ratio,
            "ratio_meaning": "overlay/kernel"
            if higher_is_better
            else "kernel/overlay (>1: overlay is faster)",
            "raw": results,
        }
    )


def test_tcp_one_stream_vs_kernel_vxlan(benchmark: Any, sides: dict[str, Side]) -> None:
    _compare(benchmark, sides, tcp_gbps, "Gbit/s")


def test_small_udp_packets_vs_kernel_vxlan(benchmark: Any, sides: dict[str, Side]) -> None:
    _compare(benchmark, sides, small_udp_pps, "packets/s")


def test_ping_rtt_vs_kernel_vxlan(benchmark: Any, sides: dict[str, Side]) -> None:
    _compare(benchmark, sides, ping_rtt_ms, "ms", higher_is_better=False)
