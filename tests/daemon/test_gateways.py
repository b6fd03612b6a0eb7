"""overlayd's gateways: the node reaches its pods and the pods the node, the
outside (masqueraded) and Services; networks stay apart through the host; a
restart keeps an egress transfer going; a removed network takes its gateway
and rules with it.

Two real overlayd nodes in namespaces (n0, n1, memory store with static peers),
pods attached through the real ``overlay-cni``, the kernel's nftables in n0,
and an "outside" host (198.19.0.2) behind n0 that has no route to any pod.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from overlay.cli import VIEWS
from overlay.daemon import config as cfgmod
from overlay.errors import ConfigError
from overlay.nft import Nft
from overlay.testing.daemon import DaemonCluster, Overlayd, cni
from overlay.testing.netns import Netns
from overlay.testing.traffic import ping, tcp_peer, tcp_transfer, wait_for

pytestmark = [pytest.mark.root]

BLUE: dict[str, Any] = {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"}
RED: dict[str, Any] = {"vni": 200, "tenant": "red", "cidr": "10.245.0.0/16"}
OUTSIDE = "198.19.0.2"


@dataclass
class Bed:
    cluster: DaemonCluster
    out: Netns
    p0: Netns
    p1: Netns
    r0: Netns
    ips: dict[str, str]

    @property
    def n0(self) -> Netns:
        return self.cluster.node_ns[0]

    @property
    def d0(self) -> Overlayd:
        return self.cluster.daemons[0]


def _add(d: Overlayd, pod: Netns, vni: int, name: str) -> str:
    conf = {"cniVersion": "1.0.0", "name": name, "type": "overlay-cni", "vni": vni,
            "socket": d.socket}  # fmt: skip
    out = cni("ADD", conf, cid=name, netns=pod.path, cni_args=f"K8S_POD_NAME={name}").success()
    return str(ipaddress.ip_interface(out["ips"][0]["address"]).ip)


@pytest.fixture(params=["memory", "etcd"])
def bed(overlay_daemons: Callable[..., DaemonCluster], request: pytest.FixtureRequest) -> Bed:
    store = (
        request.getfixturevalue("overlay_etcd").endpoint if request.param == "etcd" else "memory"
    )
    cluster = overlay_daemons(n_nodes=2, networks=[BLUE, RED], store=store)
    t = cluster.topo
    out = t.add_netns("out")
    t.veth(cluster.node_ns[0], out, "198.19.0.1/24", f"{OUTSIDE}/24", name_a="wan0", name_b="wan0")
    cluster.start()
    p0, p1, r0 = t.add_netns("p0"), t.add_netns("p1"), t.add_netns("r0")
    d0, d1 = cluster.daemons
    ips = {
        "p0": _add(d0, p0, 100, "p0"),
        "p1": _add(d1, p1, 100, "p1"),
        "r0": _add(d0, r0, 200, "r0"),
    }
    if store != "memory":
        # A shared store: each node's gateway is announced like an endpoint, so
        # the other node has it (and the pod) programmed before any traffic.
        for d in cluster.daemons:
            assert wait_for(lambda d=d: len(d.client.fdb(vni=100)) == 4), d.client.fdb(vni=100)
    # (Static peers share no store: their networks flood and learn, so the
    # gateways, like the pods, are learned from the first frames.)
    return Bed(cluster, out, p0, p1, r0, ips)


def _gateway(d: Overlayd, vni: int) -> dict[str, Any]:
    [net] = [n for n in d.client.networks() if n["vni"] == vni]
    assert net["gateway"] and "error" not in net["gateway"], net
    return dict(net["gateway"])


def test_the_node_pods_outside_and_services_through_the_gateway(bed: Bed) -> None:
    gw = _gateway(bed.d0, 100)
    gw_ip = gw["address"].split("/")[0]
    assert gw["ifname"] == "ovg100" and gw["masquerade"] is True
    assert ipaddress.ip_interface(gw["address"]).network == ipaddress.ip_network("10.244.0.0/16")
    assert ipaddress.ip_address(gw_ip) + 1 == ipaddress.ip_address(bed.ips["p0"])
    # `overlay networks` shows it.
    assert f"ovg100 {gw['address']} masq" in VIEWS["networks"][1](bed.d0.client.networks())
    # Pods route through their own node's gateway.
    assert f"default via {gw_ip} dev eth0" in bed.p0.run(["ip", "-4", "route"]).stdout

    # The node reaches its pod and the other node's, without NAT, and back.
    assert ping(bed.n0, bed.ips["p0"]).ok and ping(bed.n0, bed.ips["p1"]).ok
    assert tcp_transfer(bed.n0, bed.p1, bed.ips["p1"], 1 << 20).ok
    assert tcp_peer(bed.n0, bed.p1, (bed.ips["p1"], 8080)) == gw_ip
    assert tcp_peer(bed.p1, bed.n0, (gw_ip, 8081)) == bed.ips["p1"]

    # Egress: masqueraded to the node's address on the way out.
    assert tcp_peer(bed.p0, bed.out, (OUTSIDE, 8082)) == "198.19.0.1"
    assert tcp_transfer(bed.p0, bed.out, OUTSIDE, 4 << 20).ok

    # A Service: a kube-proxy-style DNAT in n0 to the pod on n1.
    bed.n0.run(["nft", "add table ip kpt; add chain ip kpt pre { type nat hook prerouting "
                "priority dstnat; }; add rule ip kpt pre ip daddr 10.96.0.10 tcp dport 80 "
                f"dnat to {bed.ips['p1']}:8080"])  # fmt: skip
    try:
        seen = tcp_peer(bed.p0, bed.p1, (bed.ips["p1"], 8080), connect=("10.96.0.10", 80))
        assert seen == gw_ip
    finally:
        bed.n0.run(["nft", "delete table ip kpt"])

    # Tenants stay apart through the host; each still has its way out.
    assert tcp_peer(bed.p0, bed.r0, (bed.ips["r0"], 8083), timeout=1.0) is None
    assert tcp_peer(bed.r0, bed.p0, (bed.ips["p0"], 8084), timeout=1.0) is None
    assert tcp_peer(bed.r0, bed.out, (OUTSIDE, 8085)) == "198.19.0.1"

    # The gateway is a port like any: counted in the API and in the node's counters.
    gw = _gateway(bed.d0, 100)
    assert gw["counters"]["rx_packets"] > 0 and gw["counters"]["tx_packets"] > 0
    ports = bed.d0.client.counters()["ports"]
    assert any(p.get("ifname") == "ovg100" for p in ports.values()), ports
    # CNI's ipMasq asks that the network masquerade: this one does.
    extra = bed.cluster.topo.add_netns("p2")
    conf = {"cniVersion": "1.0.0", "name": "p2", "type": "overlay-cni", "vni": 100,
            "socket": bed.d0.socket, "ipMasq": True}  # fmt: skip
    cni("ADD", conf, cid="p2", netns=extra.path).success()
    assert tcp_peer(extra, bed.out, (OUTSIDE, 8086)) == "198.19.0.1"
    # ...but it is not a pod: endpoint listings show pods only.
    assert all(e["name"] != "gateway" for e in bed.d0.client.endpoints())


def _slow_transfer(client_ns: Netns, server_ns: Netns, seconds: float) -> dict[str, Any]:
    """A TCP stream paced over ``seconds`` (so that it spans a restart); what arrived."""
    server = server_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((OUTSIDE, 0))
    server.listen(1)
    server.settimeout(seconds + 30)
    port = server.getsockname()[1]
    got = hashlib.sha256()
    result: dict[str, Any] = {"received": 0}

    def receive() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(seconds + 30)
                while data := conn.recv(1 << 16):
                    got.update(data)
                    result["received"] += len(data)
        except OSError as exc:
            result["error"] = repr(exc)

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    sent = hashlib.sha256()
    client = client_ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(seconds + 30)
    client.connect((OUTSIDE, port))
    chunk = os.urandom(32 << 10)
    end = time.monotonic() + seconds
    nbytes = 0
    while time.monotonic() < end:
        client.sendall(chunk)
        sent.update(chunk)
        nbytes += len(chunk)
        time.sleep(0.01)
    client.close()
    t.join(seconds + 30)
    server.close()
    result.update(sent=nbytes, ok=got.digest() == sent.digest())
    return result


def test_a_restart_keeps_an_egress_transfer_going(bed: Bed) -> None:
    nft = Nft(bed.n0.path)
    before = nft.table("inet", "overlay")
    assert before is not None
    done: dict[str, Any] = {}
    t = threading.Thread(target=lambda: done.update(_slow_transfer(bed.p0, bed.out, 6.0)))
    t.start()
    time.sleep(1.0)
    bed.d0.stop()
    # The rules stay while overlayd is away (conntrack keeps the translation).
    assert nft.table("inet", "overlay") is not None
    bed.d0.start()
    t.join(60)
    assert done.get("ok") and done["received"] == done["sent"] > 0, done
    assert _gateway(bed.d0, 100)["ifname"] == "ovg100"
    rules = [o["rule"]["comment"] for o in nft.table("inet", "overlay") or [] if "rule" in o]
    assert f"egress ovg100 {BLUE['cidr']}" in rules


def test_a_removed_network_takes_its_gateway_and_rules(bed: Bed) -> None:
    cni("DEL", {"cniVersion": "1.0.0", "name": "r0", "type": "overlay-cni", "vni": 200,
                "socket": bed.d0.socket}, cid="r0", netns=bed.r0.path).success()  # fmt: skip
    cfg = bed.cluster.config(0)
    cfg["networks"] = [BLUE]
    bed.d0.write_config(cfg)
    assert bed.d0.client.reload()["networks_removed"] == [200]
    assert "ovg200" not in bed.n0.links()
    rules = [o["rule"]["comment"] for o in Nft(bed.n0.path).table("inet", "overlay") or []
             if "rule" in o]  # fmt: skip
    assert rules and not any("ovg200" in r for r in rules)
    assert ping(bed.p0, OUTSIDE).ok  # the other network keeps its way out


def test_gateways_with_overlapping_ranges_are_refused_by_name() -> None:
    text = """
