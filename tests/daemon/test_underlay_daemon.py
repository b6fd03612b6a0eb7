"""overlayd with an underlay network (``mode = "underlay"``): the node's underlay
interface becomes the network's uplink, pods get addresses from the network's
cidr (the physical segment's range) and sit on that segment; a plain host there
reaches them directly, and pods on two nodes reach each other over the wire.

Three real overlayd nodes on one bridge (198.18.0.1-3, memory store with static
peers), a plain host h on the same bridge that runs nothing of ours, holding
198.18.1.1: the segment carries two IP ranges, the nodes' and the pods'
(198.18.1.0/24; a first host of a subnet lease is never a pod's, so h's
address is never handed out).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from overlay.daemon import config as cfgmod
from overlay.errors import ConfigError
from overlay.testing.daemon import DaemonCluster, Overlayd, cni
from overlay.testing.netns import Netns
from overlay.testing.traffic import ping, tcp_transfer

pytestmark = [pytest.mark.root]

HOST = "198.18.1.1"
PHYS: dict[str, Any] = {
    "vni": 300,
    "tenant": "phys",
    "cidr": "198.18.1.0/24",
    "subnet_prefix": 26,
    "mode": "underlay",
}


def _add(d: Overlayd, pod: Netns, name: str) -> str:
    conf = {"cniVersion": "1.0.0", "name": name, "type": "overlay-cni", "vni": 300,
            "socket": d.socket}  # fmt: skip
    out = cni("ADD", conf, cid=name, netns=pod.path, cni_args=f"K8S_POD_NAME={name}").success()
    return str(out["ips"][0]["address"])


@pytest.fixture
def cluster(overlay_daemons: Callable[..., DaemonCluster]) -> DaemonCluster:
    c = overlay_daemons(n_nodes=3, networks=[PHYS])
    t = c.topo
    sw = t.namespaces[t.prefix + "sw"]
    h = t.add_netns("h")
    t.veth(sw, h, None, f"{HOST}/24", name_a="ph", name_b="ul0")
    sw.link_set("ph", master=sw.ifindex("br0"))
    c.start()
    return c


def test_a_plain_host_reaches_pods_of_an_underlay_network(cluster: DaemonCluster) -> None:
    t = cluster.topo
    h = t.namespaces[t.prefix + "h"]
    p0, p1 = t.add_netns("p0"), t.add_netns("p1")
    d0, d1 = cluster.daemons[0], cluster.daemons[1]
    a0, a1 = _add(d0, p0, "p0"), _add(d1, p1, "p1")
    # Addresses from the cidr, with the cidr's prefix: the segment's own.
    for a in (a0, a1):
        iface = ipaddress.ip_interface(a)
        assert iface.network == ipaddress.ip_network(PHYS["cidr"]), a
        assert str(iface.ip) != HOST
    ip0, ip1 = a0.split("/")[0], a1.split("/")[0]
    # The plain host reaches the pods and they reach it, with bytes checked.
    assert ping(h, ip0).ok and ping(p0, HOST).ok
    assert tcp_transfer(h, p0, ip0, 4 << 20).ok
    assert tcp_transfer(p0, h, HOST, 4 << 20).ok
    # Pods on two nodes, over the wire, not a tunnel.
    assert ping(p0, ip1).ok
    assert tcp_transfer(p1, p0, ip0, 4 << 20).ok
    counters = d0.client.counters()
    nets = counters["networks"]
    phys = nets.get("300", nets.get(300))
    assert phys["encap_packets"] == 0 and phys["decap_packets"] == 0, phys
    # The uplink is the node's interface, a port with its counters; no VTEP, no gateway.
    ports = counters["ports"]
    uplink = [p for p in ports.values() if p.get("ifname") == "ul0"]
    assert uplink and uplink[0]["rx_packets"] > 0 and uplink[0]["tx_packets"] > 0, ports
    [net] = [n for n in d0.client.networks() if n["vni"] == 300]
    assert not net.get("gateway"), net
    assert not any(e.get("vtep") for e in d0.client.fdb(vni=300)), d0.client.fdb(vni=300)


def test_an_underlay_network_refuses_a_gateway_by_name() -> None:
    base = '[node]\nname = "a"\nunderlay = "198.18.0.1"\n[store]\nkind = "memory"\n'
    net = '[[networks]]\nvni = 300\ntenant = "phys"\ncidr = "198.18.1.0/24"\nmode = "underlay"\n'
    assert cfgmod.parse(base + net).networks[0].gateway == "none"
    with pytest.raises(ConfigError, match=r"networks\[0\]\.gateway.*segment"):
        cfgmod.parse(base + net + "gateway = true\n")
