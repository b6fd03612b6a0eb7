"""podman end to end: real containers on two overlayd nodes, attached by overlay-cni.

Each node is a real overlayd in its namespace (``overlay.testing.daemon``) and a
podman of its own (``overlay.testing.podman``: Debian's podman 4.3, its CNI
backend, runc, a busybox image) whose network ``blue`` is the README's
``examples/podman/overlay.conflist`` with ``socket`` set to that node's overlayd,
as a real cluster's nodes are set up.

* Containers on two nodes ping both ways and move a 4 MiB file over HTTP,
  checked by its SHA-256; podman's record, the container's interface and
  overlayd's attachment agree on the address and the MAC it derives.
* ``podman restart`` keeps the address and the MAC (even when a lower address
  was freed meanwhile), and the peer reaches the container with its very first
  packet afterwards: no frame lost to ``unknown_destination``.
* ``podman run --ip X --mac-address Y`` gets exactly those, across a restart
  too; an address outside the node's subnet, and a MAC of the range kept for
  derived MACs, are refused with a message naming them and what is accepted.
* ``podman stop``, ``rm`` and ``rm -f`` each release the attachment in
  overlayd; ``start`` after ``stop`` attaches again; podman's namespaces and
  libcni's cached results go with the containers.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlay.control.ipam import mac_of
from overlay.testing.daemon import EXAMPLES_DIR, DaemonCluster, Overlayd
from overlay.testing.podman import (
    IDLE,
    IMAGE,
    Container,
    PodmanError,
    PodmanNode,
    unavailable_reason,
)

REASON = unavailable_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

BLUE: dict[str, Any] = {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"}
EXAMPLE = Path(EXAMPLES_DIR) / "podman"

Nodes = tuple[DaemonCluster, list[PodmanNode]]


@pytest.fixture
def nodes(overlay_daemons: Callable[..., DaemonCluster], tmp_path: Path) -> Iterator[Nodes]:
    """Two overlayd nodes, each with a podman attaching through its socket; every
    container is removed (while the daemons still run) after the test."""
    cluster = overlay_daemons(networks=[BLUE])
    cluster.start()
    made: list[PodmanNode] = []
    try:
        for i, daemon in enumerate(cluster.daemons):
            node = PodmanNode(tmp_path / f"podman{i}", daemon.socket, name=f"n{i}")
            made.append(node)
            conf = json.loads((EXAMPLE / "overlay.conflist").read_text())
            conf["plugins"][0]["socket"] = daemon.socket
            node.write_conflist(conf)
        yield cluster, made
    finally:
        for node in made:
            node.close()


def _attached(daemon: Overlayd) -> dict[str, tuple[str, str]]:
    """overlayd's attachments: container ID -> (address, MAC)."""
    return {a["container_id"]: (a["ips"][0], a["mac"]) for a in daemon.client.attachments()}


def _subnet(daemon: Overlayd) -> ipaddress.IPv4Network:
    """The node's subnet lease of the blue network."""
    (net,) = daemon.client.networks()
    return ipaddress.IPv4Network(net["subnet"])


def _ip(container: Container) -> str:
    return str(ipaddress.ip_interface(container.interface()[0]).ip)


def _unknown_destination(daemon: Overlayd) -> int:
    return int(daemon.client.counters()["drops"].get("unknown_destination", 0))


def test_containers_on_two_nodes_ping_and_move_a_file_over_tcp(nodes: Nodes) -> None:
    cluster, (n0, n1) = nodes
    client, web = n0.run("client"), n1.run("web")

    # podman's record (the 1.0.0 result it parsed), the container's kernel and
    # overlayd agree; the address is of the node's subnet, the MAC derived from it.
    for ctr, daemon in ((client, cluster.daemons[0]), (web, cluster.daemons[1])):
        recorded = ctr.network()
        address, mac = ctr.interface()
        assert address == f"{recorded['IPAddress']}/{recorded['IPPrefixLen']}"
        assert mac == recorded["MacAddress"] == mac_of(address)
        assert ipaddress.ip_interface(address).ip in _subnet(daemon)
        assert _attached(daemon) == {ctr.id: (address, mac)}
        (attachment,) = daemon.client.attachments()
        assert attachment["netns"] == ctr.inspect()["NetworkSettings"]["SandboxKey"]

    assert client.ping(_ip(web)) and web.ping(_ip(client))
    web.exec("sh", "-c", "mkdir /www && dd if=/dev/urandom of=/www/blob bs=4096 count=1024")
    web.exec("httpd", "-p", "8080", "-h", "/www")  # listening when this returns
    sent = web.exec("sha256sum", "/www/blob").split()[0]
    url = f"http://{_ip(web)}:8080/blob"
    received = client.exec("sh", "-c", f"wget -q -O - {url} | sha256sum").split()[0]
    assert received == sent


