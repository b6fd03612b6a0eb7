"""Pods on the physical segment: our underlay network next to the kernel's macvlan
and to our own overlay, in one run.

Test beds (built afresh for every test):

* ``underlay`` — :class:`overlay.testing.throughput.UnderlayNet`: a TAP pod of
  an underlay network on node ``n0`` (``Network.add_uplink`` on ``ul0``) to a
  plain host on the same bridge: pod TAP -> engine -> packet socket -> wire;
* ``macvlan`` — the kernel's baseline on the same bed: a macvlan (bridge mode)
  pod of ``ul0`` to the same plain host;
* ``overlay`` — our overlay between two nodes (VXLAN, one pod each), for scale.

``underlay`` and ``macvlan`` pods have the segment's full MTU (1500), the
overlay's 1450. Figures: one TCP stream (iperf3), small UDP datagrams
delivered per second, ping RTT; ``extra_info`` holds min/median/max per side
and ratios of medians against ``macvlan``; ``bench/report.py`` prints them.
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
        bed = beds.underlay(node_options=NODE_OPTIONS)
        overlay = beds.overlay(node_options=NODE_OPTIONS)
        yield {**bed.sides(), "overlay": overlay.side("overlay")}


def _run(benchmark: Any, sides: dict[str, Side], metric: Metric) -> None:
    benchmark.extra_info["node_options"] = NODE_OPTIONS
    benchmark.extra_info["path"] = "pod -> physical segment -> plain host"
    compare(benchmark, sides, metric, ROUNDS, baseline="macvlan", primary="underlay")


def test_underlay_tcp_one_stream(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, TCP_GBPS.with_options(seconds=SECONDS))


def test_underlay_small_udp_packets(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, SMALL_UDP_PPS)


def test_underlay_ping_rtt(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, PING_RTT_MS)
