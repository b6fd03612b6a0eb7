"""Test-bed toolkit: namespaces as nodes and pods, traffic, capture, and the pytest plugin.

Why a package in the product rather than test helpers: the throughput runs
under pytest-benchmark ship with overlay, and plugin authors reuse the same
topologies to test their own CNI plugins against a real data plane.

Rooms:
  netns       — namespaces, veth links, the kernel VXLAN twin, leftover cleanup
  traffic     — ping, verified TCP transfer, UDP echo, iperf3, raw frames, wait_for
  capture     — tshark capture inside a namespace and field extraction
  cluster     — nodes, networks and pods on one underlay, programmed statically
  daemon      — real overlayd processes on namespaced nodes; overlay-cni as runtimes run it
  podman      — real podman (CNI backend, runc, busybox) per node, isolated in a directory
  etcd        — a real etcd on loopback (TLS and users too), stopped by PID
  bird        — a real BIRD 2 BGP router in a namespace, stopped by PID
  aio         — one coroutine run on the stdlib loop or uvloop; ``until``
  throughput  — test beds and side-by-side figures for pytest-benchmark
  pyforwarder — the pure-Python forwarder, a benchmark baseline
  fakes       — in-process TAP/UDP stand-ins for the engine (no root needed)
  plugin      — the pytest plugin (``pytest11`` entry point ``overlay``)

Names are re-exported lazily, so ``import overlay.testing`` (which pytest does
in every run, for the plugin) imports neither pyroute2 nor the native engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overlay.testing.aio import until
    from overlay.testing.bird import BirdRouter
    from overlay.testing.capture import Capture, tshark_fields
    from overlay.testing.cluster import Cluster, Pod
    from overlay.testing.daemon import DaemonCluster
    from overlay.testing.etcd import EtcdServer
    from overlay.testing.fakes import FakePort, loopback_engine
    from overlay.testing.netns import (
        LinkInfo,
        Netns,
        Topology,
        cleanup_leftovers,
        kernel_vxlan,
        run_prefix,
    )
    from overlay.testing.podman import PodmanNode
    from overlay.testing.pyforwarder import PyForwarder
    from overlay.testing.throughput import compare, sides_of
    from overlay.testing.traffic import (
        PingResult,
        TransferResult,
        iperf3,
        ping,
        send_frames,
        tcp_transfer,
        udp_echo,
        wait_for,
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
    "send_frames": "traffic",
    "wait_for": "traffic",
    "Cluster": "cluster",
    "Pod": "cluster",
    "DaemonCluster": "daemon",
    "PodmanNode": "podman",
    "EtcdServer": "etcd",
    "BirdRouter": "bird",
    "FakePort": "fakes",
    "loopback_engine": "fakes",
    "PyForwarder": "pyforwarder",
    "compare": "throughput",
    "sides_of": "throughput",
    "until": "aio",
}

__all__ = [
    "BirdRouter",
    "Capture",
    "Cluster",
    "DaemonCluster",
    "EtcdServer",
    "FakePort",
    "LinkInfo",
    "Netns",
    "PingResult",
    "Pod",
    "PodmanNode",
    "PyForwarder",
    "Topology",
    "TransferResult",
    "cleanup_leftovers",
    "compare",
    "iperf3",
    "kernel_vxlan",
    "loopback_engine",
    "ping",
    "run_prefix",
    "send_frames",
    "sides_of",
    "tcp_transfer",
    "tshark_fields",
    "udp_echo",
    "until",
    "wait_for",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
