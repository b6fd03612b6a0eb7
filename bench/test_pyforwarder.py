"""Our data plane next to the pure-Python forwarder a user might write instead.

``overlay.testing.pyforwarder`` is an honest asyncio VXLAN forwarder (uvloop
when installed, batched TAP reads, prebuilt header, bounded send buffer).
Both test beds have the same shape (two node namespaces on a veth underlay,
one TAP pod each, 10.244.1.2 -> 10.244.1.3), are built in the same run and
are measured alternately; ratios are ours against the forwarder's (the
baseline). Figures are never asserted.

Environment: ``OVERLAY_BENCH_ROUNDS`` (default 5), ``OVERLAY_BENCH_SECONDS``
(TCP seconds, default 3), ``OVERLAY_BENCH_NODE_OPTIONS`` (JSON ``Node``
keyword arguments for the overlay).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from overlay.testing.throughput import (
    SMALL_UDP_PPS,
    TCP_GBPS,
    Metric,
    OverlayNet,
    PyForwarderNet,
    Side,
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
    overlay_net: Callable[..., OverlayNet], overlay_pyforwarder_net: Callable[..., PyForwarderNet]
) -> dict[str, Side]:
    return sides_of(
        {
            "overlay": overlay_net(node_options=NODE_OPTIONS),
            "pyforwarder": overlay_pyforwarder_net(),
        }
    )


def _run(benchmark: Any, sides: dict[str, Side], metric: Metric) -> None:
    benchmark.extra_info["node_options"] = NODE_OPTIONS
    compare(benchmark, sides, metric, ROUNDS, baseline="pyforwarder", primary="overlay")


def test_tcp_one_stream_vs_pyforwarder(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, TCP_GBPS.with_options(seconds=SECONDS))


def test_small_udp_packets_vs_pyforwarder(benchmark: Any, sides: dict[str, Side]) -> None:
    _run(benchmark, sides, SMALL_UDP_PPS)
