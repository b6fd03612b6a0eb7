"""Throughput runs: test beds, traffic figures and side-by-side comparisons for pytest-benchmark.

Why this module exists
----------------------
Anyone who benchmarks an overlay asks the same three questions: how fast is
it, compared with what, and at what cost. A figure alone ("9 Gbit/s") means
little on a shared 2-core machine; a ratio against a baseline measured in the
same run, on the same kind of topology, with the same tools, means a lot.
This module packages that discipline so benchmark authors get it for free:

* **Test beds of one shape.** :class:`OverlayNet` (our data plane, on
  :class:`~overlay.testing.cluster.Cluster`), :class:`KernelNet` (the Linux
  VXLAN device, on :class:`~overlay.testing.cluster.KernelCluster`),
  :class:`VethNet` (no tunnel at all: two pods on one veth, the ceiling) and
  :class:`PyForwarderNet` (the pure-Python forwarder of
  :mod:`overlay.testing.pyforwarder`, the floor). Each has ``pods``,
  ``pair()`` and ``side()``; the plugin exposes them as the factory fixtures
  ``overlay_net``, ``overlay_kernel_net``, ``overlay_veth_net`` and ``overlay_pyforwarder_net``, and
  :class:`Testbeds` removes everything they made, also when a test fails.
  :class:`GatewayNet` is one node's way out instead: a pod of our data
  plane leaving through its network's gateway next to a veth pod routed by
  the node's kernel, both masqueraded to the same outside host
  (``sides()``; :meth:`Testbeds.gateway` builds it).
* **Figures measured identically on every side** (a :class:`Side` is a
  client pod and a server pod): one TCP stream with iperf3, small UDP
  datagrams per second from the C generator, ping RTT, and CPU seconds per GB
  moved. Each helper returns its figure and, given the ``benchmark`` fixture,
  records it in ``benchmark.extra_info``.
* **Comparisons that resist drift.** :func:`compare` measures every side
  once per round, rotating which goes first, so slow drift of the machine
  (other jobs, thermal, page cache) hits all sides alike; it reports
  min/median/max per side and ratios of medians.

Figures are never asserted: they go to the benchmark JSON, which
``bench/report.py`` turns into a table.

Addresses follow the test bed's rules: underlay 198.18.0.0/24 and pods in
10.244.0.0/16 by default, only inside namespaces made here, each with a
per-run prefix (``ovt<pid>-``) plus a per-test-bed suffix, so several test
beds coexist in one test and leftovers of a crashed run are found.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import math
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from overlay.node import Encap
from overlay.testing.cluster import Cluster, KernelCluster, NetPod, Pod, pod_mac, underlay_ip
from overlay.testing.netns import Netns, Topology, run_prefix
from overlay.testing.traffic import iperf3, ping

__all__ = [
    "CPU_S_PER_GB",
    "PING_RTT_MS",
    "SMALL_UDP_PPS",
    "TCP_GBPS",
    "TCP_CONNECTS_PER_S",
    "Comparison",
    "GatewayNet",
    "KernelNet",
    "Metric",
    "NetPod",
    "OUTSIDE_IP",
    "OverlayNet",
    "PyForwarderNet",
    "RoutedNet",
    "Side",
    "TcpFigures",
    "UdpFigures",
    "Testbeds",
    "VethNet",
    "bench_node_options",
    "bench_rounds",
    "bench_seconds",
    "busy_cpu_seconds",
    "compare",
    "cpu_s_per_gb",
    "ping_rtt_ms",
    "record",
    "sides_of",
    "small_udp",
    "small_udp_pps",
    "tcp_gbps",
    "tcp_connects_per_s",
    "tcp_stream",
]

DEFAULT_CIDR = "10.244.1.0/24"
TUNNEL_OVERHEAD_BYTES = 50
"""VXLAN over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14."""

_ROUNDS_ENV = "OVERLAY_BENCH_ROUNDS"
_SECONDS_ENV = "OVERLAY_BENCH_SECONDS"
_NODE_OPTIONS_ENV = "OVERLAY_BENCH_NODE_OPTIONS"
_MAX_ROUNDS = 1000
_MAX_SECONDS = 600

_suffixes = itertools.count()


# ---- configuration from the environment ------------------------------------


def _env_int(name: str, default: int, upper: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: give a whole number 1-{upper}") from None
    if not 1 <= value <= upper:
        raise ValueError(f"{name}={raw!r}: give a whole number 1-{upper}")
    return value


def bench_rounds(default: int = 5) -> int:
    """Rounds per comparison: ``$OVERLAY_BENCH_ROUNDS`` or ``default`` (1 for a quick run)."""
    return _env_int(_ROUNDS_ENV, default, _MAX_ROUNDS)


def bench_seconds(default: int = 3) -> int:
    """Seconds per TCP/CPU measurement: ``$OVERLAY_BENCH_SECONDS`` or ``default``."""
    return _env_int(_SECONDS_ENV, default, _MAX_SECONDS)


def bench_node_options(default: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``Node`` keyword arguments for benchmarks: ``$OVERLAY_BENCH_NODE_OPTIONS`` (a JSON
    object, e.g. ``{"workers": 2}``) or ``default``. Lets one bench file measure several
    engine configurations without editing it."""
    raw = os.environ.get(_NODE_OPTIONS_ENV)
    if raw is None or raw.strip() == "":
        return dict(default or {})
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{_NODE_OPTIONS_ENV}={raw!r}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f'{_NODE_OPTIONS_ENV}={raw!r}: give a JSON object like {{"workers": 2}}')
    return value


# ---- sides and test beds ----------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One thing being measured: traffic goes from ``a`` (client) to ``b_ip`` in ``b``."""

    name: str
    a: Netns
    b: Netns
    a_ip: str
    b_ip: str


def _pod_cidr(cidr: str, index: int) -> str:
    """The ``index``-th pod address of ``cidr``: .2, .3, ... (.1 is left for a gateway)."""
    net = ipaddress.ip_network(cidr, strict=False)
    if index < 0 or 2 + index >= net.num_addresses - (1 if net.version == 4 else 0):
        raise ValueError(f"cidr={cidr!r} has no room for pod #{index + 1}; give a larger network")
    return f"{net.network_address + 2 + index}/{net.prefixlen}"


def _new_topology(kind: str) -> Topology:
    """A topology with this run's prefix plus a suffix unique in the process."""
    return Topology(f"{run_prefix()}{kind}{next(_suffixes)}")


