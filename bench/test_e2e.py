"""End-to-end throughput and latency: our data plane, the kernel's VXLAN and a bare veth.

Every test builds, in the same run and with the plugin's fixtures, four test
beds of one shape, and measures them side by side with
:func:`overlay.testing.throughput.compare` (sides alternate within each round,
so drift hits all alike):

* ``overlay``  — two node namespaces running ``Node``, one TAP pod each;
* ``kernel``   — the same nodes with the Linux VXLAN device and veth pods
  (the baseline: ratios are against it);
* ``veth``     — no tunnel: two pods on one veth at the overlay pods' MTU
  (1450), the ceiling of what any overlay could reach here;
* ``veth1500`` — the same at 1500, what pods without an overlay would get.

Figures: one TCP stream (iperf3), small UDP datagrams delivered per second
(18-byte payloads from the C generator), ping RTT, and CPU seconds per GB
moved (machine-wide busy CPU over a TCP transfer: see
``throughput.cpu_s_per_gb``). ``extra_info`` holds min/median/max per side and
ratios of medians; ``bench/report.py`` prints them. Figures are never asserted.

Environment: ``OVERLAY_BENCH_ROUNDS`` (default 5; 1 for a quick run),
``OVERLAY_BENCH_SECONDS`` (TCP seconds, default 3), ``OVERLAY_BENCH_NODE_OPTIONS``
(JSON ``Node`` keyword arguments for the overlay, e.g. ``{"workers": 2}``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from overlay.testing.throughput import (
    CPU_S_PER_GB,
    PING_RTT_MS,
    SMALL_UDP_PPS,
    TCP_GBPS,
    KernelNet,
    Metric,
    OverlayNet,
    Side,
    VethNet,
    bench_node_options,
    bench_rounds,
    bench_seconds,
    compare,
    sides_of,
)

pytestmark = pytest.mark.root

ROUNDS = bench_rounds(5)
SECONDS = bench_seconds(3)
NODE_OPTIONS = bench_node_options()


@pytest.fixture
def sides(
    overlay_net: Callable[..., OverlayNet],
    overlay_kernel_net: Callable[..., KernelNet],
    overlay_veth_net: Callable[..., VethNet],
) -> dict[str, Side]:
    return sides_of(
        {
            "overlay": overlay_net(node_options=NODE_OPTIONS),
            "kernel": overlay_kernel_net(),
            "veth": overlay_veth_net(mtu=1450),
            "veth1500": overlay_veth_net(mtu=1500),
        }
    )


def _run(benchmark: Any, sides: dict[str, Side], metric: Metric) -> None:
    benchmark.extra_info["node_options"] = NODE_OPTIONS
    compare(benchmark, sides, metric, ROUNDS, baseline="kernel", primary="overlay")


def test_tcp_one_stream(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, TCP_GBPS.with_options(seconds=SECONDS))


def test_small_udp_packets(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, SMALL_UDP_PPS)


def test_ping_rtt(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, PING_RTT_MS)


def test_cpu_seconds_per_gb(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, CPU_S_PER_GB.with_options(seconds=SECONDS))