[node]
name = "a"
underlay = "198.18.0.1"
[[networks]]
vni = 100
tenant = "blue"
cidr = "10.244.0.0/16"
[[networks]]
vni = 200
tenant = "red"
cidr = "10.244.0.0/16"
"""
    with pytest.raises(ConfigError) as info:
        cfgmod.parse(text)
    assert info.value.field == "networks[1].gateway" and '"isolated" puts' in str(info.value)
    cfgmod.parse(text + "gateway = false\n")  # one without a gateway: served


GREEN: dict[str, Any] = {"vni": 300, "tenant": "green", "cidr": "10.244.0.0/16",
                         "gateway": "isolated"}  # fmt: skip


def test_tenants_with_overlapping_addresses_both_get_out_and_never_meet(
    overlay_daemons: Callable[..., DaemonCluster],
) -> None:
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE, GREEN])
    t = cluster.topo
    n0 = cluster.node_ns[0]
    out = t.add_netns("out")
    t.veth(n0, out, "198.19.0.1/24", f"{OUTSIDE}/24", name_a="wan0", name_b="wan0")
    cluster.start()
    d0 = cluster.daemons[0]
    blue, green = t.add_netns("blue"), t.add_netns("green")
    ip_blue, ip_green = _add(d0, blue, 100, "blue"), _add(d0, green, 300, "green")
    # Same range, each network its own lease: possibly the very same address.
    assert ipaddress.ip_address(ip_green) in ipaddress.ip_network("10.244.0.0/16")
    gw = _gateway(d0, 300)
    assert gw["placement"] == "isolated" and gw["netns"].endswith(
        f"{os.path.basename(n0.path)}-r300"
    )
    assert "isolated" in VIEWS["networks"][1](d0.client.networks())

    # Both reach the outside, masqueraded to the node.
    assert tcp_peer(blue, out, (OUTSIDE, 8090)) == "198.19.0.1"
    assert tcp_peer(green, out, (OUTSIDE, 8091)) == "198.19.0.1"
    assert tcp_transfer(green, out, OUTSIDE, 2 << 20).ok
    # Never each other: blue's pod listens; green connects to that address.
    if ip_blue != ip_green:
        assert tcp_peer(green, blue, (ip_blue, 8092), timeout=1.0) is None
        assert tcp_peer(blue, green, (ip_green, 8093), timeout=1.0) is None
    # Nothing new comes in to the isolated tenant, not even from the node.
    assert not ping(n0, ip_green, count=2, timeout=1).ok or ip_green == ip_blue

    # Removing the network removes its router namespace and the node's rules for it.
    cni("DEL", {"cniVersion": "1.0.0", "name": "green", "type": "overlay-cni", "vni": 300,
                "socket": d0.socket}, cid="green", netns=green.path).success()  # fmt: skip
    cfg = cluster.config(0)
    cfg["networks"] = [BLUE]
    d0.write_config(cfg)
    assert d0.client.reload()["networks_removed"] == [300]
    assert not os.path.exists(gw["netns"])
    assert "ovx300" not in n0.links()
    rules = [o["rule"]["comment"] for o in Nft(n0.path).table("inet", "overlay") or []
             if "rule" in o]  # fmt: skip
    assert not any("ovx300" in r for r in rules)
    assert tcp_peer(blue, out, (OUTSIDE, 8094)) == "198.19.0.1"