class _Net:
    """What every test bed shares: a topology, a close stack, pods and the first pair."""

    kind = "net"
    pods: list[Any]

    def __init__(self, topology: Topology, stack: contextlib.ExitStack) -> None:
        self.topology = topology
        self._stack = stack

    def pair(self) -> tuple[Any, Any]:
        """The first pod of node 0 and the first pod of node 1."""
        first: dict[int, Any] = {}
        for p in self.pods:
            first.setdefault(p.node, p)
        if 0 not in first or 1 not in first:
            raise ValueError(f"{type(self).__name__} needs pods on nodes 0 and 1 for a pair")
        return first[0], first[1]

    def side(self, name: str | None = None) -> Side:
        """:meth:`pair` as a :class:`Side` named ``name`` (default: the test bed's kind)."""
        a, b = self.pair()
        return Side(name or self.kind, a.netns, b.netns, a.ip, b.ip)

    def close(self) -> None:
        """Stop what runs and remove every namespace; safe to call again."""
        self._stack.close()


class OverlayNet(_Net):
    """Our data plane: ``nodes`` nodes running ``Node``, ``pods_per_node`` TAP pods each."""

    kind = "overlay"

    def __init__(
        self, topology: Topology, stack: contextlib.ExitStack, cluster: Cluster, vni: int
    ) -> None:
        super().__init__(topology, stack)
        self.cluster = cluster
        self.vni = vni
        self.pods: list[Pod] = cluster.pods


class KernelNet(_Net):
    """The kernel's twin: a Linux VXLAN device per node, bridged to veth pods."""

    kind = "kernel"

    def __init__(
        self, topology: Topology, stack: contextlib.ExitStack, cluster: KernelCluster
    ) -> None:
        super().__init__(topology, stack)
        self.cluster = cluster
        self.vni = cluster.vni
        self.pods: list[NetPod] = cluster.pods


class VethNet(_Net):
    """No tunnel: two pod namespaces on one veth (10.244.1.2 <-> 10.244.1.3 by default)."""

    kind = "veth"

    def __init__(
        self, topology: Topology, stack: contextlib.ExitStack, pods: list[NetPod], mtu: int
    ) -> None:
        super().__init__(topology, stack)
        self.pods: list[NetPod] = pods
        self.mtu = mtu


class PyForwarderNet(_Net):
    """Two nodes each running the pure-Python forwarder, one TAP pod per node."""

    kind = "pyforwarder"

    def __init__(
        self,
        topology: Topology,
        stack: contextlib.ExitStack,
        pods: list[NetPod],
        forwarders: list[Any],
    ) -> None:
        super().__init__(topology, stack)
        self.pods: list[NetPod] = pods
        self.forwarders = forwarders


def _check_shape(nodes: int, pods_per_node: int) -> None:
    if not 1 <= nodes <= 200:
        raise ValueError(f"nodes={nodes}: 1-200 nodes")
    if not 1 <= pods_per_node <= 100:
        raise ValueError(f"pods_per_node={pods_per_node}: 1-100 pods per node")


def build_overlay_net(
    nodes: int = 2,
    pods_per_node: int = 1,
    encap: Encap = Encap.VXLAN,
    mtu: int = 1500,
    node_options: Mapping[str, Any] | None = None,
    vni: int = 100,
    cidr: str = DEFAULT_CIDR,
) -> OverlayNet:
    """Build and start an :class:`OverlayNet`; the caller closes it.

    Pod ``k`` (counting node by node within each pod index: node 0's first,
    node 1's first, ..., node 0's second, ...) gets the ``k``-th address of
    ``cidr`` from .2 up. ``node_options`` are passed to every ``Node`` as
    keyword arguments unchanged (``workers``, ``udp_checksum``, offloads...).
    """
    _check_shape(nodes, pods_per_node)
    with contextlib.ExitStack() as stack:
        topo = _new_topology("o")
        stack.callback(topo.close)
        cluster = Cluster(
            topo, encap, n_nodes=nodes, mtu=mtu, node_options=dict(node_options or {})
        )
        stack.callback(cluster.close)
        cluster.add_network(vni, "bench")
        k = 0
        for _ in range(pods_per_node):
            for node in range(nodes):
                cluster.add_pod(node, vni, _pod_cidr(cidr, k))
                k += 1
        cluster.start()
        return OverlayNet(topo, stack.pop_all(), cluster, vni)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def build_kernel_net(
    nodes: int = 2,
    pods_per_node: int = 1,
    encap: Encap = Encap.VXLAN,
    mtu: int = 1500,
    vni: int = 100,
    cidr: str = DEFAULT_CIDR,
) -> KernelNet:
    """Build a :class:`KernelNet` of the same shape as :func:`build_overlay_net` builds."""
    _check_shape(nodes, pods_per_node)
    if encap is not Encap.VXLAN:
        raise ValueError(
            f"encap={encap!r}: the kernel twin is VXLAN only (this kernel has no Geneve)"
        )
    with contextlib.ExitStack() as stack:
        topo = _new_topology("k")
        stack.callback(topo.close)
        cluster = KernelCluster(topo, vni=vni, n_nodes=nodes, mtu=mtu)
        k = 0
        for _ in range(pods_per_node):
            for node in range(nodes):
                cluster.add_pod(node, _pod_cidr(cidr, k))
                k += 1
        return KernelNet(topo, stack.pop_all(), cluster)
    raise AssertionError("unreachable")  # pragma: no cover


def build_veth_net(mtu: int = 1500 - TUNNEL_OVERHEAD_BYTES, cidr: str = DEFAULT_CIDR) -> VethNet:
    """Build a :class:`VethNet`: pods ``a`` and ``b`` joined by one veth of ``mtu`` bytes."""
    if not 68 <= mtu <= 65535:
        raise ValueError(f"mtu={mtu}: 68-65535 bytes")
    with contextlib.ExitStack() as stack:
        topo = _new_topology("v")
        stack.callback(topo.close)
        a, b = topo.add_netns("a"), topo.add_netns("b")
        ca, cb = _pod_cidr(cidr, 0), _pod_cidr(cidr, 1)
        topo.veth(a, b, ca, cb, name_a="eth0", name_b="eth0", mtu=mtu)
        pods = [
            NetPod("a", a, 0, a.link_info("eth0").mac or "", ca),
            NetPod("b", b, 1, b.link_info("eth0").mac or "", cb),
        ]
        return VethNet(topo, stack.pop_all(), pods, mtu)
    raise AssertionError("unreachable")  # pragma: no cover


