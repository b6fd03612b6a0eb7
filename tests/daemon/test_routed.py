"""Routed and auto networks through overlayd: pods on different nodes talk
without encapsulation where the nodes share an underlay segment (host-gw
routes the node programs itself), through the tunnel where a router sits
between them (auto), and with a kernel-only node that knows nothing of
overlay (plain routes, veth pods).

Real overlayd processes in node namespaces (memory store, static peers), pods
attached through the real ``overlay-cni``, captures with tshark on the
underlay, the kernel's routing table and nftables. Health probing is off, so
that nothing but the pods' traffic crosses the underlay.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from overlay.cli import VIEWS
from overlay.daemon import config as cfgmod
from overlay.daemon.routing import RTPROT_OVERLAY
from overlay.errors import ConfigError
from overlay.nft import Nft
from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.daemon import DaemonCluster, Overlayd, cni, to_toml
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, tcp_transfer, wait_for

pytestmark = [pytest.mark.root]

ROUTED: dict[str, Any] = {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16", "mode": "routed"}
AUTO: dict[str, Any] = {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16", "mode": "auto"}
NO_HEALTH = {"health": {"enabled": False}}


def _add(d: Overlayd, pod: Netns, name: str, vni: int = 100) -> str:
    conf = {"cniVersion": "1.0.0", "name": name, "type": "overlay-cni", "vni": vni,
            "socket": d.socket}  # fmt: skip
    out = cni("ADD", conf, cid=name, netns=pod.path, cni_args=f"K8S_POD_NAME={name}").success()
    return str(out["ips"][0]["address"])


def _ip(iface: str) -> str:
    return str(ipaddress.ip_interface(iface).ip)


def _our_routes(ns: Netns) -> str:
    return ns.run(["ip", "-4", "route", "show", "proto", str(RTPROT_OVERLAY)]).stdout


def _network(d: Overlayd, vni: int = 100) -> dict[str, Any]:
    [net] = [n for n in d.client.networks() if n["vni"] == vni]
    return dict(net)


def _neigh_mac(ns: Netns, ip: str) -> str | None:
    out = ns.run(["ip", "neigh", "show", ip]).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def _paths(d: Overlayd) -> dict[str, str]:
    return {p["name"]: q["path"] for p in d.client.peers() for q in p["paths"]}


def test_routed_pods_talk_in_plain_ip_at_the_node_subnet(
    overlay_daemons: Any, tmp_path: Path
) -> None:
    cluster: DaemonCluster = overlay_daemons(n_nodes=2, networks=[ROUTED], extra=NO_HEALTH)
    cluster.start()
    t = cluster.topo
    n0, n1 = cluster.node_ns
    d0, d1 = cluster.daemons
    p0, p1 = t.add_netns("p0"), t.add_netns("p1")
    a0, a1 = _add(d0, p0, "p0"), _add(d1, p1, "p1")
    sub0, sub1 = _network(d0)["subnet"], _network(d1)["subnet"]
    # Pods carry the node subnet's prefix and route the rest through the gateway.
    assert ipaddress.ip_interface(a0).network == ipaddress.ip_network(sub0)
    gw0 = _network(d0)["gateway"]["address"]
    assert ipaddress.ip_interface(gw0).network == ipaddress.ip_network(sub0)
    assert f"default via {_ip(gw0)} dev eth0" in p0.run(["ip", "-4", "route"]).stdout
    # Each node routes the other's subnet via its underlay (our proto), and
    # blackholes the rest of the range.
    assert wait_for(lambda: f"{sub1} via 198.18.0.2" in _our_routes(n0)), _our_routes(n0)
    assert wait_for(lambda: f"{sub0} via 198.18.0.1" in _our_routes(n1)), _our_routes(n1)
    assert "blackhole 10.244.0.0/16" in _our_routes(n0)
    # No VTEP, no remote: the engine encapsulates nothing in a routed network.
    assert _network(d0)["vteps"] == [] and _network(d0)["mode"] == "routed"
    assert " routed " in VIEWS["networks"][1](d0.client.networks())

    pcap = tmp_path / "ul.pcap"
    with Capture(n1, "ul0", path=pcap):
        assert ping(p0, _ip(a1)).ok and ping(p1, _ip(a0)).ok
        assert tcp_transfer(p0, p1, _ip(a1), 4 << 20).ok
        assert tcp_transfer(p1, p0, _ip(a0), 4 << 20).ok
    rows = tshark_fields(pcap, ["ip.src", "ip.dst", "udp.dstport", "tcp.len"])
    pods = {_ip(a0), _ip(a1)}
    plain = [r for r in rows if r["ip.src"] in pods and r["udp.dstport"] == ""]
    # (a capture may miss packets under load: count that plain IP is there at all)
    assert any(int(r["tcp.len"] or 0) > 0 for r in plain), len(plain)
    assert not [r for r in rows if r["udp.dstport"] == "4789"], "VXLAN on a routed network"

    # The node reaches the other node's pods (the kernel's route) and its own.
    assert ping(n0, _ip(a1)).ok and ping(n0, _ip(a0)).ok
    # The path per peer, and why, in `overlay peers`, the API and the metrics' view.
    peers = d0.client.peers()
    [row] = [q for p in peers for q in p["paths"]]
    assert row["path"] == "direct" and row["subnet"] == sub1 and "198.18.0.2" in row["why"]
    assert "node1 vni 100" in VIEWS["peers"][1](peers)

    # Anti-spoofing: a packet from the underlay with a source in n0's own
    # subnet is dropped (strict reverse path) and counted.
    spoof = str(ipaddress.ip_network(sub0).network_address + 200)
    n1.run(["ip", "addr", "add", f"{spoof}/32", "dev", "lo"])
    n1.run(["ip", "route", "replace", sub0, "via", "198.18.0.1", "src", spoof])
    nft = Nft(n0.path)

    def dropped() -> int:
        for obj in nft.table("inet", "overlay-routes") or []:
            rule = obj.get("rule") or {}
            if rule.get("comment", "").startswith("rpf ovg100"):
                return int(next(e for e in rule["expr"] if "counter" in e)["counter"]["packets"])
        return -1

    before = dropped()
    assert before >= 0
    assert not ping(n1, _ip(a0), count=2, timeout=1.0).ok
    assert dropped() >= before + 2


def _link_mtu(ns: Netns, ifname: str) -> int:
    out = ns.run(["ip", "-o", "link", "show", ifname]).stdout.split()
    return int(out[out.index("mtu") + 1])


def test_routed_pods_have_the_full_underlay_mtu_and_overlay_pods_keep_the_tunnels(
    overlay_daemons: Any, tmp_path: Path
) -> None:
    """A routed network never encapsulates: 1500-byte packets with DF cross nodes
    both ways and TCP runs at MSS 1460 (TSO super-frames included); an overlay
    network on the same nodes keeps 1450."""
    tunnel = {"vni": 200, "tenant": "red", "cidr": "10.245.0.0/16"}
    cluster: DaemonCluster = overlay_daemons(n_nodes=2, networks=[ROUTED, tunnel], extra=NO_HEALTH)
    cluster.start()
    t = cluster.topo
    n1 = cluster.node_ns[1]
    d0, d1 = cluster.daemons
    p0, p1 = t.add_netns("p0"), t.add_netns("p1")
    q0 = t.add_netns("q0")
    a0, a1 = _ip(_add(d0, p0, "p0")), _ip(_add(d1, p1, "p1"))
    _add(d0, q0, "q0", vni=200)
    assert _network(d0)["pod_mtu"] == 1500 == _link_mtu(p0, "eth0")
    assert _network(d0, 200)["pod_mtu"] == 1450 == _link_mtu(q0, "eth0")
    assert _link_mtu(cluster.node_ns[0], "ovg100") == 1500
    assert wait_for(lambda: _network(d0)["subnet"] in _our_routes(n1))
    assert ping(p0, a1, size=1472, dont_fragment=True).ok
    assert ping(p1, a0, size=1472, dont_fragment=True).ok
    pcap = tmp_path / "ul.pcap"
    with Capture(n1, "ul0", path=pcap):
        assert tcp_transfer(p0, p1, a1, 8 << 20).ok
        assert tcp_transfer(p1, p0, a0, 8 << 20).ok
    rows = tshark_fields(pcap, ["tcp.options.mss_val"], display_filter="tcp.flags.syn == 1")
    assert {r["tcp.options.mss_val"] for r in rows} == {"1460"}
    # Not one frame dropped for its size: the kernel's super-frames through the
    # gateway (a GRO train's linear part holds payload) pass as well.
    for d in (d0, d1):
        assert d.client.counters()["drops"]["frame_oversize"] == 0


def test_a_kernel_only_node_interoperates(overlay_daemons: Any) -> None:
    """overlayd on n0; n1 is a plain namespace: a veth pod and plain routes."""
    kernel_sub = "10.244.200.0/24"
    cluster: DaemonCluster = overlay_daemons(n_nodes=2, networks=[ROUTED], extra=NO_HEALTH)
    d0 = cluster.daemons[0]
    cfg = d0.config
    cfg["store"]["peers"][0]["subnets"] = [kernel_sub]
    d0.write_config(cfg)
    d0.start()
    t = cluster.topo
    n0, n1 = cluster.node_ns
    p0, k1 = t.add_netns("p0"), t.add_netns("k1")
    a0 = _add(d0, p0, "p0")
    sub0 = _network(d0)["subnet"]
    # The kernel-only node: a veth pod, forwarding, a route to n0's subnet.
    t.veth(n1, k1, "10.244.200.1/24", "10.244.200.2/24", name_a="kp0", name_b="eth0")
    k1.route_add("default", gateway="10.244.200.1")
    n1.sysctl("net.ipv4.ip_forward", 1)
    n1.route_add(sub0, gateway="198.18.0.1")
    assert wait_for(lambda: f"{kernel_sub} via 198.18.0.2" in _our_routes(n0)), _our_routes(n0)
    assert _paths(d0) == {"node1": "direct"}
    assert ping(p0, "10.244.200.2").ok and ping(k1, _ip(a0)).ok
    assert tcp_transfer(p0, k1, "10.244.200.2", 4 << 20).ok
    assert tcp_transfer(k1, p0, _ip(a0), 4 << 20).ok


def test_a_static_peer_removed_by_a_reload_takes_its_route_with_it(overlay_daemons: Any) -> None:
    cluster: DaemonCluster = overlay_daemons(n_nodes=2, networks=[ROUTED], extra=NO_HEALTH)
    cluster.start()
    n0 = cluster.node_ns[0]
    d0, d1 = cluster.daemons
    sub1 = _network(d1)["subnet"]
    assert wait_for(lambda: f"{sub1} via 198.18.0.2" in _our_routes(n0)), _our_routes(n0)
    cfg = d0.config
    cfg["store"]["peers"] = []
    d0.write_config(cfg)
    d0.reload()
    assert wait_for(lambda: sub1 not in _our_routes(n0)), _our_routes(n0)
    # The rest of ours stays: the range's blackhole.
    assert "blackhole 10.244.0.0/16" in _our_routes(n0)
    assert _paths(d0) == {}


def test_a_peer_whose_lease_expires_takes_its_route_with_it(
    overlay_daemons: Any, overlay_etcd: Any
) -> None:
    cluster: DaemonCluster = overlay_daemons(
        n_nodes=2, networks=[ROUTED], extra=NO_HEALTH, store=overlay_etcd.endpoint
    )
    cluster.start()
    n0 = cluster.node_ns[0]
    d0, d1 = cluster.daemons
    sub1 = _network(d1)["subnet"]
    assert wait_for(lambda: f"{sub1} via 198.18.0.2" in _our_routes(n0), 20), _our_routes(n0)
    d1.kill()  # no goodbye: its lease (ttl 3 s) runs out in etcd
    assert wait_for(lambda: sub1 not in _our_routes(n0), 30), _our_routes(n0)
    assert "blackhole 10.244.0.0/16" in _our_routes(n0)


def test_a_restart_adopts_our_routes_removes_stale_ones_and_leaves_others(
    overlay_daemons: Any,
) -> None:
    cluster: DaemonCluster = overlay_daemons(n_nodes=2, networks=[ROUTED], extra=NO_HEALTH)
    cluster.start()
    n0 = cluster.node_ns[0]
    d0, d1 = cluster.daemons
    sub1 = _network(d1)["subnet"]
    assert wait_for(lambda: f"{sub1} via 198.18.0.2" in _our_routes(n0)), _our_routes(n0)
    before = sorted(_our_routes(n0).splitlines())
    d0.stop()
    # Routes outlive the daemon (the data plane's state is not flushed).
    assert sorted(_our_routes(n0).splitlines()) == before
    # While it is down: a stale route of ours, and an operator's route in the range.
    n0.run(["ip", "route", "add", "10.244.99.0/24", "via", "198.18.0.2", "proto", "160"])
    n0.run(["ip", "route", "add", "10.244.98.0/24", "via", "198.18.0.2", "proto", "static"])
    logged = d0.log().count("overlayd: routes:")
    d0.start()
    assert wait_for(lambda: "10.244.99.0/24" not in _our_routes(n0)), _our_routes(n0)
    # Adopted, not made again: the same routes, once each, and one change (the
    # stale route's removal) logged by the new process.
    after = _our_routes(n0).splitlines()
    assert sorted(after) == before and len(set(after)) == len(after)
    new_lines = [ln for ln in d0.log().splitlines() if "overlayd: routes:" in ln][logged:]
    assert len(new_lines) == 1 and "0 programmed, 1 removed" in new_lines[0], new_lines
    assert "10.244.98.0/24 via 198.18.0.2" in n0.run(["ip", "-4", "route"]).stdout


def _auto_bed(topo: Topology, tmp: Path) -> tuple[list[Netns], list[Overlayd]]:
    """n0, n1 on 198.18.1.0/24; n2 on 198.18.2.0/24; a plain router r between."""
    nodes = [topo.add_netns(f"n{i}") for i in range(3)]
    r = topo.add_netns("r")
    topo.lan([nodes[0], nodes[1], r], ["198.18.1.1/24", "198.18.1.2/24", "198.18.1.254/24"])
    topo.veth(r, nodes[2], "198.18.2.254/24", "198.18.2.1/24", name_a="ul1", name_b="ul0")
    r.sysctl("net.ipv4.ip_forward", 1)
    for ns in nodes[:2]:
        ns.route_add("198.18.2.0/24", gateway="198.18.1.254")
    nodes[2].route_add("198.18.1.0/24", gateway="198.18.2.254")
    underlays = ["198.18.1.1", "198.18.1.2", "198.18.2.1"]
    daemons = []
    for i, ns in enumerate(nodes):
        d = tmp / f"node{i}"
        peers = [
            {"name": f"node{j}", "underlay": underlays[j], "networks": [100]}
            for j in range(3)
            if j != i
        ]
        cfg = {
            "node": {
                "name": f"node{i}",
                "underlay": underlays[i],
                "netns": ns.path,
                "state_dir": str(d / "state"),
            },  # fmt: skip
            "store": {"kind": "memory", "ttl": 3, "peers": peers},
            "api": {"socket": str(d / "overlayd.sock")},
            "metrics": {"address": ""},
            "log": {"level": "debug"},
            "health": {"enabled": False},
            "networks": [dict(AUTO)],
        }
        daemons.append(Overlayd(d, cfg))
    return nodes, daemons


def test_auto_is_direct_on_the_segment_and_tunnelled_across_the_router(
    overlay_topology: Topology, tmp_path: Path
) -> None:
    nodes, daemons = _auto_bed(overlay_topology, tmp_path)
    try:
        for d in daemons:
            d.start(wait=False)
        for d in daemons:
            d.wait_ready()
        pods = [overlay_topology.add_netns(f"p{i}") for i in range(3)]
        addrs = [
            _ip(_add(d, p, f"p{i}")) for i, (d, p) in enumerate(zip(daemons, pods, strict=True))
        ]
        subs = [_network(d)["subnet"] for d in daemons]
        assert wait_for(lambda: f"{subs[1]} via 198.18.1.2" in _our_routes(nodes[0]))
        assert subs[2] not in _our_routes(nodes[0])  # the tunnel peer: no route of ours
        # No route in the pods: the gateway answers ARP for a direct peer's pods
        # (proxy ARP), never for a tunnel peer's or its own node's.
        assert _our_routes(pods[0]) == ""
        n0_ovg = "/proc/sys/net/ipv4/conf/ovg100/proxy_arp"
        assert nodes[0].run(["cat", n0_ovg]).stdout.strip() == "1"
        paths = _paths(daemons[0])
        assert paths == {"node1": "direct", "node2": "tunnel"}, paths
        assert _network(daemons[0])["vteps"] == ["198.18.2.1"]  # the tunnel peer only
        assert _paths(daemons[2]) == {"node0": "tunnel", "node1": "tunnel"}

        pcap = tmp_path / "n0.pcap"
        with Capture(nodes[0], "ul0", path=pcap):
            assert ping(pods[0], addrs[1]).ok and ping(pods[1], addrs[0]).ok
            assert ping(pods[0], addrs[2]).ok and ping(pods[2], addrs[0]).ok
            assert tcp_transfer(pods[0], pods[1], addrs[1], 2 << 20).ok
            assert tcp_transfer(pods[2], pods[0], addrs[0], 2 << 20).ok
        rows = tshark_fields(pcap, ["ip.src", "ip.dst", "udp.dstport", "vxlan.vni"])
        # Same segment: the pods' addresses in the outer (only) IP header.
        same = [r for r in rows if r["ip.src"] in (addrs[0], addrs[1]) and not r["vxlan.vni"]]
        assert same
        # Across the router: VXLAN between the nodes' underlays, pods inside.
        tunnel = [r for r in rows if r["vxlan.vni"] == "100"]
        assert tunnel and all(r["udp.dstport"] == "4789" for r in tunnel)
        assert any(addrs[2] in r["ip.src"].split(",") for r in tunnel)
        assert not [r for r in tunnel if addrs[1] in r["ip.src"] + r["ip.dst"]]
        out = VIEWS["peers"][1](daemons[0].client.peers())
        assert "node1 vni 100" in out and "direct" in out and "tunnel" in out
        gw_mac = _network(daemons[0])["gateway"]["mac"]
        assert _neigh_mac(pods[0], addrs[1]) == gw_mac  # direct: through the gateway
        assert _neigh_mac(pods[0], addrs[2]) not in (None, gw_mac)  # tunnel: the pod's own
        # Not one of the gateway's ARP answers was refused by the engine.
        assert daemons[0].client.counters()["drops"]["spoofed_arp"] == 0
    finally:
        for d in daemons:
            d.stop()


def test_refusals(overlay_daemons: Any) -> None:
    # Overlapping routed networks are refused by name.
    text = to_toml(
        {
            "node": {"name": "a", "underlay": "198.18.0.1"},
            "networks": [dict(ROUTED), {**ROUTED, "vni": 200, "cidr": "10.244.5.0/24"}],
        }
    )
    with pytest.raises(ConfigError) as exc:
        cfgmod.parse(text)
    assert exc.value.field == "networks[1].mode"
    # A static peer's subnet must be a node subnet of a network it lists.
    bad = to_toml(
        {
            "node": {"name": "a", "underlay": "198.18.0.1"},
            "store": {
                "kind": "memory",
                "peers": [
                    {
                        "name": "b",
                        "underlay": "198.18.0.2",
                        "networks": [100],
                        "subnets": ["10.245.0.0/24"],
                    }
                ],
            },  # fmt: skip
            "networks": [dict(ROUTED)],
        }
    )
    with pytest.raises(ConfigError) as exc:
        cfgmod.parse(bad)
    assert exc.value.field == "store.peers[0].subnets[0]"
    # A mode change of a network with pods attached is refused by a reload.
    cluster: DaemonCluster = overlay_daemons(n_nodes=1, networks=[ROUTED], extra=NO_HEALTH)
    cluster.start()
    d0 = cluster.daemons[0]
    _add(d0, cluster.topo.add_netns("p0"), "p0")
    cfg = d0.config
    cfg["networks"] = [dict(AUTO)]
    d0.write_config(cfg)
    d0.reload()
    assert wait_for(lambda: "reload refused" in d0.log()), d0.log()[-2000:]
    assert _network(d0)["mode"] == "routed"
