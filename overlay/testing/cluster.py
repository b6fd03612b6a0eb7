"""A small overlay cluster in network namespaces: nodes, networks and pods.

``Cluster`` builds N node namespaces on one underlay segment (a veth for two,
a bridge for more), runs a ``Node`` (the real data plane) in each, and adds
pods as namespaces whose eth0 is a TAP of their node. Forwarding state is
programmed statically, the way a control plane would: every node hosting a
network gets the other nodes as member VTEPs, and every pod is announced to
the other nodes (FDB + neighbour). The demo, the end-to-end tests and the
benchmarks all build their networks through it, so they exercise exactly the
embedding API a CNI plugin author uses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from overlay.node import Encap, GeneveOption, Network, Node, Port
from overlay.testing.netns import Netns, Topology, underlay_ip


def pod_mac(node: int, vni: int, index: int) -> str:
    """A locally administered unicast MAC that encodes (vni, node, pod)."""
    return (
        f"02:{(vni >> 16) & 0xFF:02x}:{(vni >> 8) & 0xFF:02x}:{vni & 0xFF:02x}:"
        f"{node & 0xFF:02x}:{index & 0xFF:02x}"
    )


@dataclass
class Pod:
    name: str
    netns: Netns
    node: int
    vni: int
    mac: str
    cidr: str
    port: Port

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.cidr).ip)


@dataclass
class Cluster:
    """Nodes in namespaces sharing an underlay, with statically programmed networks."""

    topo: Topology
    encap: Encap = Encap.VXLAN
    n_nodes: int = 2
    mtu: int = 1500
    node_options: dict[str, Any] = field(default_factory=dict)
    node_ns: list[Netns] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.n_nodes <= 200:
            raise ValueError(f"n_nodes={self.n_nodes}: 1-200 nodes")
        self.node_ns = [self.topo.add_netns(f"n{i}") for i in range(self.n_nodes)]
        self.topo.underlay(self.node_ns, mtu=self.mtu)
        try:
            for i, ns in enumerate(self.node_ns):
                self.nodes.append(
                    Node(
                        underlay_ip(i), self.encap, netns=ns.path, mtu=self.mtu, **self.node_options
                    )
                )
        except BaseException:
            self.close()
            raise

    def add_network(
        self,
        vni: int,
        tenant: str,
        *,
        nodes: list[int] | None = None,
        geneve_options: tuple[GeneveOption, ...] = (),
        encap: Encap | None = None,
    ) -> list[Network]:
        """Host vni on ``nodes`` (default: all), each with the others as member VTEPs;
        ``encap``: the network's encapsulation (None: the nodes')."""
        hosts = list(range(self.n_nodes)) if nodes is None else nodes
        nets = []
        for i in hosts:
            net = self.nodes[i].add_network(vni, tenant, geneve_options=geneve_options, encap=encap)
            for j in hosts:
                if j != i:
                    net.add_vtep(underlay_ip(j))
            nets.append(net)
        return nets

    def add_pod(
        self,
        node: int,
        vni: int,
        cidr: str,
        *,
        name: str | None = None,
        mac: str | None = None,
        gateway: str | None = None,
    ) -> Pod:
        """A pod namespace on ``node`` in vni, announced to every other node hosting vni."""
        index = sum(1 for p in self.pods if p.node == node and p.vni == vni) + 1
        mac = mac or pod_mac(node, vni, index)
        name = name or f"p{node}v{vni}i{index}"
        ipv6 = ipaddress.ip_interface(cidr).version == 6
        ns = self.topo.add_netns(name, ipv6=ipv6)
        net = self.nodes[node].network(vni)
        port = net.add_port(mac, [cidr], ifname=f"t{len(self.pods)}{name}"[:15])
        port.move_to_netns(ns.path, "eth0", gateway=gateway)
        pod = Pod(name, ns, node, vni, mac, cidr, port)
        for j, other in enumerate(self.nodes):
            if j != node and vni in other.networks:
                other.network(vni).add_remote(mac, underlay_ip(node), pod.ip)
        self.pods.append(pod)
        return pod

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def counters(self) -> list[dict[str, object]]:
        return [n.counters() for n in self.nodes]

    def close(self) -> None:
        """Stop and close every node (their TAPs go with them); the Topology removes namespaces."""
        for n in self.nodes:
            n.close()
        self.nodes.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class NetPod:
    """A pod that is a namespace with a veth or TAP of its own: name, node, MAC, address."""

    name: str
    netns: Netns
    node: int
    mac: str
    cidr: str

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.cidr).ip)


@dataclass
class KernelCluster:
    """The kernel's twin of a ``Cluster``: the same nodes and underlay, with a Linux
    VXLAN device per node, bridged to veth pods. The baseline that benchmarks
    and interop tests compare against (VXLAN only: this kernel has no Geneve)."""

    topo: Topology
    vni: int = 100
    n_nodes: int = 2
    mtu: int = 1500
    prefix: str = "k"
    node_ns: list[Netns] = field(default_factory=list)
    pods: list[NetPod] = field(default_factory=list)

    def __post_init__(self) -> None:
        from overlay.testing.netns import kernel_vxlan

        self.node_ns = [self.topo.add_netns(f"{self.prefix}n{i}") for i in range(self.n_nodes)]
        self.topo.underlay(self.node_ns, mtu=self.mtu, switch=f"{self.prefix}sw")
        for i, ns in enumerate(self.node_ns):
            with ns.ipr() as ipr:
                ipr.link("add", ifname="br0", kind="bridge")
            ns.link_set("br0", state="up", mtu=self.mtu - 50)
            others = [underlay_ip(j) for j in range(self.n_nodes) if j != i]
            kernel_vxlan(ns, "vx0", vni=self.vni, local=underlay_ip(i), remotes=others)
            ns.link_set("vx0", master=ns.ifindex("br0"), state="up")

    def add_pod(self, node: int, cidr: str, *, name: str | None = None) -> NetPod:
        index = sum(1 for p in self.pods if p.node == node) + 1
        name = name or f"{self.prefix}p{node}i{index}"
        ns = self.topo.add_netns(name)
        host = self.node_ns[node]
        port = f"kp{len(self.pods)}"
        self.topo.veth(host, ns, None, cidr, name_a=port, name_b="eth0", mtu=self.mtu - 50)
        host.link_set(port, master=host.ifindex("br0"), state="up")
        pod = NetPod(name, ns, node, ns.link_info("eth0").mac or "", cidr)
        self.pods.append(pod)
        return pod
