"""Routed networks: our routed path next to the kernel's own host-gw and to our
own overlay, in one run.

Test beds (built afresh for every test):

* ``routed`` — :class:`overlay.testing.throughput.RoutedNet`: a TAP pod on node
  ``n0`` to a TAP pod on ``n1`` of a routed network (no tunnel): pod TAP ->
  engine -> gateway TAP ``ovg<vni>`` -> the node's kernel routes -> the
  underlay as plain IP, and the same way in on the far node;
* ``host-gw`` — the kernel's baseline on the same two nodes (flannel's
  host-gw): veth pods, the node end as their default route, the other node's
  pod subnet routed via its underlay address;
* ``overlay`` — our overlay between two nodes (VXLAN, one pod each).

``routed`` and ``host-gw`` pods have the underlay's full MTU (1500), the
overlay's 1450. Figures: one TCP stream (iperf3), small UDP datagrams
delivered per second, ping RTT; ``extra_info`` holds min/median/max per side
and ratios of medians against ``host-gw``; ``bench/report.py`` prints them.
Figures are never asserted.

Environment: ``OVERLAY_BENCH_ROUNDS`` (default 5; 1 for a quick run),
``OVERLAY_BENCH_SECONDS`` (TCP seconds, default 3), ``OVERLAY_BENCH_NODE_OPTIONS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from overlay.testing.throughput import (
    PING_RTT_MS,
    SMALL_UDP_PPS,
    TCP_GBPS,
    Metric,
    Side,
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
def sides() -> Iterator[dict[str, Side]]:
    with Testbeds() as beds:
        bed = beds.routed(node_options=NODE_OPTIONS)
        overlay = beds.overlay(node_options=NODE_OPTIONS)
        yield {**bed.sides(), "overlay": overlay.side("overlay")}


def _run(benchmark: Any, sides: dict[str, Side], metric: Metric) -> None:
    benchmark.extra_info["node_options"] = NODE_OPTIONS
    benchmark.extra_info["path"] = "pod -> node routes -> underlay (plain IP) -> node -> pod"
    compare(benchmark, sides, metric, ROUNDS, baseline="host-gw", primary="routed")


def test_routed_tcp_one_stream(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, TCP_GBPS.with_options(seconds=SECONDS))


def test_routed_small_udp_packets(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, SMALL_UDP_PPS)


def test_routed_ping_rtt(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, PING_RTT_MS)
