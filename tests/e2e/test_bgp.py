"""BGP for routed networks (``overlay.bgp``): a node's BIRD announces its subnets and
learns the others' from a real BIRD 2 router (``overlay.testing.bird``).

The bed of the end-to-end tests: node namespaces n1 (underlay 198.18.1.1/24) and
n2 (198.18.2.1/24) on two different underlay subnets, a router namespace r
between them (198.18.1.254, 198.18.2.254; AS 65000; n1 is AS 65001, n2 AS
65002). Network 100 (10.244.0.0/16, node subnets /24) is routed: each node's
gateway and pod carry the node subnet's prefix (10.244.1.1/24 and
10.244.1.2/24 on n1, 10.244.2.x on n2), exactly what routed mode programs,
so everything off the node's subnet goes pod -> gateway -> the node's kernel
-> the router -> the other node, as plain IP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlay import Encap, Node
from overlay.bgp import (
    KERNEL_METRIC,
    BgpPeer,
    BirdError,
    BirdSpeaker,
    RoutedRange,
    SpeakerConfig,
    check_config,
    parse_protocols,
    parse_routes,
    render,
)
from overlay.control.ipam import mac_of
from overlay.errors import ConfigError
from overlay.gateway import GatewayRule, NodeRules
from overlay.node import Network
from overlay.testing.bird import BirdRouter
from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, tcp_peer, tcp_transfer, wait_for

BLUE = "10.244.0.0/16"
ROUTED = RoutedRange(BLUE, 24)
ROUTER_AS = 65000


def _kernel_bgp_routes(ns: Netns) -> dict[str, tuple[str, str, int]]:
    """dst -> (gateway, dev, metric) of the routes BIRD wrote into ``ns``'s main table."""
    out = ns.run(["ip", "-j", "-4", "route", "show", "proto", "bird"]).stdout
    return {r["dst"]: (r.get("gateway"), r.get("dev"), r.get("metric", 0)) for r in json.loads(out)}


def _import_updates_received(speaker: BirdSpeaker, protocol: str) -> int:
    text = speaker.birdc(f"show protocols all {protocol}")
    m = re.search(r"Import updates:\s+(\d+)", text)
    return int(m.group(1)) if m else 0


# ---- the configuration ------------------------------------------------------------


def test_the_generated_configuration_parses_and_says_what_is_announced(tmp_path: Path) -> None:
    cfg = SpeakerConfig(
        router_id="198.18.1.1",
        asn=65001,
        peers=(BgpPeer("198.18.1.254", 65000), BgpPeer("198.18.3.254", 4200000000)),
        ranges=(ROUTED, RoutedRange("10.245.0.0/16", 26)),
        local_subnets=("10.244.1.0/24", "10.245.0.64/26"),
    )
    text = render(cfg)
    path = tmp_path / "bird.conf"
    path.write_text(text)
    check_config(str(path))  # BIRD itself reads it
    assert "router id 198.18.1.1;" in text
    assert "define ROUTED = [ 10.244.0.0/16{24,24}, 10.245.0.0/16{26,26} ];" in text
    assert "define LOCAL = [ 10.244.1.0/24, 10.245.0.64/26 ];" in text
    assert 'interface "ovg*";' in text
    assert f"metric {KERNEL_METRIC};" in text
    assert "neighbor 198.18.3.254 as 4200000000;" in text
    assert text.count("protocol bgp ") == 2
    # Nothing to announce yet: still a configuration BIRD reads.
    path.write_text(render(SpeakerConfig(router_id="198.18.1.1", asn=65001)))
    check_config(str(path))
    path.write_text(text.replace("define LOCAL", "define LOCAL LOCAL"))
    with pytest.raises(BirdError, match="bird.conf"):
        check_config(str(path))


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"router_id": "fe80::1"}, "router_id"),
        ({"router_id": "0.0.0.0"}, "router_id"),
        ({"asn": 0}, "asn"),
        ({"asn": 1 << 32}, "asn"),
        ({"asn": True}, "asn"),
        ({"local_subnets": ("10.244.1.1/24",)}, "local_subnets"),
        ({"peers": (BgpPeer("198.18.1.254", 65000), BgpPeer("198.18.1.254", 65009))}, "peers[1]"),
    ],
)
def test_a_bad_speaker_configuration_is_refused_by_name(kw: dict, field: str) -> None:
    args = {"router_id": "198.18.1.1", "asn": 65001, **kw}
    with pytest.raises(ConfigError) as err:
        SpeakerConfig(**args)
    assert err.value.field.startswith(field)


