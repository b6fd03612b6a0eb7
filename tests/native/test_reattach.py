"""A restarted node takes its pods' persistent TAPs back where they live.

overlayd makes pod TAPs persistent and moves them into the pods' namespaces
(renamed eth0). When it restarts, a new ``Node`` re-attaches each with
``Network.attach_port`` from inside the pod's namespace: the pod keeps its
interface (same ifindex), addresses and routes, and traffic resumes. These
tests run two real nodes in namespaces (underlay 198.18.0.0/24, pods in
10.244.1.0/24), restart one, and check that, and the refusals: a missing
interface, a TAP another node holds, a different queue mode, a non-TAP.
Every namespace carries the run's prefix and is removed after each test,
pass or fail (the ``topology`` fixture); nodes are closed before that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from overlay import Encap, Node
from overlay.errors import ConfigError, ConflictError, NotFoundError
from overlay.node import Port
from overlay.testing.cluster import underlay_ip
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, tcp_transfer

pytestmark = pytest.mark.root

VNI = 100
MACS = ("02:00:00:00:0a:02", "02:00:00:00:0b:03")
CIDRS = ("10.244.1.2/24", "10.244.1.3/24")
IPS = tuple(c.split("/")[0] for c in CIDRS)


def tun_state(ns: Netns, ifname: str) -> dict[str, Any]:
    """What the kernel says about TAP ``ifname`` in ``ns``: ifindex, persistence,
    queue mode and how many queues some process holds open. The kernel counts
    queues of multi-queue TAPs only; a single-queue TAP has its carrier on
    exactly while a file holds it."""
    with ns.ipr() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        assert idx, f"no {ifname} in {ns.name}: {ns.links()}"
        msg = ipr.link("get", index=idx[0])[0]
    data = msg.get(("IFLA_LINKINFO", "IFLA_INFO_DATA"))
    assert msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "tun" and data is not None
    return {
        "index": idx[0],
        "mac": msg.get("address"),
        "persist": data.get("IFLA_TUN_PERSIST"),
        "multi_queue": data.get("IFLA_TUN_MULTI_QUEUE"),
        "queues": data.get("IFLA_TUN_NUM_QUEUES")
        if data.get("IFLA_TUN_MULTI_QUEUE")
        else msg.get("IFLA_CARRIER"),
    }


@dataclass
class Bed:
    """Two node namespaces on one veth and a pod namespace for each node."""

    topo: Topology
    node_ns: list[Netns]
    pod_ns: list[Netns]
    nodes: list[Node] = field(default_factory=list)

    def node(self, i: int, workers: int = 1, port: int | None = None) -> Node:
        """A node (not started) in node namespace ``i``, hosting VNI with the other
        node as member VTEP; closed at the end of the test if still open."""
        node = Node(underlay_ip(i), Encap.VXLAN, netns=self.node_ns[i].path, workers=workers,
                    port=port)  # fmt: skip
        self.nodes.append(node)
        net = node.add_network(VNI, "blue")
        net.add_vtep(underlay_ip(1 - i))
        return node

    def announce(self, node: Node, i: int) -> None:
        """Tell ``node`` (in namespace ``i``) where the other node's pod is."""
        node.network(VNI).add_remote(MACS[1 - i], underlay_ip(1 - i), IPS[1 - i])

    def pod(self, node: Node, i: int) -> Port:
        """Pod ``i``: a persistent TAP moved into its namespace as eth0."""
        port = node.network(VNI).add_port(MACS[i], [CIDRS[i]], ifname=f"tap{i}", persist=True)
        port.move_to_netns(self.pod_ns[i].path, "eth0")
        return port

    def attach(self, node: Node, i: int) -> Port:
        return node.network(VNI).attach_port(
            MACS[i], [CIDRS[i]], ifname="eth0", netns=self.pod_ns[i].path
        )


@pytest.fixture
def bed(overlay_topology: Topology) -> Iterator[Bed]:
    n0, n1 = overlay_topology.add_netns("n0"), overlay_topology.add_netns("n1")
    overlay_topology.veth(n0, n1, f"{underlay_ip(0)}/24", f"{underlay_ip(1)}/24")
    b = Bed(
        overlay_topology,
        [n0, n1],
        [overlay_topology.add_netns("pa"), overlay_topology.add_netns("pb")],
    )
    try:
        yield b
    finally:
        # The TAPs' open files pin the pods' namespaces: close before they go.
        for node in b.nodes:
            node.close()


