"""The embedding API: every bad argument is refused by name and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from overlay import Encap, GeneveOption, Node
from overlay.errors import ConfigError, ConflictError, NotFoundError
from overlay.testing.netns import Netns, Topology

pytestmark = pytest.mark.root


@pytest.fixture
def node_ns(overlay_topology: Topology) -> Netns:
    n0, n1 = overlay_topology.add_netns("n0"), overlay_topology.add_netns("n1")
    overlay_topology.veth(n0, n1)
    return n0


@pytest.fixture
def node(node_ns: Netns) -> Iterator[Node]:
    with Node("198.18.0.1", Encap.VXLAN, netns=node_ns.path) as n:
        yield n


def state(node: Node) -> Any:
    """Everything a caller can observe of a node's configuration."""
    return (
        sorted((e.vni, e.mac, e.kind, e.vtep) for e in node.fdb()),
        {
            vni: (
                n.tenant,
                sorted(str(v) for v in n.vteps),
                [p.ifname for p in n.ports],
                sorted(n.remotes),
            )
            for vni, n in node.networks.items()
        },
    )


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"underlay": "198.18.0.300"}, "underlay"),
        ({"underlay": "198.18.0.1", "encap": "vxlan"}, "encap"),
        ({"underlay": "198.18.0.1", "port": 70000}, "port"),
        ({"underlay": "198.18.0.1", "mtu": 100}, "mtu"),
        ({"underlay": "198.18.0.1", "netns": "/nonexistent/netns"}, "netns"),
        ({"underlay": "198.18.0.1", "source_ports": (5000, 4000)}, "source_ports"),
        ({"underlay": "198.18.0.1", "workers": 99}, "workers"),
    ],
)
def test_node_config_errors_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Node(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)


def test_underlay_address_not_on_the_node_is_refused(node_ns: Netns) -> None:
    with pytest.raises(ConfigError, match="underlay"):
        Node("198.18.0.77", netns=node_ns.path)


def test_bad_network_arguments_are_refused_and_change_nothing(node: Node) -> None:
    node.add_network(100, "blue")
    before = state(node)
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"vni": 1 << 24, "tenant": "blue"}, ConfigError, "vni"),
        ({"vni": -1, "tenant": "blue"}, ConfigError, "vni"),
        ({"vni": "100", "tenant": "blue"}, ConfigError, "vni"),
        ({"vni": 200, "tenant": ""}, ConfigError, "tenant"),
        ({"vni": 200, "tenant": "bad tenant!"}, ConfigError, "tenant"),
        ({"vni": 200, "tenant": "blue\n"}, ConfigError, "tenant"),  # `$` matches before "\n"
        ({"vni": 100, "tenant": "red"}, ConflictError, "vni=100"),
        (
            {"vni": 200, "tenant": "red", "geneve_options": [GeneveOption(1, 1, b"abcd")]},
            ConfigError,
            "geneve_options",
        ),
    ]
    for kwargs, exc, text in bad:
        with pytest.raises(exc, match=text):
            node.add_network(**kwargs)
    assert state(node) == before


def test_bad_port_arguments_are_refused_and_change_nothing(node: Node) -> None:
    blue = node.add_network(100, "blue")
    blue.add_port("02:00:00:00:01:02", ["10.244.1.2/24"], ifname="ovtp0")
    blue.add_remote("02:00:00:00:02:02", "198.18.0.2", "10.244.1.3")
    before = state(node)
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"mac": "02:00:00:00:01"}, ConfigError, "mac"),
        ({"mac": "zz:00:00:00:01:03"}, ConfigError, "mac"),
        ({"mac": "01:00:5e:00:00:01"}, ConfigError, "unicast"),
        ({"mac": "00:00:00:00:00:00"}, ConfigError, "unicast"),
        ({"mac": "02:00:00:00:01:02"}, ConflictError, "mac"),  # a local port's
        ({"mac": "02:00:00:00:02:02"}, ConflictError, "mac"),  # a remote's
        ({"mac": "02:00:00:00:01:03", "ips": ["10.244.1.2/24"]}, ConflictError, "in use"),
        ({"mac": "02:00:00:00:01:03", "ips": ["10.244.1.3/24"]}, ConflictError, "in use"),
        ({"mac": "02:00:00:00:01:03", "ips": ["10.244.1.999/24"]}, ConfigError, "ips"),
        (
            {"mac": "02:00:00:00:01:03", "ips": ["10.244.1.8/24", "10.244.1.8/24"]},
            ConflictError,
            "in use",
        ),
        ({"mac": "02:00:00:00:01:03", "ifname": "way-too-long-ifname"}, ConfigError, "ifname"),
        ({"mac": "02:00:00:00:01:03", "ifname": "eth0\n"}, ConfigError, "ifname"),
        ({"mac": "02:00:00:00:01:03", "ifname": ".."}, ConfigError, "ifname"),
        ({"mac": "02:00:00:00:01:03", "ifname": "ovtp0"}, ConflictError, "ovtp0"),
    ]
    for kwargs, exc, text in bad:
        with pytest.raises(exc, match=text):
            blue.add_port(**kwargs)
    assert state(node) == before