def test_bad_peers_and_ranges_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="address"):
        BgpPeer("router-1", 65000)
    with pytest.raises(ConfigError, match="asn"):
        BgpPeer("198.18.1.254", -1)
    with pytest.raises(ConfigError, match="subnet_prefix"):
        RoutedRange(BLUE, 8)
    with pytest.raises(ConfigError, match="cidr"):
        RoutedRange("2001:2::/48", 64)
    with pytest.raises(ConfigError, match="state_dir"):
        BirdSpeaker("relative/dir")


def test_birds_answers_are_parsed() -> None:
    protocols = parse_protocols(
        "BIRD 2.0.12 ready.\n"
        "Name       Proto      Table      State  Since         Info\n"
        "peer_198_18_1_254 BGP        ---        start  1700000000    Active        "
        "Socket: Connection refused\n"
        "  BGP state:          Active\n"
        "    Neighbor address: 198.18.1.254\n"
        "    Neighbor AS:      65000\n"
        "    Local AS:         65001\n"
        "    Last error:       Socket: Connection refused\n"
        "  Channel ipv4\n"
        "    Routes:         2 imported, 1 exported, 2 preferred\n"
    )
    p = protocols["peer_198_18_1_254"]
    assert p["bgp_state"] == "Active" and p["since"] == 1700000000.0
    assert p["neighbor_as"] == 65000 and p["local_as"] == 65001
    assert p["last_error"] == "Socket: Connection refused"
    assert (p["routes_imported"], p["routes_exported"]) == (2, 1)
    routes = parse_routes(
        "BIRD 2.0.12 ready.\nTable master4:\n"
        "10.244.2.0/24        unicast [peer_198_18_1_254 1700000000] * (100) [AS65000i]\n"
        "\tvia 198.18.1.254 on ul0\n"
        "                     unicast [peer_198_18_3_254 1700000001] (100) [AS65003i]\n"
        "\tvia 198.18.3.254 on ul1\n"
        "10.244.1.0/24        unicast [overlay_gateways 1700000000] * (240)\n"
        "\tdev ovg100\n"
    )
    assert routes == [
        {"net": "10.244.2.0/24", "protocol": "peer_198_18_1_254", "primary": True,
         "via": "198.18.1.254", "dev": "ul0"},
        {"net": "10.244.2.0/24", "protocol": "peer_198_18_3_254", "primary": False,
         "via": "198.18.3.254", "dev": "ul1"},
        {"net": "10.244.1.0/24", "protocol": "overlay_gateways", "primary": True,
         "via": None, "dev": "ovg100"},
    ]  # fmt: skip


# ---- one node and a router: the filters, with BIRD on both sides --------------------