def build_pyforwarder_net(
    mtu: int = 1500,
    vni: int = 100,
    cidr: str = DEFAULT_CIDR,
    *,
    use_uvloop: bool | None = None,
) -> PyForwarderNet:
    """Build and start a :class:`PyForwarderNet`: two nodes, one pod each, static FDB."""
    from overlay.testing.pyforwarder import PyForwarder

    with contextlib.ExitStack() as stack:
        topo = _new_topology("f")
        stack.callback(topo.close)
        node_ns = [topo.add_netns(f"n{i}") for i in range(2)]
        topo.underlay(node_ns, mtu=mtu)
        pods = [
            NetPod(f"p{i}", topo.add_netns(f"p{i}"), i, pod_mac(i, vni, 1), _pod_cidr(cidr, i))
            for i in range(2)
        ]
        forwarders: list[PyForwarder] = []
        for i in range(2):
            other = 1 - i
            fwd = PyForwarder(
                netns=node_ns[i].path,
                underlay=underlay_ip(i),
                vni=vni,
                peers=[underlay_ip(other)],
                fdb={pods[other].mac: underlay_ip(other)},
                use_uvloop=use_uvloop,
            )
            stack.callback(fwd.stop)
            fwd.move_to_netns(
                pods[i].netns.path,
                "eth0",
                mac=pods[i].mac,
                ips=[pods[i].cidr],
                mtu=mtu - TUNNEL_OVERHEAD_BYTES,
            )
            forwarders.append(fwd)
        for fwd in forwarders:
            fwd.start()
        return PyForwarderNet(topo, stack.pop_all(), pods, forwarders)
    raise AssertionError("unreachable")  # pragma: no cover


OUTSIDE_IP = "198.19.0.2"
"""The outside host of :class:`GatewayNet` (RFC 2544 range of the test bed's outside world)."""
_WAN_NODE_CIDR, _WAN_OUTSIDE_CIDR = "198.19.0.1/24", f"{OUTSIDE_IP}/24"
_KERNEL_GATEWAY_IFNAME = "kgw0"  # not ovg*: the rules' "oifname != ovg*" must see it as the way out


class GatewayNet(_Net):
    """One node with a way out, and two pods that take it to the same outside host.

    Node ``n0`` (``Node`` on its underlay address, no peers) reaches the
    outside host (:data:`OUTSIDE_IP`, a namespace behind the veth ``wan0``;
    the node is 198.19.0.1). Two pods leave through it:

    * ``pods[0]``, the overlay's: a TAP pod of our data plane in network
      ``vni`` (``cidr``, .2) whose default route is the network's gateway
      (``Network.add_gateway``: the TAP ``ovg<vni>`` in the node, .1);
    * ``pods[1]``, the kernel's own path: a veth pod (``kernel_cidr``, .2)
      whose default route is the veth's node end ``kgw0`` (.1), routed by the
      node's kernel alone.

    One ``NodeRules`` table holds both as gateways (``GatewayRule`` each,
    masquerade on), so both pods' traffic crosses the same forward and
    postrouting chains, is masqueraded to 198.19.0.1 and leaves by the same
    veth; the outside host has no route to either range, so only the
    translation brings answers back. The ranges differ because two gateways of
    one namespace may not overlap. Both pods have the overlay pod's MTU (the
    underlay's less the encapsulation), so TCP segments are the same size.
    """

    kind = "gateway"

    def __init__(
        self,
        topology: Topology,
        stack: contextlib.ExitStack,
        node: Any,
        node_ns: Netns,
        outside: NetPod,
        pods: list[NetPod],
        rules: Any,
    ) -> None:
        super().__init__(topology, stack)
        self.node = node  # overlay.node.Node
        self.node_ns = node_ns
        self.outside = outside
        self.pods: list[NetPod] = pods
        self.rules = rules  # overlay.gateway.NodeRules of node_ns

    def pair(self) -> tuple[NetPod, NetPod]:
        """The overlay pod and the outside host."""
        return self.pods[0], self.outside

    def side(self, name: str | None = None) -> Side:
        """The overlay pod to the outside host, through the network's gateway (``overlay``)."""
        pod = self.pods[0]
        return Side(name or "overlay", pod.netns, self.outside.netns, pod.ip, self.outside.ip)

    def kernel_side(self, name: str | None = None) -> Side:
        """The veth pod to the outside host, routed by the node's kernel (``kernel``)."""
        pod = self.pods[1]
        return Side(name or "kernel", pod.netns, self.outside.netns, pod.ip, self.outside.ip)

    def sides(self) -> dict[str, Side]:
        """``{"overlay": side(), "kernel": kernel_side()}``, for :func:`compare`."""
        return {"overlay": self.side(), "kernel": self.kernel_side()}


