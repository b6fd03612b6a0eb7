"""A pod's way out through its node: our gateway next to the kernel's own routing.

One test bed (:class:`overlay.testing.throughput.GatewayNet`), built afresh for
every test: node ``n0`` with an outside host (198.19.0.2) behind a veth, and
two pods that leave through the node to it, masqueraded to 198.19.0.1 by one
``NodeRules`` table (``inet overlay``):

* ``overlay`` — a TAP pod of our data plane (10.244.0.2) whose default route
  is its network's gateway (``Network.add_gateway``: the TAP ``ovg100`` in the
  node): pod TAP -> engine -> gateway TAP -> the node's stack -> NAT -> veth;
* ``kernel``  — the baseline: a veth pod (10.245.0.2) whose default route is
  the veth's node end (``kgw0``), routed by the node's kernel alone: pod veth
  -> the node's stack -> NAT -> veth.

Both pods have the overlay pod's MTU (1450), cross the same chains and leave
by the same veth, so the ratio is the cost of the data plane's two TAP hops
against a veth. Each round measures both sides, the first one alternating.

Figures: one TCP stream (iperf3, pod to outside), small UDP datagrams
delivered per second (18-byte payloads from the C generator), ping RTT, and
CPU seconds per GB moved (machine-wide; see ``throughput.cpu_s_per_gb``).
``extra_info`` holds min/median/max per side and ratios of medians;
``bench/report.py`` prints them. Figures are never asserted.

Environment: ``OVERLAY_BENCH_ROUNDS`` (default 5; 1 for a quick run),
``OVERLAY_BENCH_SECONDS`` (TCP seconds, default 3), ``OVERLAY_BENCH_NODE_OPTIONS``
(JSON ``Node`` keyword arguments for the overlay's node, e.g. ``{"workers": 2}``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from overlay.testing.throughput import (
    CPU_S_PER_GB,
    PING_RTT_MS,
    SMALL_UDP_PPS,
    TCP_GBPS,
    GatewayNet,
    Metric,
    Testbeds,
    bench_node_options,
    bench_rounds,
    bench_seconds,
    compare,
)

pytestmark = pytest.mark.root

ROUNDS = bench_rounds(5)
SECONDS = bench_seconds(3)
NODE_OPTIONS = bench_node_options()


@pytest.fixture
def bed() -> Iterator[GatewayNet]:
    with Testbeds() as beds:
        yield beds.gateway(node_options=NODE_OPTIONS)


def _run(benchmark: Any, bed: GatewayNet, metric: Metric) -> None:
    benchmark.extra_info["node_options"] = NODE_OPTIONS
    benchmark.extra_info["path"] = "pod -> node gateway -> masquerade -> outside host"
    compare(benchmark, bed.sides(), metric, ROUNDS, baseline="kernel", primary="overlay")


def test_gateway_tcp_one_stream(benchmark: Any, bed: GatewayNet) -> None:
    _run(benchmark, bed, TCP_GBPS.with_options(seconds=SECONDS))


def test_gateway_small_udp_packets(benchmark: Any, bed: GatewayNet) -> None:
    _run(benchmark, bed, SMALL_UDP_PPS)


def test_gateway_ping_rtt(benchmark: Any, bed: GatewayNet) -> None:
    _run(benchmark, bed, PING_RTT_MS)


def test_gateway_cpu_seconds_per_gb(benchmark: Any, bed: GatewayNet) -> None:
    _run(benchmark, bed, CPU_S_PER_GB.with_options(seconds=SECONDS))