@pytest.mark.root
def test_only_routed_subnets_are_exchanged_and_changes_keep_the_session(
    overlay_topology: Topology, tmp_path: Path
) -> None:
    t = overlay_topology
    n1, r = t.add_netns("n1"), t.add_netns("r")
    t.veth(n1, r, "198.18.1.1/24", "198.18.1.254/24", name_a="ul0", name_b="ul1")
    for name, cidr in (
        ("ovg100", "10.244.1.1/24"),  # a routed network's gateway: announced
        ("ovg200", "10.245.1.1/16"),  # an overlay network's gateway (cluster prefix): not
        ("ovg300", "10.244.6.1/24"),  # a gateway, but not a subnet leased to this node: not
        ("eth9", "10.244.5.1/24"),  # a leased subnet, but not on a gateway: not
    ):
        n1.run(["ip", "tuntap", "add", "name", name, "mode", "tap"])  # no dummy module here
        n1.addr_add(name, cidr)
        n1.link_set(name, state="up")
    # What the router offers the node: one good subnet among what must be refused.
    extras = [
        "0.0.0.0/0",  # a default route
        "198.19.5.0/24",  # outside every routed range
        "10.244.0.0/16",  # the whole range
        "10.244.3.0/25",  # not a node subnet's length
        "10.244.1.0/24",  # the node's own subnet, reflected
        "10.244.7.0/24",  # another node's subnet: learned
    ]
    router = BirdRouter(
        r,
        tmp_path / "r",
        asn=ROUTER_AS,
        router_id="198.18.1.254",
        neighbors=[("198.18.1.1", 65001)],
        extra_routes=extras,
    )
    speaker = BirdSpeaker(str(tmp_path / "n1"), n1.name)
    peer = BgpPeer("198.18.1.254", ROUTER_AS)
    cfg = SpeakerConfig("198.18.1.1", 65001, (peer,), (ROUTED,), ("10.244.1.0/24", "10.244.5.0/24"))
    with router:
        try:
            speaker.start(cfg)
            assert wait_for(lambda: router.established("198.18.1.1"), 30)
            # Every offer arrived (received, filtered or not)...
            assert wait_for(lambda: _import_updates_received(speaker, peer.protocol) >= 6, 30)
            assert wait_for(lambda: "10.244.1.0/24" in router.learned(), 30)
            # ...and only the other node's subnet was taken, into the kernel too.
            assert _kernel_bgp_routes(n1) == {
                "10.244.7.0/24": ("198.18.1.254", "ul0", KERNEL_METRIC)
            }
            status = speaker.status()
            assert status["learned"] == [
                {"net": "10.244.7.0/24", "via": "198.18.1.254", "peer": "198.18.1.254"}
            ]
            assert status["announced"] == ["10.244.1.0/24"]
            (p,) = status["peers"]
            assert p["up"] and p["state"] == "Established"
            assert (p["routes_learned"], p["routes_announced"]) == (1, 1)
            assert router.learned() == {"10.244.1.0/24": "198.18.1.1"}  # and nothing else
            since = p["since"]

            # The same configuration again: nothing is sent to BIRD.
            assert speaker.apply(cfg) is False
            # A new routed range and leased subnet: announced without a session reset.
            cfg2 = SpeakerConfig(
                "198.18.1.1",
                65001,
                (peer,),
                (ROUTED, RoutedRange("10.245.0.0/16", 16)),
                ("10.244.1.0/24", "10.244.5.0/24", "10.245.0.0/16"),
            )
            assert speaker.apply(cfg2) is True
            assert wait_for(lambda: "10.245.0.0/16" in router.learned(), 30)
            (p,) = speaker.status()["peers"]
            assert p["up"] and p["since"] == since
        finally:
            speaker.stop()
    assert speaker.pid is None and not (tmp_path / "n1" / "bird.ctl").exists()
    # BIRD took its routes with it.
    assert _kernel_bgp_routes(n1) == {}


@pytest.mark.root
def test_a_dead_speaker_is_started_again_and_a_leftover_is_stopped(
    overlay_topology: Topology, tmp_path: Path
) -> None:
    n1 = overlay_topology.add_netns("n1")
    cfg = SpeakerConfig("198.18.1.1", 65001)
    speaker = BirdSpeaker(str(tmp_path / "n1"), n1.name)
    speaker.start(cfg)
    try:
        first = speaker.pid
        assert first is not None
        n1.run(["kill", "-KILL", str(first)])
        assert wait_for(lambda: not speaker.running)
        assert wait_for(speaker.supervise, 15)  # after its backoff
        assert speaker.running and speaker.pid != first and speaker.restarts == 1
        assert speaker.last_exit == -9
        # An owner that died without stopping BIRD: the next speaker stops it first.
        orphan = speaker.pid
        speaker._proc = None  # forgotten, still running
        other = BirdSpeaker(str(tmp_path / "n1"), n1.name)
        other.start(cfg)
        try:
            assert wait_for(lambda: not Path(f"/proc/{orphan}").exists() or _zombie(orphan))
            assert other.status()["running"]
        finally:
            other.stop()
    finally:
        speaker.stop()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