def _host_cidr(cidr: str, host: int, field_name: str) -> str:
    """Address number ``host`` of ``cidr`` with its prefix length (``10.244.0.2/16``)."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ValueError(f"{field_name}={cidr!r}: give a network like 10.244.0.0/16") from None
    if net.version != 4 or net.num_addresses < 4:
        raise ValueError(f"{field_name}={cidr!r}: give an IPv4 network of /30 or larger")
    return f"{net.network_address + host}/{net.prefixlen}"


def build_gateway_net(
    mtu: int = 1500,
    node_options: Mapping[str, Any] | None = None,
    vni: int = 100,
    cidr: str = "10.244.0.0/16",
    kernel_cidr: str = "10.245.0.0/16",
) -> GatewayNet:
    """Build and start a :class:`GatewayNet`; the caller closes it.

    ``mtu`` is the node's underlay MTU (the pods get it less the encapsulation
    overhead); ``node_options`` go to ``Node`` unchanged. Before returning,
    both pods must reach the outside host (a ping each), so a broken path is
    an error here, not a zero figure later.
    """
    from overlay.gateway import GatewayRule, NodeRules, prepare_forwarding
    from overlay.node import Node

    gw_cidr, pod_cidr = _host_cidr(cidr, 1, "cidr"), _host_cidr(cidr, 2, "cidr")
    kgw_cidr, kpod_cidr = (
        _host_cidr(kernel_cidr, 1, "kernel_cidr"),
        _host_cidr(kernel_cidr, 2, "kernel_cidr"),
    )
    if ipaddress.ip_network(cidr).overlaps(ipaddress.ip_network(kernel_cidr)):
        raise ValueError(
            f"cidr={cidr!r} and kernel_cidr={kernel_cidr!r} must not overlap: two gateways "
            "of one namespace cannot share addresses; give another kernel_cidr"
        )
    with contextlib.ExitStack() as stack:
        topo = _new_topology("g")
        stack.callback(topo.close)
        n0, out = topo.add_netns("n0"), topo.add_netns("out")
        pod_ns, kpod_ns = topo.add_netns("p0"), topo.add_netns("k0")
        n0.addr_add("lo", f"{underlay_ip(0)}/32")  # the node's underlay address, no peers
        topo.veth(n0, out, _WAN_NODE_CIDR, _WAN_OUTSIDE_CIDR, name_a="wan0", name_b="wan0")
        node = Node(underlay_ip(0), Encap.VXLAN, netns=n0.path, mtu=mtu, **dict(node_options or {}))
        stack.callback(node.close)
        pod_mtu = node.pod_mtu()
        net = node.add_network(vni, "bench")
        gateway = net.add_gateway(pod_mac(0, vni, 0), [gw_cidr])
        port = net.add_port(pod_mac(0, vni, 1), [pod_cidr], ifname=f"t{vni}p0"[:15])
        port.move_to_netns(pod_ns.path, "eth0", gateway=str(ipaddress.ip_interface(gw_cidr).ip))
        topo.veth(
            n0, kpod_ns, kgw_cidr, kpod_cidr, name_a=_KERNEL_GATEWAY_IFNAME, name_b="eth0",
            mtu=pod_mtu,
        )  # fmt: skip
        kpod_ns.route_add("default", gateway=str(ipaddress.ip_interface(kgw_cidr).ip))
        prepare_forwarding(n0.path, _KERNEL_GATEWAY_IFNAME, {4})
        rules = NodeRules(n0.path)
        rules.apply(
            [
                GatewayRule(gateway.ifname, (cidr,)),
                GatewayRule(_KERNEL_GATEWAY_IFNAME, (kernel_cidr,)),
            ]
        )
        node.start()
        pods = [
            NetPod("p0", pod_ns, 0, port.mac, pod_cidr),
            NetPod("k0", kpod_ns, 0, kpod_ns.link_info("eth0").mac or "", kpod_cidr),
        ]
        outside = NetPod("out", out, 0, out.link_info("wan0").mac or "", _WAN_OUTSIDE_CIDR)
        for pod, way in zip(pods, (gateway.ifname, _KERNEL_GATEWAY_IFNAME), strict=True):
            result = ping(pod.netns, OUTSIDE_IP, count=3, interval=0.2, timeout=2.0)
            if not result.received:
                raise RuntimeError(
                    f"gateway test bed: pod {pod.ip} cannot reach the outside host "
                    f"{OUTSIDE_IP} through {way} (no answer to ping)"
                )
        return GatewayNet(topo, stack.pop_all(), node, n0, outside, pods, rules)
    raise AssertionError("unreachable")  # pragma: no cover


class UnderlayNet(_Net):
    """A physical segment with a plain host, and two pods put on it from one node.

    One bridge (the segment) joins node ``n0`` (198.18.0.1 on ``ul0``) and a
    plain host (:data:`UNDERLAY_HOST_IP`) that runs nothing of ours. Two pods
    of ``n0`` sit on the segment beside it, both with the segment's full MTU
    (an underlay network has no tunnel: ``add_network(tunnel=False)``):

    * ``pods[0]``, ours: a TAP pod (198.18.0.10) of an underlay network whose
      uplink is ``ul0`` (``Network.add_uplink``): pod TAP -> engine -> packet
      socket -> ``ul0``;
    * ``pods[1]``, the kernel's own equivalent: a macvlan (bridge mode) of
      ``ul0`` (198.18.0.20) in the pod's namespace.
    """

    kind = "underlay"

    def __init__(
        self,
        topology: Topology,
        stack: contextlib.ExitStack,
        node: Any,
        host: NetPod,
        pods: list[NetPod],
    ) -> None:
        super().__init__(topology, stack)
        self.node = node  # overlay.node.Node
        self.host = host
        self.pods: list[NetPod] = pods

    def pair(self) -> tuple[NetPod, NetPod]:
        """Our underlay pod and the plain host."""
        return self.pods[0], self.host

    def macvlan_side(self, name: str | None = None) -> Side:
        """The macvlan pod to the plain host (``macvlan``)."""
        pod = self.pods[1]
        return Side(name or "macvlan", pod.netns, self.host.netns, pod.ip, self.host.ip)

    def sides(self) -> dict[str, Side]:
        """``{"underlay": side(), "macvlan": macvlan_side()}``, for :func:`compare`."""
        return {"underlay": self.side(), "macvlan": self.macvlan_side()}


UNDERLAY_HOST_IP = "198.18.0.100"


def build_underlay_net(
    mtu: int = 1500, node_options: Mapping[str, Any] | None = None, vni: int = 300
) -> UnderlayNet:
    """Build and start an :class:`UnderlayNet`; the caller closes it. Before
    returning, both pods must reach the plain host (a ping each)."""
    from overlay.node import Node

    with contextlib.ExitStack() as stack:
        topo = _new_topology("u")
        stack.callback(topo.close)
        n0, h = topo.add_netns("n0"), topo.add_netns("h")
        pod_ns, mv_ns = topo.add_netns("p0"), topo.add_netns("m0")
        topo.lan([n0, h], [f"{underlay_ip(0)}/24", f"{UNDERLAY_HOST_IP}/24"], mtu=mtu)
        node = Node(underlay_ip(0), Encap.VXLAN, netns=n0.path, mtu=mtu, **dict(node_options or {}))
        stack.callback(node.close)
        net = node.add_network(vni, "bench", tunnel=False)
        pod_mtu = node.pod_mtu(net)
        net.add_uplink("ul0")
        port = net.add_port(pod_mac(0, vni, 1), ["198.18.0.10/24"], ifname=f"t{vni}p0"[:15])
        port.move_to_netns(pod_ns.path, "eth0")
        with n0.ipr() as ipr:
            ipr.link(
                "add", ifname="mv0", kind="macvlan", link=n0.ifindex("ul0"), macvlan_mode="bridge"
            )
        n0.move_link("mv0", mv_ns, "eth0")
        mv_ns.link_set("eth0", mtu=pod_mtu)
        mv_ns.addr_add("eth0", "198.18.0.20/24")
        mv_ns.link_set("eth0", state="up")
        mv_ns.wait_up("eth0")
        node.start()
        pods = [
            NetPod("p0", pod_ns, 0, port.mac, "198.18.0.10/24"),
            NetPod("m0", mv_ns, 0, mv_ns.link_info("eth0").mac or "", "198.18.0.20/24"),
        ]
        host = NetPod("h", h, 0, h.link_info("ul0").mac or "", f"{UNDERLAY_HOST_IP}/24")
        for pod in pods:
            if not ping(pod.netns, UNDERLAY_HOST_IP, count=3, interval=0.2, timeout=2.0).received:
                raise RuntimeError(
                    f"underlay test bed: pod {pod.ip} cannot reach the plain host "
                    f"{UNDERLAY_HOST_IP} (no answer to ping)"
                )
        return UnderlayNet(topo, stack.pop_all(), node, host, pods)
    raise AssertionError("unreachable")  # pragma: no cover


class RoutedNet(_Net):
    """Two nodes on one segment, each reaching the other's pods by a plain route.

    Nodes ``n0`` and ``n1`` (198.18.0.1, .2 on one veth, the underlay MTU) each
    hold two pods, one per way of routing, both at the underlay's full MTU:

    * ``pods[0]``, ``pods[1]``, ours: a TAP pod (``cidr``'s /24 of the node:
      10.244.0.2, 10.244.1.2) of a routed network (``add_network(tunnel=False)``)
      whose default route is the network's gateway ``ovg<vni>`` (.1): pod TAP ->
      engine -> gateway TAP -> the node's routing table -> the underlay, plain IP;
    * ``pods[2]``, ``pods[3]``, the kernel's own host-gw (flannel's): a veth pod
      (``kernel_cidr``'s /24 of the node) whose default route is the veth's node
      end (.1), routed by the node's kernel alone.

    Each node routes the other's two /24s ``via`` the other's underlay address,
    as overlayd's routing room does (``overlay.daemon.routing``).
    """

    kind = "routed"

    def __init__(
        self,
        topology: Topology,
        stack: contextlib.ExitStack,
        nodes: list[Any],
        pods: list[NetPod],
    ) -> None:
        super().__init__(topology, stack)
        self.nodes = nodes  # overlay.node.Node of n0, n1
        self.pods: list[NetPod] = pods

    def pair(self) -> tuple[NetPod, NetPod]:
        """Our routed pod on n0 and our routed pod on n1."""
        return self.pods[0], self.pods[1]

    def kernel_side(self, name: str | None = None) -> Side:
        """The host-gw veth pod on n0 to the one on n1 (``host-gw``)."""
        a, b = self.pods[2], self.pods[3]
        return Side(name or "host-gw", a.netns, b.netns, a.ip, b.ip)

    def sides(self) -> dict[str, Side]:
        """``{"routed": side(), "host-gw": kernel_side()}``, for :func:`compare`."""
        return {"routed": self.side(), "host-gw": self.kernel_side()}


def _node_subnet(cidr: str, node: int, field_name: str) -> ipaddress.IPv4Network:
    """Node ``node``'s /24 of ``cidr``."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ValueError(f"{field_name}={cidr!r}: give a network like 10.244.0.0/16") from None
    if net.version != 4 or net.prefixlen > 23:
        raise ValueError(f"{field_name}={cidr!r}: give an IPv4 network of /23 or larger")
    return list(itertools.islice(net.subnets(new_prefix=24), node, node + 1))[0]


def build_routed_net(
    mtu: int = 1500,
    node_options: Mapping[str, Any] | None = None,
    vni: int = 100,
    cidr: str = "10.244.0.0/16",
    kernel_cidr: str = "10.245.0.0/16",
) -> RoutedNet:
    """Build and start a :class:`RoutedNet`; the caller closes it. Before
    returning, every pod must reach its peer on the other node (a ping each)."""
    from overlay.gateway import prepare_forwarding
    from overlay.node import Node

    if ipaddress.ip_network(cidr).overlaps(ipaddress.ip_network(kernel_cidr)):
        raise ValueError(
            f"cidr={cidr!r} and kernel_cidr={kernel_cidr!r} must not overlap: the nodes "
            "route both; give another kernel_cidr"
        )
    with contextlib.ExitStack() as stack:
        topo = _new_topology("r")
        stack.callback(topo.close)
        ns = [topo.add_netns(f"n{i}") for i in range(2)]
        topo.veth(ns[0], ns[1], f"{underlay_ip(0)}/24", f"{underlay_ip(1)}/24", mtu=mtu)
        nodes: list[Any] = []
        ours: list[NetPod] = []
        kernel: list[NetPod] = []
        for i, n in enumerate(ns):
            node = Node(
                underlay_ip(i), Encap.VXLAN, netns=n.path, mtu=mtu, **dict(node_options or {})
            )
            stack.callback(node.close)
            nodes.append(node)
            net = node.add_network(vni, "bench", tunnel=False)
            sub, ksub = _node_subnet(cidr, i, "cidr"), _node_subnet(kernel_cidr, i, "kernel_cidr")
            gw = f"{sub.network_address + 1}/24"
            net.add_gateway(pod_mac(i, vni, 0), [gw])
            pod_cidr = f"{sub.network_address + 2}/24"
            port = net.add_port(pod_mac(i, vni, 1), [pod_cidr], ifname=f"t{vni}p{i}"[:15])
            pod_ns = topo.add_netns(f"p{i}")
            port.move_to_netns(pod_ns.path, "eth0", gateway=str(sub.network_address + 1))
            ours.append(NetPod(f"p{i}", pod_ns, i, port.mac, pod_cidr))
            kpod_ns = topo.add_netns(f"k{i}")
            kpod_cidr = f"{ksub.network_address + 2}/24"
            topo.veth(
                n, kpod_ns, f"{ksub.network_address + 1}/24", kpod_cidr, name_a="kgw0",
                name_b="eth0", mtu=mtu,
            )  # fmt: skip
            kpod_ns.route_add("default", gateway=str(ksub.network_address + 1))
            prepare_forwarding(n.path, "kgw0", {4})
            kernel.append(
                NetPod(f"k{i}", kpod_ns, i, kpod_ns.link_info("eth0").mac or "", kpod_cidr)
            )
        for i, n in enumerate(ns):
            other = 1 - i
            for c in (cidr, kernel_cidr):
                n.route_add(str(_node_subnet(c, other, "cidr")), gateway=underlay_ip(other))
        for node in nodes:
            node.start()
        pods = ours + kernel
        for a, b in ((pods[0], pods[1]), (pods[2], pods[3])):
            if not ping(a.netns, b.ip, count=3, interval=0.2, timeout=2.0).received:
                raise RuntimeError(f"routed test bed: pod {a.ip} cannot reach {b.ip} (no answer)")
        return RoutedNet(topo, stack.pop_all(), nodes, pods)
    raise AssertionError("unreachable")  # pragma: no cover


class Testbeds:
    """Builds test beds and removes them all at :meth:`close` (the fixtures' engine).

    Every builder makes its own :class:`Topology`, so a test may build several
    of any kind. :meth:`close` closes them newest first, tries every one even
    when some fail, and then raises one ``RuntimeError`` naming the failures.
    """

    __test__ = False  # not a test class, whatever pytest makes of the name

    def __init__(self) -> None:
        self.nets: list[_Net] = []

    def _keep(self, net: Any) -> Any:
        self.nets.append(net)
        return net

    def overlay(
        self,
        nodes: int = 2,
        pods_per_node: int = 1,
        encap: Encap = Encap.VXLAN,
        mtu: int = 1500,
        node_options: Mapping[str, Any] | None = None,
        vni: int = 100,
        cidr: str = DEFAULT_CIDR,
    ) -> OverlayNet:
        net: OverlayNet = self._keep(
            build_overlay_net(nodes, pods_per_node, encap, mtu, node_options, vni, cidr)
        )
        return net

    def kernel(
        self,
        nodes: int = 2,
        pods_per_node: int = 1,
        encap: Encap = Encap.VXLAN,
        mtu: int = 1500,
        vni: int = 100,
        cidr: str = DEFAULT_CIDR,
    ) -> KernelNet:
        net: KernelNet = self._keep(build_kernel_net(nodes, pods_per_node, encap, mtu, vni, cidr))
        return net

    def veth(self, mtu: int = 1500 - TUNNEL_OVERHEAD_BYTES, cidr: str = DEFAULT_CIDR) -> VethNet:
        net: VethNet = self._keep(build_veth_net(mtu, cidr))
        return net

    def pyforwarder(
        self,
        mtu: int = 1500,
        vni: int = 100,
        cidr: str = DEFAULT_CIDR,
        *,
        use_uvloop: bool | None = None,
    ) -> PyForwarderNet:
        net: PyForwarderNet = self._keep(
            build_pyforwarder_net(mtu, vni, cidr, use_uvloop=use_uvloop)
        )
        return net

    def gateway(
        self,
        mtu: int = 1500,
        node_options: Mapping[str, Any] | None = None,
        vni: int = 100,
        cidr: str = "10.244.0.0/16",
        kernel_cidr: str = "10.245.0.0/16",
    ) -> GatewayNet:
        net: GatewayNet = self._keep(build_gateway_net(mtu, node_options, vni, cidr, kernel_cidr))
        return net

    def underlay(
        self, mtu: int = 1500, node_options: Mapping[str, Any] | None = None, vni: int = 300
    ) -> UnderlayNet:
        net: UnderlayNet = self._keep(build_underlay_net(mtu, node_options, vni))
        return net

    def routed(
        self,
        mtu: int = 1500,
        node_options: Mapping[str, Any] | None = None,
        vni: int = 100,
        cidr: str = "10.244.0.0/16",
        kernel_cidr: str = "10.245.0.0/16",
    ) -> RoutedNet:
        net: RoutedNet = self._keep(build_routed_net(mtu, node_options, vni, cidr, kernel_cidr))
        return net

    def close(self) -> None:
        failures: list[BaseException] = []
        while self.nets:
            net = self.nets.pop()
            try:
                net.close()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise RuntimeError(
                "test bed teardown failed: " + "; ".join(repr(f) for f in failures)
            ) from failures[0]

    def __enter__(self) -> Testbeds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- figures ----------------------------------------------------------------


def record(benchmark: Any | None, metric: str, side: str, value: Any) -> None:
    """``benchmark.extra_info[metric][side] = value`` (nothing without a benchmark)."""
    if benchmark is not None:
        benchmark.extra_info.setdefault(metric, {})[side] = value


_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system [idle iowait] irq softirq steal


def busy_cpu_seconds() -> float:
    """Machine-wide busy CPU time since boot, all cores, from the ``cpu`` line of /proc/stat.

    Busy is user + nice + system + irq + softirq + steal (guest time is
    already inside user); idle and iowait are not busy.
    """
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                ticks = [int(x) for x in line.split()[1:]]
                return sum(ticks[i] for i in _BUSY_FIELDS if i < len(ticks)) / os.sysconf(
                    "SC_CLK_TCK"
                )
    raise RuntimeError("/proc/stat has no aggregate 'cpu' line")


@dataclass(frozen=True)
class TcpFigures:
    """One iperf3 TCP stream and the machine's CPU time while it ran."""

    gbit_per_s: float
    bytes_moved: int
    busy_cpu_s: float
    retransmits: int | None

    @property
    def cpu_s_per_gb(self) -> float:
        """Busy CPU seconds (all cores) per 10**9 bytes received; NaN if nothing moved."""
        return self.busy_cpu_s / (self.bytes_moved / 1e9) if self.bytes_moved else math.nan


def tcp_stream(side: Side, seconds: int = 3) -> TcpFigures:
    """One TCP stream with iperf3 for ``seconds`` (whole seconds), with its CPU cost.

    The CPU window is the iperf3 run (server start, ~``seconds`` of transfer,
    report), the same for every side.
    """
    before = busy_cpu_seconds()
    result = iperf3(side.a, side.b, side.b_ip, seconds=seconds)
    busy = busy_cpu_seconds() - before
    moved = int(result.raw["end"]["sum_received"]["bytes"])
    return TcpFigures(result.bits_per_second / 1e9, moved, busy, result.retransmits)


def tcp_gbps(side: Side, seconds: int = 3, *, benchmark: Any | None = None) -> float:
    """One TCP stream's throughput in Gbit/s (iperf3, receiver side, ``seconds`` whole seconds)."""
    value = tcp_stream(side, seconds).gbit_per_s
    record(benchmark, "tcp_gbps", side.name, value)
    return value


def cpu_s_per_gb(side: Side, seconds: int = 3, *, benchmark: Any | None = None) -> float:
    """CPU seconds per GB moved by one TCP stream, measured machine-wide.

    Busy CPU time of the whole machine (all cores; user + nice + system + irq +
    softirq + steal from /proc/stat) over the transfer window, divided by the
    GB (10**9 bytes) the receiver got. Why machine-wide: the sides spend their
    CPU in different places. Our engine runs threads in the test process
    (user and system time of this process), the kernel's VXLAN device works in
    softirq context on whichever core the packet lands, and the pure-Python
    forwarder adds interpreter time. Per-process accounting would miss the
    softirq work and flatter the kernel; only the machine-wide total is the
    same measure for every side. It includes the cost of the endpoints (the
    iperf3 processes and both pods' TCP stacks), which is the same work on
    every side, and whatever else runs on the machine: run benchmarks on a
    quiet machine and read the minimum over rounds as well as the median.
    """
    value = tcp_stream(side, seconds).cpu_s_per_gb
    record(benchmark, "cpu_s_per_gb", side.name, value)
    return value


def _force_buffer(sock: socket.socket, force_opt: int, opt: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)  # root: past rmem_max/wmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


@dataclass(frozen=True)
class UdpFigures:
    """What :func:`small_udp` saw: delivered and offered datagrams per second."""

    delivered_pps: float
    """Arrivals per second in the pod during the counting window."""
    offered_pps: float
    """What the generator managed to send per second over its whole run (the
    sending pod's stack and, for the kernel's VXLAN, its encapsulation, pace it)."""


def small_udp(
    side: Side, seconds: float = 2.0, *, payload_bytes: int = 18, warmup_s: float = 0.5
) -> UdpFigures:
    """Small UDP datagrams pod to pod, offered as fast as possible (see :func:`small_udp_pps`)."""
    from overlay.bindings.tools import gen_recv, gen_send  # the generator lives in the C module

    if not 0 < seconds <= _MAX_SECONDS or not 0 <= warmup_s <= 60:
        raise ValueError(
            f"seconds={seconds}, warmup_s={warmup_s}: 0 < seconds <= 600, 0-60 warm-up"
        )
    if not 1 <= payload_bytes <= 1400:
        raise ValueError(f"payload_bytes={payload_bytes}: 1-1400")
    send_s = warmup_s + seconds + 0.3
    rx = side.b.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = side.a.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _force_buffer(rx, 33, socket.SO_RCVBUF, 8 << 20)  # 33: SO_RCVBUFFORCE
        rx.bind((side.b_ip, 0))
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 1, 0))
        tx.connect((side.b_ip, rx.getsockname()[1]))
        counted: dict[str, float] = {}
        forever = int((send_s + 60) * 1e9)  # the idle cut-off is never reached in the window

        def sink() -> None:
            if warmup_s > 0:
                gen_recv(rx.fileno(), warmup_s, forever / 1e9)
            t0 = time.monotonic()
            try:
                packets, _ = gen_recv(rx.fileno(), seconds, forever / 1e9)
            except OSError:
                packets = 0
            counted["seconds"] = time.monotonic() - t0
            counted["packets"] = float(packets)

        thread = threading.Thread(target=sink, name="small_udp-sink", daemon=True)
        thread.start()
        payload = b"\x00" * payload_bytes
        t0 = time.monotonic()
        try:
            sent = gen_send(tx.fileno(), payload, 10**12, batch=64, seconds=send_s)
        except OSError:
            sent = 0
        send_time = time.monotonic() - t0
        thread.join(send_s + 5.0)
    finally:
        tx.close()
        rx.close()
    delivered = counted["packets"] / counted["seconds"] if counted.get("seconds") else 0.0
    offered = max(0, int(sent)) / send_time if send_time > 0 else 0.0
    return UdpFigures(delivered, offered)