def running_pair(bed: Bed, workers: int) -> Node:
    """Both nodes with their pods, started and forwarding; returns node A (index 0)."""
    a, b = bed.node(0, workers), bed.node(1, workers)
    bed.pod(a, 0)
    bed.pod(b, 1)
    bed.announce(a, 0)
    bed.announce(b, 1)
    a.start()
    b.start()
    r = ping(bed.pod_ns[0], IPS[1], count=3, interval=0.1)
    assert r.ok, r.output
    return a


@pytest.mark.parametrize("workers", [1, 2], ids=["single-queue", "multi-queue"])
def test_restarted_node_reattaches_the_pod_tap_and_traffic_resumes(bed: Bed, workers: int) -> None:
    pa, pb = bed.pod_ns
    a = running_pair(bed, workers)
    before = tun_state(pa, "eth0")
    assert before["persist"] == 1 and before["queues"] == workers
    assert before["multi_queue"] == (workers > 1)
    addrs = pa.link_info("eth0").addresses

    a.close()  # the daemon goes away: the pod keeps its interface, nothing serves it
    down = tun_state(pa, "eth0")
    assert down["index"] == before["index"] and down["persist"] == 1 and down["queues"] == 0
    assert pa.link_info("eth0").addresses == addrs
    assert ping(pa, IPS[1], count=1, timeout=1).received == 0

    a2 = bed.node(0, workers)
    port = bed.attach(a2, 0)
    bed.announce(a2, 0)
    a2.start()
    assert (port.netns, port.ifname, port.persist, port.mac) == (pa.path, "eth0", True, MACS[0])
    after = tun_state(pa, "eth0")
    assert after == {**before, "queues": workers}  # same device, every queue held again
    info = pa.link_info("eth0")
    assert info.addresses == addrs and info.state == "up"
    r = ping(pa, IPS[1], count=3, interval=0.1)
    assert r.ok, r.output
    t = tcp_transfer(pa, pb, IPS[1], 2_000_000, timeout=20)
    assert t.ok and t.nbytes == 2_000_000, t
    t = tcp_transfer(pb, pa, IPS[0], 2_000_000, timeout=20)
    assert t.ok and t.nbytes == 2_000_000, t
    assert not any(a2.counters()["drops"].values()), a2.counters()["drops"]


def test_closing_a_node_again_leaves_the_reattached_tap_for_the_next(bed: Bed) -> None:
    pa = bed.pod_ns[0]
    a = bed.node(0)
    bed.pod(a, 0)
    index = tun_state(pa, "eth0")["index"]
    a.close()
    a2 = bed.node(0)
    bed.attach(a2, 0)
    a2.close()
    assert tun_state(pa, "eth0") | {"mac": None} == {
        "index": index, "mac": None, "persist": 1, "multi_queue": 0, "queues": 0
    }  # fmt: skip


def test_attaching_a_missing_interface_is_not_found_and_creates_nothing(bed: Bed) -> None:
    pa = bed.pod_ns[0]
    a = bed.node(0)
    pod_links, node_links = pa.links(), bed.node_ns[0].links()
    with pytest.raises(
        NotFoundError, match=rf"'eth0' does not exist in network namespace {pa.path}"
    ):
        bed.attach(a, 0)
    assert pa.links() == pod_links and bed.node_ns[0].links() == node_links
    assert a.network(VNI).ports == [] and a.fdb() == []
    with pytest.raises(NotFoundError, match="/nonexistent/netns does not exist"):
        a.network(VNI).attach_port(MACS[0], ifname="eth0", netns="/nonexistent/netns")
    for bad in ("", "/tmp"):
        with pytest.raises(ConfigError, match="netns"):
            a.network(VNI).attach_port(MACS[0], ifname="eth0", netns=bad)
    assert a.network(VNI).ports == [] and a.fdb() == []


def test_attaching_an_interface_that_is_not_a_tap_is_refused(bed: Bed) -> None:
    a = bed.node(0)
    with pytest.raises(ConfigError, match="ifname.*not another kind"):
        a.network(VNI).attach_port(MACS[0], ifname="ul0", netns=bed.node_ns[0].path)
    assert bed.node_ns[0].link_info("ul0").state == "up"
    assert a.network(VNI).ports == [] and a.fdb() == []


