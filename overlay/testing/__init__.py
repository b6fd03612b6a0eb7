"""Test-bed toolkit: namespaces as nodes and pods, traffic, capture, and the pytest plugin.

Why a package in the product rather than test helpers: the throughput runs
under pytest-benchmark ship with overlay, and plugin authors reuse the same
topologies to test their own CNI plugins against a real data plane.

Rooms:
  netns    — namespaces, veth links, the kernel VXLAN twin, leftover cleanup
  traffic  — ping, verified TCP transfer, UDP echo, iperf3 between namespaces
  capture  — tshark capture inside a namespace and field extraction
  plugin   — the pytest plugin (``pytest11`` entry point ``overlay``)
  fakes    — in-process TAP/UDP stand-ins for the engine (no root needed)

Names are re-exported lazily, so ``import overlay.testing`` (which pytest does
in every run, for the plugin) imports neither pyroute2 nor the native engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overlay.testing.capture import Capture, tshark_fields
    from overlay.testing.netns import (
        LinkInfo,
        Netns,
        Topology,
        cleanup_leftovers,
        kernel_vxlan,
        run_prefix,
    )
    from overlay.testing.traffic import (
        PingResult,
        TransferResult,
        iperf3,
        ping,
        tcp_transfer,
        udp_echo,
    )

_EXPORTS = {
    "Capture": "capture",
    "tshark_fields": "capture",
    "LinkInfo": "netns",
    "Netns": "netns",
    "Topology": "netns",
    "cleanup_leftovers": "netns",
    "kernel_vxlan": "netns",
    "run_prefix": "netns",
    "PingResult": "traffic",
    "TransferResult": "traffic",
    "iperf3": "traffic",
    "ping": "traffic",
    "tcp_transfer": "traffic",
    "udp_echo": "traffic",
}

__all__ = [
    "Capture",
    "LinkInfo",
    "Netns",
    "PingResult",
    "Topology",
    "TransferResult",
    "cleanup_leftovers",
    "iperf3",
    "kernel_vxlan",
    "ping",
    "run_prefix",
    "tcp_transfer",
    "tshark_fields",
    "udp_echo",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