def small_udp_pps(
    side: Side,
    seconds: float = 2.0,
    *,
    payload_bytes: int = 18,
    warmup_s: float = 0.5,
    benchmark: Any | None = None,
) -> float:
    """Small UDP datagrams delivered per second, pod to pod, offered as fast as possible.

    The C generator (``ovl_gen_send``: ``sendmmsg`` batches of 64) floods
    ``payload_bytes``-byte datagrams from ``a``; the C sink (``ovl_gen_recv``)
    in ``b`` first lets ``warmup_s`` pass, then counts what arrives during
    ``seconds`` while the sender is still offering load, so queues filled
    before the window or drained after it do not count. The sender stops
    ``warmup_s + seconds + 0.3`` s after it started; a send blocked for a
    second ends it early (SO_SNDTIMEO), so a stalled path cannot hang the run.
    With ``benchmark``, the offered rate is recorded too (``small_udp_offered_pps``).

    On a small machine this is a CPU-bound pipeline: the sending pod's UDP
    stack, the data plane, and the receiving stack share the cores, so the
    figure is the whole path's, not the data plane's alone.
    """
    figures = small_udp(side, seconds, payload_bytes=payload_bytes, warmup_s=warmup_s)
    record(benchmark, "small_udp_pps", side.name, figures.delivered_pps)
    record(benchmark, "small_udp_offered_pps", side.name, figures.offered_pps)
    return figures.delivered_pps