def test_restart_keeps_address_and_mac_and_the_peer_reaches_it_at_once(nodes: Nodes) -> None:
    cluster, (n0, n1) = nodes
    first, kept, third = (n0.run(name) for name in ("first", "kept", "third"))
    peer = n1.run("peer")
    before = kept.interface()
    assert peer.ping(_ip(kept))  # the peer's ARP cache and its node's FDB know it
    first.rm(force=True)  # frees the lowest address of the node: a restart must not take it

    for how in ("restart", "stop and start"):
        if how == "restart":
            kept.restart()
        else:
            kept.stop()
            kept.start()
        assert kept.interface() == before
        assert _attached(cluster.daemons[0])[kept.id] == before
        drops = _unknown_destination(cluster.daemons[0])
        assert peer.ping(_ip(kept))  # one echo request, answered: the first packet arrives
        assert _unknown_destination(cluster.daemons[0]) == drops
        assert kept.ping(_ip(peer)) and third.ping(_ip(kept))

    # The freed address goes to the next new container.
    fresh = n0.run("fresh")
    assert ipaddress.ip_interface(fresh.interface()[0]).ip == _subnet(cluster.daemons[0])[2]


def test_ip_and_mac_asked_for_are_given_and_bad_ones_are_refused(nodes: Nodes) -> None:
    cluster, (n0, n1) = nodes
    subnet = _subnet(cluster.daemons[0])
    address, mac = f"{subnet[77]}/16", "02:aa:bb:cc:dd:01"
    pinned = n0.run("pinned", "--ip", str(subnet[77]), "--mac-address", mac)
    peer = n1.run("peer")
    assert pinned.interface() == (address, mac)
    assert pinned.network()["MacAddress"] == mac
    assert _attached(cluster.daemons[0])[pinned.id] == (address, mac)
    assert peer.ping(str(subnet[77])) and pinned.ping(_ip(peer))
    pinned.restart()  # podman asks again: the same address and MAC
    assert pinned.interface() == (address, mac)
    assert peer.ping(str(subnet[77]))

    # An address of the other node's subnet: refused, naming it and the node's subnet.
    elsewhere = _subnet(cluster.daemons[1])[9]
    with pytest.raises(PodmanError) as refused:
        n0.run("astray", "--ip", str(elsewhere))
    assert f"CNI_ARGS IP={elsewhere} refused by overlayd" in refused.value.stderr
    assert f"a pod address of subnet {subnet}" in refused.value.stderr
    # A MAC of the range overlay keeps for MACs derived from addresses.
    with pytest.raises(PodmanError) as refused:
        n0.run("derived", "--mac-address", "0a:58:0a:f4:00:09")
    assert "CNI_ARGS MAC=0a:58:0a:f4:00:09 refused by overlayd" in refused.value.stderr
    assert "0a:58:00:00:00:00/16" in refused.value.stderr
    assert set(_attached(cluster.daemons[0])) == {pinned.id}


def test_stop_rm_and_rm_force_release_the_attachment(nodes: Nodes) -> None:
    cluster, (n0, _) = nodes
    daemon = cluster.daemons[0]
    stopped, removed, forced = (n0.run(name) for name in ("stopped", "removed", "forced"))
    assert set(_attached(daemon)) == {stopped.id, removed.id, forced.id}

    stopped.stop()
    assert set(_attached(daemon)) == {removed.id, forced.id}
    stopped.start()  # attached again, in its new namespace
    assert set(_attached(daemon)) == {stopped.id, removed.id, forced.id}
    (again,) = (a for a in daemon.client.attachments() if a["container_id"] == stopped.id)
    assert again["netns"] == stopped.inspect()["NetworkSettings"]["SandboxKey"]

    removed.stop()
    removed.rm()
    forced.rm(force=True)  # running: podman kills it and tears its network down
    assert set(_attached(daemon)) == {stopped.id}
    stopped.rm(force=True)
    assert _attached(daemon) == {} and n0.ids() == []
    assert n0.leftovers() == []  # podman removed the namespaces and libcni's cache


def test_podman_takes_the_example_containers_conf(nodes: Nodes, tmp_path: Path) -> None:
    """podman itself reads the [network] and [engine] of examples/podman/containers.conf
    (its paths moved to the node's): the CNI backend, runc, the list as a network,
    and the list as the default network of a container run without --network."""
    cluster, (n0, _) = nodes
    example = tomllib.loads((EXAMPLE / "containers.conf").read_text())
    network = dict(example["network"])
    assert network["network_config_dir"] == "/etc/cni/net.d"
    assert "/opt/cni/bin" in network["cni_plugin_dirs"]  # where install-cni writes
    network["network_config_dir"] = str(n0.net_dir)
    network["cni_plugin_dirs"] = [
        n0.cni_path[0] if d == "/opt/cni/bin" else d for d in network["cni_plugin_dirs"]
    ]
    conf = tmp_path / "containers.conf"
    conf.write_text(n0.containers_conf(network, example["engine"]))
    env = {"CONTAINERS_CONF": str(conf)}

    info = json.loads(n0.podman("info", "--format", "json", env=env).stdout)
    assert info["host"]["networkBackend"] == "cni"
    assert info["host"]["ociRuntime"]["name"] == "runc"
    listed = json.loads(n0.podman("network", "ls", "--format", "json", env=env).stdout)
    assert ("blue", "overlay-cni") in {(n["name"], n["driver"]) for n in listed}
    argv = ("run", "-d", "--pull", "never", "--cgroup-parent", n0.cgroup_parent)
    cid = n0.podman(*argv, "--name", "plain", IMAGE, *IDLE, env=env).stdout.strip()
    n0.remember()
    assert set(_attached(cluster.daemons[0])) == {cid}