@pytest.mark.parametrize("workers", [1, 2], ids=["single-queue", "multi-queue"])
def test_attaching_a_tap_another_node_holds_is_a_conflict(bed: Bed, workers: int) -> None:
    pa, pb = bed.pod_ns
    a = running_pair(bed, workers)
    before = tun_state(pa, "eth0")
    # A second node for the same namespace, on another UDP port (the first holds 4789).
    rival = bed.node(0, workers, port=4790)
    with pytest.raises(ConflictError, match="held by another process"):
        bed.attach(rival, 0)
    assert rival.network(VNI).ports == [] and rival.fdb() == []
    assert tun_state(pa, "eth0") == before  # no queue taken, still persistent
    r = ping(pa, IPS[1], count=2, interval=0.1)
    assert r.ok, r.output
    # The node that holds it is refused by name, without asking the kernel.
    with pytest.raises(ConflictError, match="already"):
        a.network(VNI).attach_port(MACS[0], ifname="eth0", netns=pa.path)


def test_reattaching_with_another_queue_mode_names_workers(bed: Bed) -> None:
    pa = bed.pod_ns[0]
    a = bed.node(0, workers=1)
    bed.pod(a, 0)
    a.close()
    before = tun_state(pa, "eth0")
    a2 = bed.node(0, workers=2)
    with pytest.raises(ConfigError, match="workers.*single-queue"):
        bed.attach(a2, 0)
    assert tun_state(pa, "eth0") == before
    assert a2.network(VNI).ports == []


def test_removing_a_reattached_port_deletes_its_tap(bed: Bed) -> None:
    pa = bed.pod_ns[0]
    a = bed.node(0)
    bed.pod(a, 0)
    a.close()
    a2 = bed.node(0)
    port = bed.attach(a2, 0)
    assert "eth0" in pa.links()
    a2.network(VNI).remove_port(port)
    assert "eth0" not in pa.links()
    assert a2.network(VNI).ports == [] and a2.fdb() == []


def test_add_port_never_adopts_an_existing_tap(bed: Bed) -> None:
    n0 = bed.node_ns[0]
    a = bed.node(0)
    a.network(VNI).add_port(MACS[0], [CIDRS[0]], ifname="tap0", persist=True)
    a.close()  # tap0 stays in the node's namespace, held by no one
    index = tun_state(n0, "tap0")["index"]
    a2 = bed.node(0)
    with pytest.raises(ConflictError, match="exists already"):
        a2.network(VNI).add_port(MACS[0], [CIDRS[0]], ifname="tap0", persist=True)
    assert tun_state(n0, "tap0")["index"] == index  # neither taken nor deleted
    assert tun_state(n0, "tap0")["queues"] == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_born_in_the_pods_namespace_needs_no_move(bed: Bed, workers: int) -> None:
    """add_port(netns=...): the TAP is created inside the pod's namespace under its
    final name, configured where it is, and re-attached there after a restart."""
    a, b = bed.node(0, workers), bed.node(1, workers)
    born = a.network(VNI).add_port(MACS[0], [CIDRS[0]], netns=bed.pod_ns[0].path, persist=True)
    assert born.netns == bed.pod_ns[0].path and born.ifname == "eth0"
    assert "eth0" in bed.pod_ns[0].links() and "eth0" not in bed.node_ns[0].links()
    born.configure(mtu=1400)
    info = bed.pod_ns[0].link_info("eth0")
    assert info.mtu == 1400 and info.mac == MACS[0] and CIDRS[0] in info.addresses
    bed.pod(b, 1)
    bed.announce(a, 0)
    bed.announce(b, 1)
    a.start()
    b.start()
    assert ping(bed.pod_ns[0], IPS[1], count=3, interval=0.1).ok
    before = tun_state(bed.pod_ns[0], "eth0")
    a.close()
    a2 = bed.node(0, workers)
    bed.attach(a2, 0)
    bed.announce(a2, 0)
    a2.start()
    assert ping(bed.pod_ns[0], IPS[1], count=3, interval=0.1).ok
    assert tun_state(bed.pod_ns[0], "eth0")["index"] == before["index"]
    # A name that exists in the pod already is a conflict, and nothing is made.
    with pytest.raises(ConflictError, match="eth0"):
        a2.network(VNI).add_port("02:00:00:00:0c:04", ["10.244.1.9/24"],
                                 netns=bed.pod_ns[0].path)  # fmt: skip
    assert bed.pod_ns[0].links() == ["lo", "eth0"]
    with pytest.raises(NotFoundError):
        a2.network(VNI).add_port("02:00:00:00:0c:04", netns="/var/run/netns/ovt-none")
    # Removing the port deletes the device in the pod's namespace.
    a2.network(VNI).remove_port(a2.network(VNI).ports[0])
    assert bed.pod_ns[0].links() == ["lo"]