def ping_rtt_ms(
    side: Side, count: int = 20, interval: float = 0.02, *, benchmark: Any | None = None
) -> float:
    """Median ping round trip in ms over ``count`` probes (NaN if none came back)."""
    result = ping(side.a, side.b_ip, count=count, interval=interval, timeout=5.0)
    value = statistics.median(result.rtts_ms) if result.rtts_ms else math.nan
    record(benchmark, "ping_rtt_ms", side.name, value)
    return value


def tcp_connects_per_s(side: Side, seconds: float = 2.0, *, benchmark: Any | None = None) -> float:
    """New TCP connections per second from ``a`` to a listener in ``b``, one at a time.

    Each connection is a full handshake (connect returns once the SYN-ACK is
    back and the ACK is sent) ended by an RST (``SO_LINGER`` 0), so no
    TIME_WAIT piles up and every connection has a fresh source port: a new
    flow for every stateful hop on the way (the first packet of each is the
    one a policy classifies). The client loop runs in a thread inside ``a``,
    the accepting loop in a thread on a socket of ``b``; both stop after
    ``seconds``. A connect that fails or takes over 2 s ends the run early
    (its figure counts what completed).
    """
    if not 0 < seconds <= _MAX_SECONDS:
        raise ValueError(f"seconds={seconds}: 0 < seconds <= {_MAX_SECONDS}")
    listener = side.b.socket(socket.AF_INET, socket.SOCK_STREAM)
    stop = threading.Event()
    try:
        listener.bind((side.b_ip, 0))
        listener.listen(1024)
        listener.settimeout(0.2)
        addr = listener.getsockname()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                conn.close()

        acceptor = threading.Thread(target=accept, name="tcp_connects-accept", daemon=True)
        acceptor.start()
        linger = struct.pack("ii", 1, 0)

        def client() -> tuple[int, float]:
            done = 0
            t0 = time.monotonic()
            end = t0 + seconds
            while time.monotonic() < end:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.settimeout(2.0)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    s.connect(addr)
                    done += 1
                except OSError:
                    break
                finally:
                    s.close()
            return done, time.monotonic() - t0

        done, elapsed = side.a.call(client)
    finally:
        stop.set()
        listener.close()
    value = done / elapsed if elapsed > 0 else 0.0
    record(benchmark, "tcp_connects_per_s", side.name, value)
    return value