def test_bad_peer_arguments_are_refused_and_change_nothing(node: Node) -> None:
    blue = node.add_network(100, "blue")
    blue.add_port("02:00:00:00:01:02", ["10.244.1.2/24"])
    before = state(node)
    with pytest.raises(ConfigError, match="vtep"):
        blue.add_vtep("not-an-address")
    with pytest.raises(ConfigError, match="vtep"):
        blue.add_vtep("2001:2::1")  # IPv6 VTEP on an IPv4 underlay
    with pytest.raises(ConfigError, match="port"):
        blue.add_vtep("198.18.0.2", port=0)
    with pytest.raises(ConflictError, match="local port"):
        blue.add_remote("02:00:00:00:01:02", "198.18.0.2")
    with pytest.raises(ConflictError, match="in use"):
        blue.add_remote("02:00:00:00:02:02", "198.18.0.2", "10.244.1.2")
    with pytest.raises(ConfigError, match="ip"):
        blue.add_remote("02:00:00:00:02:02", "198.18.0.2", "10.244.1")
    with pytest.raises(NotFoundError):
        blue.remove_remote("02:00:00:00:09:09")
    with pytest.raises(NotFoundError):
        node.network(999)
    assert state(node) == before


def test_port_moves_into_a_pod_namespace_configured(overlay_topology: Topology, node: Node) -> None:
    pod = overlay_topology.add_netns("pod", ipv6=True)
    blue = node.add_network(100, "blue")
    port = blue.add_port("02:00:00:00:01:02", ["10.244.1.2/24", "2001:2::2/64"])
    port.move_to_netns(pod.path, "eth0", gateway="10.244.1.1")
    info = pod.link_info("eth0")
    assert info.mac == "02:00:00:00:01:02"
    assert info.mtu == 1450 == node.pod_mtu()
    assert info.state == "up"
    assert {"10.244.1.2/24", "2001:2::2/64"} <= set(info.addresses)
    with pod.ipr() as ipr:
        gws = [r.get("RTA_GATEWAY") for r in ipr.get_default_routes(family=2)]
    assert gws == ["10.244.1.1"]
    with pytest.raises(ConfigError, match="netns"):
        port.move_to_netns("/nonexistent/netns")
    with pytest.raises(ConfigError, match="mtu"):
        port.move_to_netns(pod.path, mtu=9000)


def test_geneve_pod_mtu_accounts_for_options(node_ns: Netns) -> None:
    with Node("198.18.0.1", Encap.GENEVE, netns=node_ns.path) as n:
        plain = n.add_network(1, "t")
        opt = n.add_network(2, "t", geneve_options=[GeneveOption(0x0102, 0x80, b"\0" * 8)])
        assert n.pod_mtu(plain) == 1450
        assert n.pod_mtu(opt) == 1450 - 12


def test_removing_a_port_removes_its_tap_and_entries(node: Node, node_ns: Netns) -> None:
    blue = node.add_network(100, "blue")
    port = blue.add_port("02:00:00:00:01:02", ["10.244.1.2/24"], ifname="ovtp1")
    assert "ovtp1" in node_ns.links()
    port.remove()
    assert "ovtp1" not in node_ns.links()
    assert node.fdb() == []
    node.remove_network(100)
    assert node.networks == {}


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_events_reach_an_asyncio_loop(
    node: Node, overlay_topology: Topology, loop_kind: str
) -> None:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    pod = overlay_topology.add_netns("pod")
    blue = node.add_network(100, "blue")
    blue.add_vtep("198.18.0.2")
    port = blue.add_port("02:00:00:00:01:02", ["10.244.1.2/24"])
    port.move_to_netns(pod.path)
    node.start()
    got: list[Any] = []

    async def main() -> None:
        done = asyncio.Event()

        def on_event(ev: Any) -> None:
            got.append(ev)
            if any(e.kind == "mac_seen" for e in got):
                done.set()

        node.watch_events(asyncio.get_running_loop(), on_event)
        # The pod's first frames (ARP for a neighbour) make the node report its MAC.
        pod.popen(["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.244.1.9"])
        await asyncio.wait_for(done.wait(), 5)
        asyncio.get_running_loop().remove_reader(node.event_fd)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    seen = [e for e in got if e.kind == "mac_seen"]
    assert seen[0].mac == "02:00:00:00:01:02" and seen[0].vni == 100
