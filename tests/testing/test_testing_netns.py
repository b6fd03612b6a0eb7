"""The test bed toolkit itself: namespaces, links, traffic, the kernel VXLAN twin, capture.

Everything else end-to-end stands on these, so each behaviour is checked
against the kernel's own view (the namespace list, tshark's dissection),
not against the toolkit's word.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.netns import (
    NETNS_RUN_DIR,
    Netns,
    Topology,
    check_allowed,
    cleanup_leftovers,
    kernel_vxlan,
    run_prefix,
)
from overlay.testing.traffic import iperf3, ping, tcp_transfer, udp_echo

pytestmark = pytest.mark.root

VNI = 100
OVERLAY_1 = "10.244.1.1"
OVERLAY_2 = "10.244.1.2"


def _listed() -> set[str]:
    try:
        return set(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return set()


@pytest.fixture
def two_nodes(overlay_topology: Topology) -> tuple[Netns, Netns]:
    """n1 and n2 joined by a veth: 198.18.0.1/24 <-> 198.18.0.2/24 on ul0."""
    n1, n2 = overlay_topology.add_netns("n1"), overlay_topology.add_netns("n2")
    overlay_topology.veth(n1, n2)
    return n1, n2


@pytest.fixture
def vxlan_twins(two_nodes: tuple[Netns, Netns]) -> tuple[Netns, Netns]:
    """Kernel VXLAN devices vx0 (VNI 100) in n1 and n2, overlay 10.244.1.1/24 and .2/24."""
    n1, n2 = two_nodes
    kernel_vxlan(n1, vni=VNI, local="198.18.0.1", remotes=["198.18.0.2"])
    kernel_vxlan(n2, vni=VNI, local="198.18.0.2", remotes=["198.18.0.1"])
    n1.addr_add("vx0", f"{OVERLAY_1}/24")
    n2.addr_add("vx0", f"{OVERLAY_2}/24")
    return n1, n2


def test_namespaces_are_created_and_removed_with_the_topology() -> None:
    with Topology() as topo:
        ns = topo.add_netns("a")
        assert ns.name == run_prefix() + "a"
        assert ns.path == f"{NETNS_RUN_DIR}/{ns.name}"
        assert ns.name in _listed()
        assert ns.link_info("lo").state == "up"
        assert ns.sysctl_get("net.ipv6.conf.all.disable_ipv6") == "1"
    assert ns.name not in _listed()
    topo.close()  # idempotent


def test_namespaces_are_removed_when_the_body_raises() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Topology() as topo:
        names += [topo.add_netns("a").name, topo.add_netns("b").name]
        topo.veth(topo.namespaces[names[0]], topo.namespaces[names[1]])
        assert set(names) <= _listed()
        raise RuntimeError("boom")
    assert not set(names) & _listed()


def test_ipv6_can_be_kept(overlay_topology: Topology) -> None:
    ns = overlay_topology.add_netns("v6", ipv6=True)
    assert ns.sysctl_get("net.ipv6.conf.all.disable_ipv6") == "0"


def test_nothing_is_created_in_the_host_namespace(overlay_topology: Topology) -> None:
    before = set(os.listdir("/sys/class/net"))
    n1, n2 = overlay_topology.add_netns("n1"), overlay_topology.add_netns("n2")
    overlay_topology.veth(n1, n2)
    kernel_vxlan(n1, vni=VNI, local="198.18.0.1", remotes=["198.18.0.2"])
    assert set(os.listdir("/sys/class/net")) == before
    assert sorted(n1.links()) == ["lo", "ul0", "vx0"]


def test_veth_pair_pings(two_nodes: tuple[Netns, Netns]) -> None:
    n1, n2 = two_nodes
    result = ping(n1, "198.18.0.2", count=3, interval=0.05)
    assert result.ok, result.output
    assert len(result.rtts_ms) == 3
    assert ping(n2, "198.18.0.1", count=1).ok
    info = n1.link_info("ul0")
    assert info.kind == "veth" and info.mtu == 1500 and "198.18.0.1/24" in info.addresses
    assert info.stats["tx_packets"] >= 3


def test_ping_to_an_unreachable_address_reports_loss(two_nodes: tuple[Netns, Netns]) -> None:
    n1, _ = two_nodes
    result = ping(n1, "198.18.0.99", count=2, interval=0.05, timeout=1.5)
    assert result.sent == 2 and result.received == 0 and not result.ok


def test_ping_over_ipv6_works_from_the_first_packet(overlay_topology: Topology) -> None:
    a, b = overlay_topology.add_netns("a", ipv6=True), overlay_topology.add_netns("b", ipv6=True)
    overlay_topology.veth(a, b, "2001:2::1/64", "2001:2::2/64")
    # veth() waits for link-local addresses; without that the first neighbour
    # solicitation is lost and replies come a second late, past this timeout.
    result = ping(a, "2001:2::2", count=2, interval=0.05, timeout=0.5)
    assert result.ok, result.output


def test_veth_ends_are_operationally_up_when_veth_returns(overlay_topology: Topology) -> None:
    # Until the kernel's link watch runs (up to a second after "up") a veth
    # drops what it sends; veth() waits, so the first frame is not lost.
    for i in range(3):
        a, b = overlay_topology.add_netns(f"a{i}"), overlay_topology.add_netns(f"b{i}")
        overlay_topology.veth(a, b)
        assert a.link_info("ul0").operstate == "UP" and b.link_info("ul0").operstate == "UP"
        result = ping(a, "198.18.0.2", count=1, timeout=0.5)
        assert result.ok, result.output
    a.link_set("ul0", state="down")
    with pytest.raises(TimeoutError, match=r"ul0 in .* is still DOWN"):
        a.wait_up("ul0", timeout=0.1)
    a.link_set("ul0", state="up")
    a.wait_up("ul0")


def test_three_nodes_share_a_lan(overlay_topology: Topology) -> None:
    nodes = [overlay_topology.add_netns(f"n{i}") for i in (1, 2, 3)]
    overlay_topology.lan(nodes, [f"198.18.0.{i}/24" for i in (1, 2, 3)])
    assert ping(nodes[0], "198.18.0.3", count=1).ok
    assert ping(nodes[2], "198.18.0.2", count=1).ok


def test_routes_and_forwarding_through_a_router_namespace(overlay_topology: Topology) -> None:
    a, r, b = (overlay_topology.add_netns(n) for n in ("a", "r", "b"))
    overlay_topology.veth(a, r, "198.18.1.1/24", "198.18.1.254/24", name_b="ra")
    overlay_topology.veth(b, r, "198.18.2.1/24", "198.18.2.254/24", name_b="rb")
    r.sysctl("net.ipv4.ip_forward", 1)
    a.route_add("198.18.2.0/24", gateway="198.18.1.254")
    b.route_add("default", gateway="198.18.2.254", dev="ul0")
    assert ping(a, "198.18.2.1", count=2, interval=0.05).ok
    assert tcp_transfer(b, a, "198.18.1.1", 256 * 1024, timeout=10).ok


def test_move_link_between_namespaces(overlay_topology: Topology) -> None:
    a, b = overlay_topology.add_netns("a"), overlay_topology.add_netns("b")
    overlay_topology.veth(a, a, None, None, name_a="t0", name_b="t1")
    a.move_link("t1", b, new_name="eth0")
    assert "t1" not in a.links() and "eth0" in b.links()
    a.addr_add("t0", "10.244.0.1/24")
    b.addr_add("eth0", "10.244.0.2/24")
    b.link_set("eth0", state="up")
    assert ping(a, "10.244.0.2", count=1).ok


def test_tcp_transfer_over_veth_verifies_sha256(two_nodes: tuple[Netns, Netns]) -> None:
    n1, n2 = two_nodes
    result = tcp_transfer(n1, n2, "198.18.0.2", 3 * 1024 * 1024 + 17, timeout=20)
    assert result.ok, result.error
    assert result.nbytes == result.sent_bytes == 3 * 1024 * 1024 + 17


def test_tcp_transfer_rejects_a_server_address_the_server_namespace_lacks(
    two_nodes: tuple[Netns, Netns],
) -> None:
    n1, n2 = two_nodes
    # 198.18.0.1 lives in n1, so n2 cannot listen on it: a setup error, raised.
    with pytest.raises(OSError, match="is the address configured"):
        tcp_transfer(n1, n2, "198.18.0.1", 1024, timeout=2)


def test_tcp_transfer_that_stalls_is_reported_not_hung(two_nodes: tuple[Netns, Netns]) -> None:
    n1, n2 = two_nodes
    n2.link_set("ul0", state="down")
    result = tcp_transfer(n1, n2, "198.18.0.2", 1 << 20, timeout=1.5)
    assert not result.ok and result.error and result.seconds < 5


def test_udp_echo_over_veth(two_nodes: tuple[Netns, Netns]) -> None:
    n1, n2 = two_nodes
    result = udp_echo(n1, n2, "198.18.0.2", count=5)
    assert result.ok and len(result.rtts_ms) == 5


def test_socket_lives_in_its_namespace(two_nodes: tuple[Netns, Netns]) -> None:
    n1, _ = two_nodes
    with n1.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("198.18.0.1", 0))  # only n1 has this address
    with pytest.raises(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host:
        host.bind(("198.18.0.1", 0))


def test_run_and_popen_run_inside_the_namespace(two_nodes: tuple[Netns, Netns]) -> None:
    n1, _ = two_nodes
    out = n1.run(["cat", "/proc/thread-self/net/dev"]).stdout
    assert "ul0" in out
    with pytest.raises(subprocess.CalledProcessError, match="in " + n1.name):
        n1.run(["sh", "-c", "echo nope >&2; exit 3"])
    assert n1.run(["false"], check=False).returncode == 1
    with pytest.raises(subprocess.TimeoutExpired):
        n1.run(["sleep", "5"], timeout=0.2)


def test_only_testbed_addresses_and_net_sysctls_are_accepted(overlay_topology: Topology) -> None:
    ns = overlay_topology.add_netns("a")
    with pytest.raises(ValueError, match="outside the test bed"):
        check_allowed("192.168.1.1")
    with pytest.raises(ValueError, match="outside the test bed"):
        ns.addr_add("lo", "8.8.8.8/32")
    with pytest.raises(ValueError, match="not per-namespace"):
        ns.sysctl("kernel.hostname", "x")


def test_kernel_vxlan_twins_ping_and_stream(vxlan_twins: tuple[Netns, Netns]) -> None:
    n1, n2 = vxlan_twins
    info = n1.link_info("vx0")
    assert info.kind == "vxlan" and info.mtu == 1450 and info.state == "up"
    assert ping(n1, OVERLAY_2, count=3, interval=0.05).ok
    result = tcp_transfer(n2, n1, OVERLAY_1, 4 * 1024 * 1024, timeout=30)
    assert result.ok, result.error
    assert result.nbytes == 4 * 1024 * 1024


def test_ethtool_offload_turns_tx_checksumming_off(two_nodes: tuple[Netns, Netns]) -> None:
    n1, _ = two_nodes
    n1.ethtool_offload("ul0", tx=False)
    assert "tx-checksumming: off" in n1.run(["ethtool", "-k", "ul0"]).stdout


def test_capture_on_underlay_shows_vni(vxlan_twins: tuple[Netns, Netns], tmp_path: Path) -> None:
    n1, _ = vxlan_twins
    with Capture(n1, "ul0", bpf="udp port 4789", path=tmp_path / "ul0.pcap") as cap:
        assert ping(n1, OVERLAY_2, count=3, interval=0.05).ok
    assert cap.packets_captured is not None and cap.packets_captured >= 6
    rows = tshark_fields(cap.path, ["ip.src", "udp.dstport", "vxlan.vni"], display_filter="icmp")
    assert len(rows) >= 6
    assert {r["vxlan.vni"] for r in rows} == {str(VNI)}
    assert {r["udp.dstport"] for r in rows} == {"4789"}
    # Outer then inner source addresses, in order.
    assert "198.18.0.1,10.244.1.1" in {r["ip.src"] for r in rows}


def test_capture_with_decode_as_for_a_non_default_port(
    two_nodes: tuple[Netns, Netns], tmp_path: Path
) -> None:
    n1, n2 = two_nodes
    kernel_vxlan(n1, vni=7, local="198.18.0.1", port=8472, remotes=["198.18.0.2"])
    kernel_vxlan(n2, vni=7, local="198.18.0.2", port=8472, remotes=["198.18.0.1"])
    n1.addr_add("vx0", "10.245.0.1/24")
    n2.addr_add("vx0", "10.245.0.2/24")
    with Capture(n2, "ul0", bpf="udp port 8472", path=tmp_path / "p.pcap") as cap:
        assert ping(n1, "10.245.0.2", count=2, interval=0.05).ok
    rows = tshark_fields(cap.path, ["vxlan.vni"], decode_as=["udp.port==8472,vxlan"])
    assert rows and {r["vxlan.vni"] for r in rows} == {"7"}


def test_topology_stops_processes_it_started(tmp_path: Path) -> None:
    with Topology() as topo:
        ns = topo.add_netns("a")
        proc = ns.popen(["sleep", "30"])
        cap = Capture(ns, "lo", path=tmp_path / "lo.pcap").start()  # never stopped
    assert proc.poll() is not None
    assert cap.pid is not None and not os.path.exists(f"/proc/{cap.pid}/status")


def test_iperf3_between_namespaces(two_nodes: tuple[Netns, Netns]) -> None:
    n1, n2 = two_nodes
    result = iperf3(n1, n2, "198.18.0.2", seconds=1)
    assert result.bits_per_second > 0 and result.retransmits is not None


def test_cleanup_leftovers_removes_only_the_given_prefix() -> None:
    mine = Topology(prefix=f"{run_prefix()}x-")
    other = Topology(prefix=f"{run_prefix()}y-")
    try:
        a = mine.add_netns("a")
        mine.veth(a, mine.add_netns("b"))
        keep = other.add_netns("a")
        removed = cleanup_leftovers(mine.prefix)
        assert sorted(removed) == sorted([mine.prefix + "a", mine.prefix + "b"])
        assert keep.name in _listed()
        assert not {mine.prefix + "a", mine.prefix + "b"} & _listed()
        assert cleanup_leftovers(mine.prefix) == []
    finally:
        mine.close()
        other.close()
    with pytest.raises(ValueError, match="too broad"):
        cleanup_leftovers("")


def test_root_tests_skip_with_a_reason_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from overlay.testing.plugin import root_unavailable_reason

    assert root_unavailable_reason() is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (root_unavailable_reason() or "")


def test_the_package_names_every_room_and_imports_nothing_heavy() -> None:
    """``overlay.testing`` lists a name of each of its modules (bar the plugin),
    every name resolves, and importing the package (pytest does, in every run)
    loads neither pyroute2 nor the native engine."""
    import subprocess
    import sys
    from pathlib import Path

    import overlay.testing as pkg

    rooms = {p.stem for p in Path(pkg.__file__).parent.glob("*.py")} - {"__init__", "plugin"}
    assert set(pkg._EXPORTS.values()) == rooms
    assert pkg.__all__ == sorted(pkg._EXPORTS)
    code = (
        "import sys, overlay.testing; "
        "print(any(m in sys.modules for m in ('pyroute2', 'overlay._native')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