# ---- comparisons ------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A figure to compare: ``measure(side, **options)`` gives one value in ``unit``."""

    name: str
    unit: str
    measure: Callable[..., float]
    higher_is_better: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, side: Side) -> float:
        return self.measure(side, **self.options)

    def with_options(self, **options: Any) -> Metric:
        """The same metric with keyword arguments for ``measure`` (e.g. ``seconds=1``)."""
        return replace(self, options={**self.options, **options})


TCP_GBPS = Metric("tcp_gbps", "Gbit/s", tcp_gbps)
SMALL_UDP_PPS = Metric("small_udp_pps", "packets/s", small_udp_pps)
PING_RTT_MS = Metric("ping_rtt_ms", "ms", ping_rtt_ms, higher_is_better=False)
CPU_S_PER_GB = Metric("cpu_s_per_gb", "CPU s/GB", cpu_s_per_gb, higher_is_better=False)
TCP_CONNECTS_PER_S = Metric("tcp_connects_per_s", "connections/s", tcp_connects_per_s)


def _summary(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)] or [math.nan]
    return {"min": min(finite), "median": statistics.median(finite), "max": max(finite)}


def _ratio(better: float, worse: float) -> float:
    if not better or not worse or math.isnan(better) or math.isnan(worse):
        return math.nan
    return better / worse


