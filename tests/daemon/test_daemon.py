"""overlayd end to end: real daemon processes on namespaced nodes, driven through
their Unix-socket API: attach pods, traffic across nodes, every view, reload
(SIGHUP), restart without losing a pod's interface, and start-up errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from overlay.daemon.api import MAX_HEADER
from overlay.daemon.client import ApiError, Client, DaemonUnavailable
from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.daemon import DaemonCluster, Overlayd, to_toml
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, tcp_transfer

pytestmark = [pytest.mark.root]


def _pod(topo: Topology, name: str) -> Netns:
    return topo.add_netns(name)


def _attach(c: Client, cid: str, ns: Netns, vni: int = 100, **kw: Any) -> dict[str, Any]:
    return c.attach({"container_id": cid, "ifname": "eth0", "netns": ns.path, "vni": vni} | kw)


def _ip(rec: dict[str, Any]) -> str:
    return rec["ips"][0].split("/")[0]


def _wait(cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _raw_request(path: str, size: int) -> tuple[int, dict[str, Any]]:
    """GET /v1/status over the Unix socket ``path`` with a request head (request line,
    headers, blank line) padded to ``size`` bytes: the answer's status and body."""
    head = b"GET /v1/status HTTP/1.1\r\nHost: overlayd\r\nX-Pad: "
    head += b"x" * (size - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == size
    answer = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        # Far over the limit the daemon answers and closes before reading it all:
        # the rest cannot be sent, and the end of its answer reads as a reset.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def _two_pods(overlay_topology: Topology, cl: DaemonCluster) -> tuple[Netns, Netns, dict, dict]:
    pa, pb = _pod(overlay_topology, "pa"), _pod(overlay_topology, "pb")
    a = _attach(cl.daemons[0].client, "ca", pa, name="pod-a")
    b = _attach(cl.daemons[1].client, "cb", pb, name="pod-b")
    return pa, pb, a, b


@pytest.mark.parametrize("store", ["memory", "etcd"])
def test_two_nodes_pods_talk_and_every_view_answers(
    overlay_topology: Topology, overlay_daemons: Any, store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("overlay_etcd").endpoint if store == "etcd" else "memory"
    cl = overlay_daemons(store=url)
    cl.start()
    pa, pb, a, b = _two_pods(overlay_topology, cl)
    assert a["mtu"] == 1450 and a["ipam"] == "node" and a["tenant"] == "blue"
    assert ping(pa, _ip(b), count=3).received == 3
    tr = tcp_transfer(pa, pb, _ip(b), 2_000_000)
    assert tr.ok, tr

    c0 = cl.daemons[0].client
    st = c0.status()
    assert st["ready"] and st["node"] == "node0" and st["store"]["connected"]
    assert st["attachments"] == 1 and st["peers"] == 1
    nets = c0.networks()
    assert [n["vni"] for n in nets] == [100] and nets[0]["vteps"] == ["198.18.0.2"]
    eps = c0.endpoints()
    mine = [e for e in eps if e["local"]]
    assert mine and mine[0]["container_id"] == "ca" and mine[0]["name"] == "pod-a"
    if store == "etcd":  # with a shared store, the peer's pod is known by name
        assert any(e["mac"] == b["mac"] and not e["local"] for e in eps)
    fdb = c0.fdb(vni=100)
    assert {e["mac"] for e in fdb} >= {a["mac"], b["mac"]}
    assert c0.attachments()[0]["container_id"] == "ca"
    one = c0.attachment("ca", "eth0")
    assert one["interface"]["exists"] and one["interface"]["mac"] == a["mac"]
    ctr = c0.counters()
    assert ctr["node"]["udp_tx_packets"] > 0 and ctr["node"]["tap_rx_frames"] > 0
    # Health probes cross the overlay both ways.
    peers = _wait(
        lambda: [p for p in c0.peers() if p["reachable"]], what="node1 reachable by probes"
    )
    assert peers[0]["name"] == "node1" and peers[0]["rtt_ms"] > 0
    assert c0.health()["ready"]

    # Detach: the pod's interface is gone, and a second DEL says not found.
    c0.detach("ca", "eth0")
    assert "eth0" not in pa.links()
    with pytest.raises(ApiError) as err:
        c0.detach("ca", "eth0")
    assert err.value.status == 404 and err.value.kind == "not_found"


def test_api_errors_name_the_field_and_change_nothing(
    overlay_topology: Topology, overlay_daemons: Any
) -> None:
    cl = overlay_daemons(n_nodes=1)
    cl.start()
    c = cl.daemons[0].client
    pa = _pod(overlay_topology, "pa")
    base = {"container_id": "x", "ifname": "eth0", "netns": pa.path, "vni": 100}
    cases = [
        ({k: v for k, v in base.items() if k != "vni"}, "vni"),
        ({**base, "vni": 7}, "vni"),
        ({**base, "netns": "/nope"}, "netns"),
        ({**base, "container_id": "-x"}, "container_id"),
        ({**base, "ifname": "a/b"}, "ifname"),
        ({**base, "ips": ["x"]}, "ips"),
        ({**base, "bogus": 1}, "bogus"),
    ]
    for body, field in cases:
        with pytest.raises(ApiError) as err:
            c.attach(body)
        assert err.value.status == 400 and err.value.field == field, (body, err.value)
    with pytest.raises(ApiError) as err:
        c.request("GET", "/v1/nothing")
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        c.request("PUT", "/v1/status")
    assert err.value.status == 405
    # Request headers: up to MAX_HEADER bytes are read; one byte more is a 413.
    d = cl.daemons[0]
    status, body = _raw_request(str(d.socket), MAX_HEADER)
    assert status == 200 and body["node"] == "node0"
    for size in (MAX_HEADER + 1, 20 * MAX_HEADER):
        status, body = _raw_request(str(d.socket), size)
        assert status == 413 and body["error"]["kind"] == "config", (size, body)
    assert c.status()["ready"]  # and the daemon serves on
    assert c.attachments() == [] and pa.links() == ["lo"]
    # A duplicate attachment is a conflict, and the first one is untouched.
    first = _attach(c, "x", pa)
    with pytest.raises(ApiError) as err:
        _attach(c, "x", pa)
    assert err.value.status == 409 and "DEL it first" in err.value.message
    assert c.attachment("x", "eth0")["mac"] == first["mac"]
    # An interface of that name in the pod already: a conflict, and it is left alone.
    overlay_topology.veth(pa, pa, None, None, name_a="eth1", name_b="eth1p")
    with pytest.raises(ApiError) as err:
        _attach(c, "z", pa, ifname="eth1")
    assert err.value.status == 409 and "eth1" in err.value.message
    assert "eth1" in pa.links() and [a["container_id"] for a in c.attachments()] == ["x"]
    # Delegated addresses are taken as given.
    pb = _pod(overlay_topology, "pb")
    got = _attach(c, "y", pb, ips=["10.244.200.9/24"], routes=[{"dst": "10.245.0.0/16"}])
    assert got["ips"] == ["10.244.200.9/24"] and got["ipam"] == "delegated"
    routes = pb.run(["ip", "-4", "route"]).stdout
    assert "10.245.0.0/16 dev eth0" in routes


def test_concurrent_attaches_are_all_served(
    overlay_topology: Topology, overlay_daemons: Any
) -> None:
    cl = overlay_daemons(n_nodes=1)
    cl.start()
    c = cl.daemons[0].client
    pods = [_pod(overlay_topology, f"p{i}") for i in range(8)]
    results: dict[int, Any] = {}

    def go(i: int) -> None:
        try:
            results[i] = _attach(c, f"c{i}", pods[i])
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, dict) for r in results.values()), results
    assert len({r["mac"] for r in results.values()}) == 8
    assert len({r["ips"][0] for r in results.values()}) == 8
    assert ping(pods[0], _ip(results[7]), count=2).received == 2