# ---- two nodes behind a router: pods talk, as plain IP -----------------------------


@dataclass
class Bed:
    t: Topology
    n1: Netns
    n2: Netns
    r: Netns
    p1: Netns
    p2: Netns
    router: BirdRouter
    s1: BirdSpeaker
    s2: BirdSpeaker
    cfg1: SpeakerConfig
    cfg2: SpeakerConfig


def _routed_pod(net: Network, ns: Netns, ip: str, gateway: str) -> None:
    port = net.add_port(mac_of(ip.split("/")[0]), [ip])
    port.move_to_netns(ns.path, gateway=gateway)


@pytest.fixture
def bed(overlay_topology: Topology, tmp_path: Path) -> Iterator[Bed]:
    t = overlay_topology
    n1, n2, r = t.add_netns("n1"), t.add_netns("n2"), t.add_netns("r")
    p1, p2 = t.add_netns("p1"), t.add_netns("p2")
    t.veth(n1, r, "198.18.1.1/24", "198.18.1.254/24", name_a="ul0", name_b="ul1")
    t.veth(n2, r, "198.18.2.1/24", "198.18.2.254/24", name_a="ul0", name_b="ul2")
    r.sysctl("net.ipv4.ip_forward", 1)
    n1.route_add("default", gateway="198.18.1.254")
    n2.route_add("default", gateway="198.18.2.254")
    router = BirdRouter(
        r,
        tmp_path / "r",
        asn=ROUTER_AS,
        router_id="198.18.1.254",
        neighbors=[("198.18.1.1", 65001), ("198.18.2.1", 65002)],
    )
    s1 = BirdSpeaker(str(tmp_path / "n1"), n1.name)
    s2 = BirdSpeaker(str(tmp_path / "n2"), n2.name)
    cfg1 = SpeakerConfig(
        "198.18.1.1", 65001, (BgpPeer("198.18.1.254", ROUTER_AS),), (ROUTED,), ("10.244.1.0/24",)
    )
    cfg2 = SpeakerConfig(
        "198.18.2.1", 65002, (BgpPeer("198.18.2.254", ROUTER_AS),), (ROUTED,), ("10.244.2.0/24",)
    )
    with (
        Node("198.18.1.1", Encap.VXLAN, netns=n1.path) as node1,
        Node("198.18.2.1", Encap.VXLAN, netns=n2.path) as node2,
    ):
        b1, b2 = node1.add_network(100, "blue"), node2.add_network(100, "blue")
        # Routed mode: gateway and pods with the node subnet's prefix.
        gw1 = b1.add_gateway(mac_of("10.244.1.1"), ["10.244.1.1/24"])
        gw2 = b2.add_gateway(mac_of("10.244.2.1"), ["10.244.2.1/24"])
        _routed_pod(b1, p1, "10.244.1.2/24", "10.244.1.1")
        _routed_pod(b2, p2, "10.244.2.2/24", "10.244.2.1")
        NodeRules(n1.path).apply([GatewayRule(gw1.ifname, (BLUE,))])
        NodeRules(n2.path).apply([GatewayRule(gw2.ifname, (BLUE,))])
        node1.start()
        node2.start()
        try:
            router.start()
            s1.start(cfg1)
            s2.start(cfg2)
            yield Bed(t, n1, n2, r, p1, p2, router, s1, s2, cfg1, cfg2)
        finally:
            s1.stop()
            s2.stop()
            router.stop()