@dataclass
class Comparison:
    """What :func:`compare` measured: every value, the summaries and the ratios."""

    metric: Metric
    values: dict[str, list[float]]
    summary: dict[str, dict[str, float]]
    ratios: dict[str, float]
    primary: str
    baseline: str

    @property
    def ratio(self) -> float:
        """Primary vs baseline, oriented so that > 1 means the primary is better."""
        return self.ratios[f"{self.primary}_vs_{self.baseline}"]


_RESERVED = {
    "metric", "unit", "rounds", "higher_is_better", "baseline", "primary", "sides",
    "ratio", "ratio_meaning", "ratios", "raw",
}  # fmt: skip


def compare(
    benchmark: Any | None,
    sides: Mapping[str, Side],
    metric: Metric,
    rounds: int = 5,
    *,
    baseline: str = "kernel",
    primary: str = "overlay",
) -> Comparison:
    """Measure ``metric`` on every side, ``rounds`` times, and record the comparison.

    Each round measures every side once, starting one later each round (round
    r starts with side r mod n), so drift hits all sides alike. With a
    pytest-benchmark ``benchmark``, the rounds run under
    ``benchmark.pedantic`` (its timings are per round and not the figure; with
    ``--benchmark-disable`` it runs one round) and ``extra_info`` receives::

        metric, unit, rounds (as run), higher_is_better, primary, baseline,
        sides   {side: {min, median, max}}
        overlay, kernel   the same, when those sides exist (bench/report.py)
        ratio   primary vs baseline, medians, oriented so > 1 means primary is better
        ratio_meaning
        ratios  {"A_vs_B": ...}: primary vs every other side, every side vs baseline
        raw     {side: [value per round]}

    Ratios are ``A/B`` for higher-is-better metrics and ``B/A`` for
    lower-is-better ones (latency, CPU per GB), NaN when a median is 0 or NaN.
    """
    names = list(sides)
    for role, name in (("baseline", baseline), ("primary", primary)):
        if name not in sides:
            raise ValueError(f"{role}={name!r} is not one of the sides {names}")
    clash = _RESERVED.intersection(names)
    if clash:
        raise ValueError(f"side names {sorted(clash)} are reserved keys of extra_info; rename them")
    if not 1 <= rounds <= _MAX_ROUNDS:
        raise ValueError(f"rounds={rounds}: 1-{_MAX_ROUNDS}")
    values: dict[str, list[float]] = {n: [] for n in names}
    done = [0]

    def one_round() -> None:
        start = done[0] % len(names)
        for name in names[start:] + names[:start]:
            values[name].append(float(metric(sides[name])))
        done[0] += 1

    if benchmark is None:
        for _ in range(rounds):
            one_round()
    else:
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    summary = {n: _summary(v) for n, v in values.items()}

    def oriented(a: str, b: str) -> float:
        ma, mb = summary[a]["median"], summary[b]["median"]
        return _ratio(ma, mb) if metric.higher_is_better else _ratio(mb, ma)

    ratios: dict[str, float] = {}
    for other in names:
        if other != primary:
            ratios[f"{primary}_vs_{other}"] = oriented(primary, other)
    for name in names:
        if name not in (baseline, primary):
            ratios[f"{name}_vs_{baseline}"] = oriented(name, baseline)
    result = Comparison(metric, values, summary, ratios, primary, baseline)
    if benchmark is not None:
        meaning = (
            f"{primary}/{baseline}" if metric.higher_is_better else f"{baseline}/{primary}"
        ) + f" of medians (>1: {primary} is better)"
        info: dict[str, Any] = {
            "metric": metric.name,
            "unit": metric.unit,
            "rounds": done[0],
            "higher_is_better": metric.higher_is_better,
            "primary": primary,
            "baseline": baseline,
            "sides": summary,
            "ratio": result.ratio,
            "ratio_meaning": meaning,
            "ratios": ratios,
            "raw": values,
        }
        for legacy in ("overlay", "kernel"):
            if legacy in summary:
                info[legacy] = summary[legacy]
        benchmark.extra_info.update(info)
    return result


def sides_of(nets: Mapping[str, _Net] | Iterable[tuple[str, _Net]]) -> dict[str, Side]:
    """``{"overlay": net.side("overlay"), ...}`` from named test beds, in order."""
    items = nets.items() if isinstance(nets, Mapping) else nets
    return {name: net.side(name) for name, net in items}