def _pinger(ns: Netns, dst: str, seconds: float) -> subprocess.Popen[str]:
    return ns.popen(
        ["ping", "-n", "-i", "0.05", "-w", f"{seconds:g}", dst],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _ping_stats(proc: subprocess.Popen[str]) -> tuple[int, int]:
    out, _ = proc.communicate(timeout=60)
    import re

    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("how", ["sigterm", "crash"])
def test_restart_keeps_pods_talking(
    overlay_topology: Topology, overlay_daemons: Any, how: str
) -> None:
    cl = overlay_daemons()
    cl.start()
    pa, pb, a, b = _two_pods(overlay_topology, cl)
    assert ping(pa, _ip(b), count=2).received == 2
    before = pa.link_info("eth0")
    pinger = _pinger(pa, _ip(b), 8)
    time.sleep(1.0)
    d0 = cl.daemons[0]
    if how == "sigterm":
        assert d0.stop() == 0
    else:
        d0.kill()
    assert "eth0" in pa.links()  # the pod keeps its interface while no daemon runs
    d0.start()
    sent, received = _ping_stats(pinger)
    after = pa.link_info("eth0")
    assert after.index == before.index and after.mac == before.mac
    assert received > sent * 0.5, (sent, received)  # a short gap only
    assert ping(pa, _ip(b), count=3).received == 3
    tr = tcp_transfer(pa, pb, _ip(b), 1_000_000)
    assert tr.ok, tr
    c0 = d0.client
    assert c0.attachment("ca", "eth0")["mac"] == a["mac"]
    # The restarted daemon still owns the pod: DEL removes its interface.
    c0.detach("ca", "eth0")
    assert "eth0" not in pa.links()


def test_named_ports_reach_every_node_and_outlive_a_restart(
    overlay_topology: Topology, overlay_daemons: Any, overlay_etcd: Any
) -> None:
    """``named_ports`` of the attach body are in the pod's endpoint on every node
    (through etcd); kept in the state file, a restarted daemon re-announces them."""
    cl = overlay_daemons(store=overlay_etcd.endpoint)
    cl.start()
    pa = _pod(overlay_topology, "pa")
    ports = {"http": [8080, "TCP"], "dns": [53, "UDP"]}
    d0 = cl.daemons[0]
    a = _attach(d0.client, "ca", pa, name="pod-a", named_ports={**ports, "dns": [53, "udp"]})
    assert a["named_ports"] == ports

    def everywhere() -> bool:
        return all(
            [e.get("ports") for e in d.client.endpoints(vni=100) if e["mac"] == a["mac"]] == [ports]
            for d in cl.daemons
        )

    _wait(everywhere, what="the pod's named ports on every node")
    assert d0.stop() == 0
    d0.start()
    assert d0.client.attachment("ca", "eth0")["named_ports"] == ports
    _wait(everywhere, what="the named ports announced again after the restart")


def test_a_state_file_written_before_named_ports_loads(tmp_path: Path) -> None:
    from overlay.daemon.state import StateFile

    old = {
        "container_id": "c1",
        "ifname": "eth0",
        "netns": "/var/run/netns/p",
        "vni": 100,
        "tenant": "blue",
        "mac": "02:00:00:00:00:01",
        "ips": ["10.244.0.2/24"],
        "mtu": 1450,
        "labels": {"pod": "a"},
    }
    (tmp_path / "attachments.json").write_text(json.dumps({"format": 1, "attachments": [old]}))
    [rec] = StateFile(str(tmp_path)).load()
    assert rec.named_ports == {} and rec.labels == {"pod": "a"}


def _with_green(cl: Any, i: int) -> dict[str, Any]:
    """Node ``i``'s configuration with a second network, vni 200, on every node."""
    cfg: dict[str, Any] = cl.config(i)
    cfg["networks"].append({"vni": 200, "tenant": "green", "cidr": "10.245.0.0/16"})
    for p in cfg["store"]["peers"]:
        p["networks"] = [100, 200]
    return cfg


def test_reload_adds_and_removes_networks_without_disturbing_others(
    overlay_topology: Topology, overlay_daemons: Any
) -> None:
    cl = overlay_daemons()
    cl.start()
    pa, pb, a, b = _two_pods(overlay_topology, cl)
    d0, d1 = cl.daemons
    for i, d in enumerate(cl.daemons):
        d.write_config(_with_green(cl, i))
    pinger = _pinger(pa, _ip(b), 3)
    time.sleep(0.5)
    for d in cl.daemons:
        d.reload()
    for d in cl.daemons:
        _wait(lambda d=d: d.client.status()["reloads"] == 1, what="reload done")
    assert {n["vni"] for n in d0.client.networks()} == {100, 200}
    sent, received = _ping_stats(pinger)
    assert received == sent, (sent, received)  # vni 100 never stopped
    pg, ph = _pod(overlay_topology, "pg"), _pod(overlay_topology, "ph")
    g = _attach(d0.client, "cg", pg, vni=200)
    h = _attach(d1.client, "ch", ph, vni=200)
    assert ping(pg, _ip(h), count=2).received == 2
    # Removing a network with pods is refused, naming it; nothing changes.
    cfg = cl.config(0)
    d0.write_config(cfg)
    with pytest.raises(ApiError) as err:
        d0.client.request("POST", "/v1/reload")
    assert err.value.status == 409 and "vni 200" in err.value.message
    assert {n["vni"] for n in d0.client.networks()} == {100, 200}
    # A bad file is refused too (SIGHUP: logged; the API call: the error).
    d0.config_path.write_text(to_toml(cfg).replace('tenant = "blue"', "tenant = 5"))
    with pytest.raises(ApiError) as err:
        d0.client.request("POST", "/v1/reload")
    assert err.value.status == 400 and err.value.field == "networks[0].tenant"
    d0.reload()
    _wait(lambda: "reload refused" in d0.log(), what="refusal logged")
    assert d0.client.status()["ready"] and ping(pa, _ip(b), count=1).received == 1
    # With the pod gone, the network can go.
    d0.client.detach("cg", "eth0")
    d0.write_config(cfg)
    summary = d0.client.request("POST", "/v1/reload")
    assert summary["networks_removed"] == [200]
    assert {n["vni"] for n in d0.client.networks()} == {100}
    assert g["vni"] == 200


def test_start_errors_exit_with_the_key(tmp_path: Path, overlay_topology: Topology) -> None:
    ns = overlay_topology.add_netns("n0")
    run = [sys.executable, "-m", "overlay.daemon.main", "--config"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nname = "n"\nunderlay = "198.18.0.1"\nencap = "gre"\n')
    done = subprocess.run(run + [str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "node.encap" in done.stderr and "geneve" in done.stderr
    done = subprocess.run(run + [str(bad), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    missing = subprocess.run(
        run + [str(tmp_path / "none.toml")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "--config" in missing.stderr
    # An underlay address the namespace does not have: exit 1, nothing left behind.
    cfg = {
        "node": {
            "name": "n0",
            "underlay": "198.18.0.9",
            "netns": ns.path,
            "state_dir": str(tmp_path / "st"),
        },
        "api": {"socket": str(tmp_path / "s.sock")},
        "metrics": {"address": ""},
        "networks": [{"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"}],
    }
    d = Overlayd(tmp_path / "d", cfg)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(20) != 0
    assert "198.18.0.9" in d.log()
    assert not os.path.exists(tmp_path / "s.sock")
    with pytest.raises(DaemonUnavailable) as err:
        d.client.status()
    assert "not running" in str(err.value)


def test_second_daemon_on_one_socket_is_refused(
    overlay_topology: Topology, overlay_daemons: Any, tmp_path: Path
) -> None:
    cl = overlay_daemons(n_nodes=1)
    cl.start()
    d0 = cl.daemons[0]
    cfg = cl.config(0)
    cfg["node"]["state_dir"] = str(tmp_path / "other")
    twin = Overlayd(tmp_path / "twin", cfg)
    twin.start(wait=False)
    assert twin.proc is not None and twin.proc.wait(20) != 0
    assert "another overlayd" in twin.log() or "in use" in twin.log()
    assert d0.client.status()["ready"]  # the first one is untouched


def test_sigterm_is_clean(overlay_daemons: Any) -> None:
    cl = overlay_daemons(n_nodes=1)
    cl.start()
    d0 = cl.daemons[0]
    assert d0.proc is not None
    d0.proc.send_signal(signal.SIGTERM)
    assert d0.proc.wait(10) == 0
    assert not os.path.exists(d0.socket)
    assert "stopped" in d0.log()
    s = socket.socket(socket.AF_UNIX)
    with pytest.raises(OSError):
        s.connect(d0.socket)
    s.close()


def test_etcd_outage_keeps_pods_talking_and_refuses_new_ones_until_it_is_back(
    overlay_topology: Topology, overlay_daemons: Any, overlay_etcd: Any
) -> None:
    cl = overlay_daemons(store=overlay_etcd.endpoint)
    cl.start()
    pa, pb, a, b = _two_pods(overlay_topology, cl)
    c0 = cl.daemons[0].client
    overlay_etcd.kill()
    _wait(lambda: not c0.status()["store"]["connected"], timeout=15, what="store disconnected")
    assert not c0.status()["ready"]
    assert ping(pa, _ip(b), count=3).received == 3  # the data plane forwards on its last state
    pc = _pod(overlay_topology, "pc")
    with pytest.raises(ApiError) as err:
        _attach(c0, "cc", pc)
    assert err.value.status == 503 and err.value.kind == "unavailable"
    assert pc.links() == ["lo"]  # nothing half made
    overlay_etcd.start()
    _wait(lambda: c0.status()["ready"], timeout=20, what="ready again")
    c = _attach(c0, "cc", pc)
    assert ping(pc, _ip(b), count=2).received == 2
    assert c["ips"] != a["ips"]


def test_underlay_from_an_interface(overlay_topology: Topology, overlay_daemons: Any) -> None:
    """node.interface instead of node.underlay: the interface's address is the VTEP."""
    cl = overlay_daemons(n_nodes=1)
    cfg = cl.config(0)
    del cfg["node"]["underlay"]
    cfg["node"]["interface"] = "ul0"
    cl.daemons[0].write_config(cfg)
    cl.start()
    st = cl.daemons[0].client.status()
    assert st["underlay"] == "198.18.0.1"
    cfg["node"]["interface"] = "nosuch0"
    d = Overlayd(cl.directory / "bad", cfg | {"api": {"socket": str(cl.directory / "b.sock")}})
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(20) == 2
    assert "node.interface='nosuch0'" in d.log()


def test_reload_adds_and_removes_static_peers(
    overlay_topology: Topology, overlay_daemons: Any
) -> None:
    cl = overlay_daemons(n_nodes=3)
    full = [cl.config(i) for i in range(3)]
    for i in (0, 1):  # node0 and node1 do not know node2 yet
        cfg = cl.config(i)
        cfg["store"]["peers"] = [p for p in cfg["store"]["peers"] if p["name"] != "node2"]
        cl.daemons[i].write_config(cfg)
    cl.start()
    d0, d1, d2 = cl.daemons
    assert [p["name"] for p in d0.client.peers()] == ["node1"]
    p0, p2 = _pod(overlay_topology, "p0"), _pod(overlay_topology, "p2")
    a = _attach(d0.client, "c0", p0)
    c = _attach(d2.client, "c2", p2)
    assert ping(p2, _ip(a), count=1, timeout=1).received == 0  # node0 refuses node2
    for i in (0, 1):
        cl.daemons[i].write_config(full[i])
        summary = cl.daemons[i].client.request("POST", "/v1/reload")
        assert summary["peers_added_or_changed"] == ["node2"]
    assert ping(p2, _ip(a), count=3).received == 3
    peers = _wait(
        lambda: [p for p in d0.client.peers() if p["name"] == "node2" and p["reachable"]],
        what="node2 probed",
    )
    assert peers[0]["underlay"] == "198.18.0.3"
    d0.write_config(
        cl.config(0) | {"store": {**full[0]["store"], "peers": full[0]["store"]["peers"][:1]}}
    )
    assert d0.client.request("POST", "/v1/reload")["peers_removed"] == ["node2"]
    _wait(lambda: [p["name"] for p in d0.client.peers()] == ["node1"], what="node2 gone")
    assert "198.18.0.3" not in d0.client.networks()[0]["vteps"]
    assert ping(p2, _ip(a), count=1, timeout=1).received == 0
    assert c["vni"] == 100


def test_reload_that_adds_the_first_peer_applies_the_new_file_to_new_networks(
    overlay_topology: Topology, overlay_daemons: Any
) -> None:
    # Static peers make a node's networks learn; a network added by the same
    # reload that adds the first peer must be made under the new file, not the old.
    cl = overlay_daemons()
    alone = cl.config(0)
    alone["store"]["peers"] = []
    cl.daemons[0].write_config(alone)
    cl.start()
    d0, d1 = cl.daemons
    assert [n["learning"] for n in d0.client.networks()] == [False]
    for i, d in enumerate(cl.daemons):
        d.write_config(_with_green(cl, i))
        summary = d.client.request("POST", "/v1/reload")
        assert summary["networks_added"] == [200]
        # node0's vni 100 (no pods yet) is remade to learn too; node1's is unchanged.
        assert summary["networks_changed"] == ([100] if i == 0 else [])
    learning = {n["vni"]: n["learning"] for n in d0.client.networks()}
    assert learning == {100: True, 200: True}
    pg, ph = _pod(overlay_topology, "pg"), _pod(overlay_topology, "ph")
    _attach(d0.client, "cg", pg, vni=200)
    h = _attach(d1.client, "ch", ph, vni=200)
    assert ping(pg, _ip(h), count=2).received == 2


@pytest.mark.parametrize("store", ["memory", "etcd"])
def test_a_vxlan_and_a_geneve_network_side_by_side(
    overlay_topology: Topology,
    overlay_daemons: Any,
    store: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """[[networks]] encap: one network of each encapsulation on the same two nodes
    (the nodes' default VXLAN), pods of both talk at once."""
    url = request.getfixturevalue("overlay_etcd").endpoint if store == "etcd" else "memory"
    nets = [
        {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"},
        {"vni": 200, "tenant": "red", "cidr": "10.245.0.0/16", "encap": "geneve"},
    ]
    cl = overlay_daemons(store=url, networks=nets)
    cl.start()
    pcap = tmp_path / "mixed.pcap"
    with Capture(cl.node_ns[1], "ul0", bpf="udp port 4789 or udp port 6081", path=pcap):
        for vni in (100, 200):
            pa, pb = _pod(overlay_topology, f"a{vni}"), _pod(overlay_topology, f"b{vni}")
            a = _attach(cl.daemons[0].client, f"ca{vni}", pa, vni=vni)
            b = _attach(cl.daemons[1].client, f"cb{vni}", pb, vni=vni)
            assert a["mtu"] == b["mtu"] == 1450  # Geneve without options costs as VXLAN
            assert ping(pa, _ip(b), count=3).received == 3
            assert ping(pb, _ip(a), count=3).received == 3
            tr = tcp_transfer(pa, pb, _ip(b), 1_000_000)
            assert tr.ok, tr
            tr = tcp_transfer(pb, pa, _ip(a), 1_000_000)
            assert tr.ok, tr
    # each network on the wire with its own header to its own port
    rows = tshark_fields(pcap, ["udp.dstport", "vxlan.vni", "geneve.vni"])
    geneve = {(r["udp.dstport"], int(r["geneve.vni"], 0)) for r in rows if r["geneve.vni"]}
    vxlan = {(r["udp.dstport"], int(r["vxlan.vni"])) for r in rows if r["vxlan.vni"]}
    assert geneve == {("6081", 200)}
    assert (vxlan - {("4789", 16777215)}) == {("4789", 100)}  # and the health probes' VNI
    for d in cl.daemons:
        encaps = {n["vni"]: n["encap"] for n in d.client.networks()}
        assert encaps == {100: "vxlan", 200: "geneve"}  # `overlay networks` says which
        per_net = d.client.counters()["networks"]  # by VNI (JSON: as text)
        for vni in ("100", "200"):
            assert per_net[vni]["decap_packets"] > 0 and per_net[vni]["encap_packets"] > 0