def _learned(b: Bed) -> bool:
    return _kernel_bgp_routes(b.n1).get("10.244.2.0/24", ("",))[0] == "198.18.1.254" and (
        _kernel_bgp_routes(b.n2).get("10.244.1.0/24", ("",))[0] == "198.18.2.254"
    )


@pytest.mark.root
def test_each_node_learns_the_others_subnet_and_pods_talk_as_plain_ip(
    bed: Bed, tmp_path: Path
) -> None:
    assert wait_for(lambda: _learned(bed), 30)
    assert _kernel_bgp_routes(bed.n1) == {"10.244.2.0/24": ("198.18.1.254", "ul0", KERNEL_METRIC)}
    assert _kernel_bgp_routes(bed.n2) == {"10.244.1.0/24": ("198.18.2.254", "ul0", KERNEL_METRIC)}
    assert bed.router.learned() == {"10.244.1.0/24": "198.18.1.1", "10.244.2.0/24": "198.18.2.1"}
    st1 = bed.s1.status()
    assert st1["announced"] == ["10.244.1.0/24"]
    assert [r["net"] for r in st1["learned"]] == ["10.244.2.0/24"]
    assert st1["peers"][0]["up"]

    with Capture(bed.r, "ul1", bpf="ip", path=tmp_path / "ul1.pcap") as cap:
        assert ping(bed.p1, "10.244.2.2").ok
        assert ping(bed.p2, "10.244.1.2").ok
        assert tcp_transfer(bed.p1, bed.p2, "10.244.2.2", 4 << 20).ok
        assert tcp_transfer(bed.p2, bed.p1, "10.244.1.2", 4 << 20).ok
        # No translation on the way: each pod sees the other's own address.
        assert tcp_peer(bed.p1, bed.p2, ("10.244.2.2", 8080)) == "10.244.1.2"
        assert tcp_peer(bed.p2, bed.p1, ("10.244.1.2", 8081)) == "10.244.2.2"
    rows = tshark_fields(cap.path, ["ip.src", "ip.dst", "udp.dstport", "icmp.type"])
    pods = {"10.244.1.2", "10.244.2.2"}
    plain = [x for x in rows if x["ip.src"] in pods and x["ip.dst"] in pods]
    assert any(x["icmp.type"] == "8" for x in plain)  # the pods' own packets, on the wire
    assert len(plain) > 100  # the transfers too
    assert not [x for x in rows if x["udp.dstport"] == "4789"]  # no encapsulation


@pytest.mark.root
def test_a_stopped_speaker_withdraws_and_a_restarted_router_heals(bed: Bed) -> None:
    assert wait_for(lambda: _learned(bed), 30)
    # n2's speaker stops: the router drops the session and withdraws n2's subnet.
    bed.s2.stop()
    assert wait_for(lambda: "10.244.2.0/24" not in _kernel_bgp_routes(bed.n1), 30)
    assert "10.244.2.0/24" not in bed.router.learned()
    assert not ping(bed.p1, "10.244.2.2", count=2, timeout=1).ok
    (p,) = bed.s1.status()["peers"]
    assert p["up"] and p["routes_learned"] == 0
    # Back: learned again.
    bed.s2.start(bed.cfg2)
    assert wait_for(lambda: _learned(bed), 30)
    assert ping(bed.p1, "10.244.2.2").ok

    # The router restarts: both nodes lose their routes, then get them back.
    bed.router.stop()
    assert wait_for(lambda: not _kernel_bgp_routes(bed.n1) and not _kernel_bgp_routes(bed.n2), 30)
    assert not bed.s1.status()["peers"][0]["up"]
    bed.router.start()
    assert wait_for(lambda: _learned(bed), 60)
    assert bed.s1.status()["peers"][0]["up"]
    assert ping(bed.p1, "10.244.2.2").ok and ping(bed.p2, "10.244.1.2").ok
    assert tcp_transfer(bed.p1, bed.p2, "10.244.2.2", 1 << 20).ok
