"""overlayd's underlay networks as an operator sees them: the uplink in
``overlay networks`` (API and CLI) and in the metrics (a port named after its
interface), the network's mode in the metrics, pods at the segment's full MTU,
and ``[[networks]] router``: the pods' default route through the physical
segment's router to the outside world.

Three overlayd nodes on one bridge (198.18.0.1-3, memory store with static
peers); on the same bridge a plain host h (198.18.1.1) and a router r
(198.18.1.65, the first host of the second /26 node subnet: never a pod's)
whose other side is an outside host o (198.19.0.1). Nothing but the
daemons runs overlay code.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from overlay.daemon import config as cfgmod
from overlay.errors import ConfigError
from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.daemon import DaemonCluster, Overlayd, cni
from overlay.testing.netns import Netns
from overlay.testing.traffic import ping, tcp_transfer

pytestmark = [pytest.mark.root]

HOST, ROUTER, OUTSIDE = "198.18.1.1", "198.18.1.65", "198.19.0.1"
PHYS: dict[str, Any] = {
    "vni": 300,
    "tenant": "phys",
    "cidr": "198.18.1.0/24",
    "subnet_prefix": 26,
    "mode": "underlay",
    "router": ROUTER,
}


def _add(d: Overlayd, pod: Netns, name: str) -> str:
    conf = {"cniVersion": "1.0.0", "name": name, "type": "overlay-cni", "vni": 300,
            "socket": d.socket}  # fmt: skip
    out = cni("ADD", conf, cid=name, netns=pod.path, cni_args=f"K8S_POD_NAME={name}").success()
    return str(out["ips"][0]["address"]).split("/")[0]


def _metrics(d: Overlayd) -> str:
    for line in d.log().splitlines():
        if "metrics on http://" in line:
            addr = line.split("metrics on http://", 1)[1].split("/", 1)[0]
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
                return str(r.read().decode())
    raise AssertionError("overlayd logged no metrics address:\n" + d.log()[-2000:])


def _link_mtu(ns: Netns, ifname: str) -> int:
    out = ns.run(["ip", "-o", "link", "show", ifname]).stdout.split()
    return int(out[out.index("mtu") + 1])


def test_underlay_pods_route_through_the_router_at_full_mtu_and_the_uplink_is_shown(
    overlay_daemons: Any, tmp_path: Path
) -> None:
    cluster: DaemonCluster = overlay_daemons(
        n_nodes=3,  # three nodes: the underlay is a bridge others can join
        networks=[PHYS],
        extra={"health": {"enabled": False}, "metrics": {"address": "127.0.0.1:0"}},
    )
    t = cluster.topo
    sw = t.namespaces[t.prefix + "sw"]
    h, r, o = t.add_netns("h"), t.add_netns("r"), t.add_netns("o")
    t.veth(sw, h, None, f"{HOST}/24", name_a="ph", name_b="ul0")
    t.veth(sw, r, None, f"{ROUTER}/24", name_a="pr", name_b="ul0")
    for port in ("ph", "pr"):
        sw.link_set(port, master=sw.ifindex("br0"))
    t.veth(r, o, "198.19.0.254/24", f"{OUTSIDE}/24", name_a="out0", name_b="eth0")
    r.sysctl("net.ipv4.ip_forward", 1)
    o.route_add("198.18.1.0/24", gateway="198.19.0.254")
    cluster.start()
    d0 = cluster.daemons[0]
    p0 = t.add_netns("p0")
    a0 = _add(d0, p0, "p0")

    # The router of the definition is the pod's default route; the outside is
    # reached through it, both ways, bytes checked.
    assert f"default via {ROUTER} dev eth0" in p0.run(["ip", "-4", "route"]).stdout
    assert ping(p0, OUTSIDE).ok and ping(o, a0).ok
    assert tcp_transfer(p0, o, OUTSIDE, 4 << 20).ok
    assert tcp_transfer(o, p0, a0, 4 << 20).ok

    # No tunnel on the segment: the full MTU, 1500-byte packets with DF both
    # ways, TCP at MSS 1460.
    [net] = [n for n in d0.client.networks() if n["vni"] == 300]
    assert net["pod_mtu"] == 1500 == _link_mtu(p0, "eth0")
    assert ping(p0, HOST, size=1472, dont_fragment=True).ok
    assert ping(h, a0, size=1472, dont_fragment=True).ok
    pcap = tmp_path / "h.pcap"
    with Capture(h, "ul0", path=pcap):
        assert tcp_transfer(h, p0, a0, 4 << 20).ok
    rows = tshark_fields(pcap, ["tcp.options.mss_val"], display_filter="tcp.flags.syn == 1")
    assert {row["tcp.options.mss_val"] for row in rows} == {"1460"}

    # The uplink in the API (interface, MAC, counters) and the CLI; the router.
    up = net["uplink"]
    assert up["ifname"] == "ul0" and up["counters"]["rx_packets"] > 0, up
    assert net["router"] == ROUTER and net["mode"] == "underlay"
    # The other nodes' pods are on the segment: no tunnel, no route of ours.
    paths = {(p["name"], q["path"]) for p in d0.client.peers() for q in p["paths"]}
    assert paths == {("node1", "segment"), ("node2", "segment")}, paths
    text = subprocess.run(
        [sys.executable, "-m", "overlay.cli", "--socket", d0.socket, "networks"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f"uplink ul0 router {ROUTER}" in text, text
    # The metrics: the uplink is a port under its interface's name; the mode.
    metrics = _metrics(d0)
    port_rx = [
        line
        for line in metrics.splitlines()
        if line.startswith("overlay_port_packets_total{")
        and 'ifname="ul0"' in line
        and 'direction="rx"' in line
        and 'vni="300"' in line
    ]
    assert port_rx and float(port_rx[0].rsplit(" ", 1)[1]) > 0, port_rx
    assert 'overlay_network_mode{mode="underlay",tenant="phys",vni="300"} 1.0' in metrics


def test_a_router_is_refused_outside_the_cidr_on_a_pods_address_or_in_another_mode() -> None:
    base = '[node]\nname = "a"\nunderlay = "198.18.0.1"\n[store]\nkind = "memory"\n'
    net = (
        '[[networks]]\nvni = 300\ntenant = "phys"\ncidr = "198.18.1.0/24"\n'
        'subnet_prefix = 26\nmode = "underlay"\n'
    )
    assert cfgmod.parse(base + net + f'router = "{ROUTER}"\n').networks[0].router == ROUTER
    assert cfgmod.parse(base + net).networks[0].router == ""
    for router, why in [
        ("198.18.2.1", "first host of one of the /26 node subnets"),
        ("198.18.1.254", "198.18.1.1, 198.18.1.65"),  # a pod may be given it
        ("2001:2::1", "first host"),
        ("router", "an address"),
    ]:
        with pytest.raises(ConfigError, match=why) as exc:
            cfgmod.parse(base + net + f'router = "{router}"\n')
        assert exc.value.field == "networks[0].router", exc.value
    routed = '[[networks]]\nvni = 100\ntenant = "blue"\ncidr = "10.244.0.0/16"\nmode = "routed"\n'
    with pytest.raises(ConfigError, match='none in mode "routed"') as exc:
        cfgmod.parse(base + routed + 'router = "10.244.0.1"\n')
    assert exc.value.field == "networks[0].router"
