"""overlay-cni end to end, driven as a container runtime drives it: the real executable,
the spec's environment variables, configurations on stdin, real pod namespaces on
real overlayd nodes (``overlay.testing.daemon``), Debian's real CNI plugins.

* Two nodes, with static peers and with a real etcd: pods added by CNI ping both
  ways and move a verified TCP stream across nodes; then every verb (CHECK,
  STATUS, VERSION, GC, DEL twice) as the runtime sends it.
* A chain: overlay-cni with Debian's host-local (one range and data dir per
  node), then Debian's tuning plugin with overlay-cni's result as prevResult
  (CNI 1.0.0, as Debian's plugins speak); pods ping across nodes; CHECK and DEL
  run the chain, and DEL leaves no lease behind.
* Concurrency: eight plugin processes ADD eight containers on one node at once,
  then DEL them at once.
* GC after a crash: overlayd is killed, the runtime removes a pod meanwhile, the
  restarted daemon keeps the survivors' interfaces and traffic, and GC removes
  what the runtime no longer lists.
* A stopped (and a killed) overlayd: the container verbs are "try again later",
  STATUS is 50, a delegated address is released by a failed ADD and kept by a
  failed DEL, and everything works again once the daemon is back.

Every error code the plugin documents, and where it is tested against what
(this file together with ``test_cni_plugin.py``):

====  =====================================================================
code  tested
====  =====================================================================
1     test_cni_plugin.py, before any daemon is asked (versions, verb gates)
2     test_cni_plugin.py (ipMasq)
3     here (CHECK after DEL), and test_cni_plugin.py against a real overlayd
4     test_cni_plugin.py (every CNI_* variable, CNI_ARGS, CNI_PATH)
6     test_cni_plugin.py (stdin not JSON)
7     test_cni_plugin.py: configuration keys, and overlayd refusing a vni it
      does not host or a namespace that does not exist
11    here with overlayd stopped and killed; test_cni_plugin.py with no
      daemon and with one waiting for its store
50    here with overlayd stopped and killed; test_cni_plugin.py with no
      daemon, one waiting for its store, and a vni overlayd does not host
100   here (a duplicate ADD), and test_cni_plugin.py
101   test_cni_plugin.py against a real overlayd with a full subnet
102   test_cni_plugin.py with ApiStub only: a healthy overlayd does not fail
      inside, nor send records the plugin cannot read
103   test_cni_plugin.py against a real overlayd (prevResult, netlink, a
      vanished namespace, an attachment that could not be re-attached)
====  =====================================================================
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from overlay.cni.plugin import ATTACHMENT_CONFLICT
from overlay.cni.spec import (
    PLUGIN_NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
)
from overlay.testing.daemon import CNI_DIR, DaemonCluster, Overlayd, cni, overlay_cni
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, tcp_transfer

pytestmark = [pytest.mark.root]

HOST_LOCAL = os.path.join(CNI_DIR, "host-local")
TUNING = os.path.join(CNI_DIR, "tuning")
needs_debian_plugins = pytest.mark.skipif(
    not (os.access(HOST_LOCAL, os.X_OK) and os.access(TUNING, os.X_OK)),
    reason=f"{HOST_LOCAL} or {TUNING} is missing: apt-get install containernetworking-plugins",
)
CIDR = "10.244.0.0/16"
BLUE: dict[str, Any] = {"vni": 100, "tenant": "blue", "cidr": CIDR}
NO_CONTAINER = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")  # STATUS, GC and VERSION

Cluster = Callable[..., DaemonCluster]


def _one_node(overlay_daemons: Cluster) -> tuple[DaemonCluster, Overlayd, dict[str, Any]]:
    """A started one-node cluster hosting BLUE, its daemon and overlay-cni's config for it."""
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE])
    cluster.start()
    return cluster, cluster.daemons[0], _conf(cluster.daemons[0])


def _conf(daemon: Overlayd, version: str = "1.1.0", **keys: Any) -> dict[str, Any]:
    """overlay-cni's configuration for the node of ``daemon`` (its API socket)."""
    return {
        "cniVersion": version,
        "name": "blue",
        "type": "overlay-cni",
        "vni": 100,
        "socket": daemon.socket,
        **keys,
    }


def _pod_args(name: str) -> str:
    return f"K8S_POD_NAMESPACE=e2e;K8S_POD_NAME={name}"


def _ip(result: dict[str, Any], index: int = -1) -> str:
    """The address (no prefix) of a result's ``index``-th IP."""
    return str(ipaddress.ip_interface(result["ips"][index]["address"]).ip)


def _attached(daemon: Overlayd) -> set[tuple[str, str]]:
    return {(a["container_id"], a["ifname"]) for a in daemon.client.attachments()}


def _leases(data_dir: Path) -> list[str]:
    """host-local's reservations: one file per address in <dataDir>/<network name>."""
    d = data_dir / "blue"
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []


@pytest.mark.parametrize("store", ["memory", "etcd"])
def test_pods_added_on_two_nodes_talk_and_every_verb_works(
    overlay_topology: Topology, overlay_daemons: Cluster, store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("overlay_etcd").endpoint if store == "etcd" else "memory"
    cluster = overlay_daemons(store=url, networks=[BLUE])
    cluster.start()
    daemons = cluster.daemons
    pods = [overlay_topology.add_netns(f"web{i}") for i in range(2)]
    confs = [_conf(d) for d in daemons]
    added = [
        cni(
            "ADD", confs[i], cid=f"web{i}", netns=pods[i].path, cni_args=_pod_args(f"web{i}")
        ).success()
        for i in range(2)
    ]
    ips = [_ip(r) for r in added]
    assert ips[0] != ips[1]
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(CIDR) for ip in ips)
    for i in range(2):
        assert pods[i].link_info("eth0").mac == added[i]["interfaces"][0]["mac"]

    # Traffic across nodes, both ways, and a TCP stream checked byte for byte.
    assert ping(pods[0], ips[1]).ok and ping(pods[1], ips[0]).ok
    transfer = tcp_transfer(pods[0], pods[1], ips[1], 1_000_000)
    assert transfer.ok, transfer
    if store == "etcd":  # a shared store: node0 knows node1's pod by name
        remote = [e for e in daemons[0].client.endpoints() if not e["local"]]
        assert [e["name"] for e in remote] == ["e2e/web1"]

    # CHECK, STATUS, VERSION and GC, each on its node, as the runtime calls them.
    for i in range(2):
        check = cni(
            "CHECK", {**confs[i], "prevResult": added[i]}, cid=f"web{i}", netns=pods[i].path
        )
        assert check.success() is None and check.stdout == ""
        status = cni("STATUS", confs[i], unset=NO_CONTAINER)
        assert status.success() is None and status.stdout == ""
    version = cni("VERSION", {"cniVersion": "1.1.0"}, unset=NO_CONTAINER).success()
    assert version == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    valid = [{"containerID": "web0", "ifname": "eth0"}]
    gc = cni("GC", {**confs[0], "cni.dev/valid-attachments": valid}, unset=NO_CONTAINER)
    assert gc.success() is None and _attached(daemons[0]) == {("web0", "eth0")}
    again = cni("ADD", confs[0], cid="web0", netns=pods[0].path).error(ATTACHMENT_CONFLICT)
    assert "exists already; DEL it first" in again

    # DEL: the interface goes; DEL again is success; CHECK then knows nothing.
    for i in range(2):
        run = cni("DEL", confs[i], cid=f"web{i}", netns=pods[i].path)
        assert run.success() is None and run.stdout == ""
        assert pods[i].links() == ["lo"] and _attached(daemons[i]) == set()
        assert cni("DEL", confs[i], cid=f"web{i}", netns=pods[i].path).success() is None
        gone = {**confs[i], "prevResult": added[i]}
        msg = cni("CHECK", gone, cid=f"web{i}", netns=pods[i].path).error(UNKNOWN_CONTAINER)
        assert "ADD it again" in msg


Chain = list[tuple[Sequence[str], dict[str, Any]]]  # (plugin argv, its configuration)


def _run_chain(verb: str, chain: Chain, cid: str, netns: str, prev: Any = None) -> Any:
    """Run ``verb`` over a chain as a runtime does (libcni): ADD and CHECK in order,
    DEL in reverse; each ADD gets the result so far as prevResult, CHECK and DEL get
    ``prev`` (the chain's final result). Returns the chain's result for ADD."""
    for plugin, conf in reversed(chain) if verb == "DEL" else chain:
        full = conf if prev is None else {**conf, "prevResult": prev}
        out = cni(verb, full, cid=cid, netns=netns, plugin=plugin).success()
        if verb == "ADD":
            prev = out
        else:
            assert out is None, (verb, plugin)
    return prev


@needs_debian_plugins
def test_a_chain_with_host_local_and_tuning_across_two_nodes(
    overlay_topology: Topology, overlay_daemons: Cluster, tmp_path: Path
) -> None:
    cluster = overlay_daemons(networks=[BLUE])
    cluster.start()
    sysctl = "net.ipv4.conf.eth0.log_martians"
    pods: list[Netns] = []
    chains: list[Chain] = []
    results: list[dict[str, Any]] = []
    for i, daemon in enumerate(cluster.daemons):
        # Each node's host-local hands out its own range of the cluster's CIDR.
        third = 10 * (i + 1)
        ipam = {
            "type": "host-local",
            "ranges": [[{"subnet": CIDR, "rangeStart": f"10.244.{third}.2",
                         "rangeEnd": f"10.244.{third}.20"}]],
            "dataDir": str(tmp_path / f"ipam{i}"),
        }  # fmt: skip
        tuning = {"type": "tuning", "sysctl": {sysctl: "1"}, "dataDir": str(tmp_path / "tuning")}
        chain: Chain = [
            (overlay_cni(), _conf(daemon, "1.0.0", ipam=ipam)),
            ((TUNING,), {"cniVersion": "1.0.0", "name": "blue", **tuning}),
        ]
        pod = overlay_topology.add_netns(f"chain{i}")
        result = _run_chain("ADD", chain, f"chain{i}", pod.path)
        assert result["cniVersion"] == "1.0.0"
        assert [ip["address"] for ip in result["ips"]] == [f"10.244.{third}.2/16"]
        assert _leases(tmp_path / f"ipam{i}") == [f"10.244.{third}.2"]
        assert f"10.244.{third}.2/16" in pod.link_info("eth0").addresses
        assert pod.sysctl_get(sysctl) == "1"  # tuning ran on overlay-cni's interface
        pods.append(pod)
        chains.append(chain)
        results.append(result)

    assert ping(pods[0], _ip(results[1])).ok and ping(pods[1], _ip(results[0])).ok

    for i, pod in enumerate(pods):
        _run_chain("CHECK", chains[i], f"chain{i}", pod.path, results[i])
        _run_chain("DEL", chains[i], f"chain{i}", pod.path, results[i])
        assert pod.links() == ["lo"]
        assert _leases(tmp_path / f"ipam{i}") == []
        assert _attached(cluster.daemons[i]) == set()


def test_concurrent_adds_for_different_containers_are_all_served(
    overlay_topology: Topology, overlay_daemons: Cluster
) -> None:
    cluster, daemon, conf = _one_node(overlay_daemons)
    n = 8
    pods = [overlay_topology.add_netns(f"cc{i}") for i in range(n)]

    def run_all(verb: str) -> list[Any]:
        def one(i: int) -> Any:
            return cni(verb, conf, cid=f"cc{i}", netns=pods[i].path, cni_args=_pod_args(f"cc{i}"))

        with ThreadPoolExecutor(n) as pool:  # n plugin processes at once
            return [run.success() for run in pool.map(one, range(n))]

    added = run_all("ADD")
    macs = {r["interfaces"][0]["mac"] for r in added}
    ips = [_ip(r) for r in added]
    assert len(macs) == n and len(set(ips)) == n
    assert _attached(daemon) == {(f"cc{i}", "eth0") for i in range(n)}
    for i in (0, n - 1):
        assert added[i]["ips"][0]["address"] in pods[i].link_info("eth0").addresses
    assert ping(pods[0], ips[n - 1]).ok and ping(pods[n - 1], ips[0]).ok
    assert run_all("DEL") == [None] * n
    assert _attached(daemon) == set()
    assert all(pod.links() == ["lo"] for pod in pods)


def test_gc_after_a_crash_removes_what_the_runtime_no_longer_lists(
    overlay_topology: Topology, overlay_daemons: Cluster
) -> None:
    cluster, daemon, conf = _one_node(overlay_daemons)
    names = ("keep", "stale", "removed")
    pods = {name: overlay_topology.add_netns(name) for name in names}
    added = {name: cni("ADD", conf, cid=name, netns=pods[name].path).success() for name in names}

    daemon.kill()  # a crash: no clean-up of any kind
    # While the daemon is down the runtime removes a container, namespace and all.
    subprocess.run(["ip", "netns", "delete", pods["removed"].name], check=True)
    daemon.start()

    # The survivors kept their interfaces and are attached again; the removed
    # pod is forgotten.
    assert _attached(daemon) == {("keep", "eth0"), ("stale", "eth0")}
    for name in ("keep", "stale"):
        assert pods[name].link_info("eth0").mac == added[name]["interfaces"][0]["mac"]
        check = {**conf, "prevResult": added[name]}
        assert cni("CHECK", check, cid=name, netns=pods[name].path).success() is None
    assert ping(pods["keep"], _ip(added["stale"])).ok
    assert ping(pods["stale"], _ip(added["keep"])).ok

    # The runtime's GC lists only "keep": "stale" is collected.
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    gc = cni("GC", {**conf, "cni.dev/valid-attachments": valid}, unset=NO_CONTAINER)
    assert gc.success() is None and gc.stdout == ""
    assert pods["stale"].links() == ["lo"]
    assert [a["container_id"] for a in daemon.client.attachments()] == ["keep"]
    assert "eth0" in pods["keep"].links()
    # The runtime's late DEL of the removed container is still a success.
    assert cni("DEL", conf, cid="removed", netns=pods["removed"].path).success() is None


@needs_debian_plugins
def test_a_stopped_overlayd_is_try_again_later_and_status_50_until_it_is_back(
    overlay_topology: Topology, overlay_daemons: Cluster, tmp_path: Path
) -> None:
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE])
    cluster.start()
    daemon = cluster.daemons[0]
    data_dir = tmp_path / "ipam"
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.7.0/24", "rangeStart": "10.244.7.5",
                     "rangeEnd": "10.244.7.6"}]],
        "dataDir": str(data_dir),
    }  # fmt: skip
    conf = _conf(daemon, ipam=ipam)
    pod, late = overlay_topology.add_netns("up"), overlay_topology.add_netns("late")
    added = cni("ADD", conf, cid="up", netns=pod.path).success()
    check = {**conf, "prevResult": added}
    assert _leases(data_dir) == ["10.244.7.5"]
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "up", "ifname": "eth0"}]}

    for how, fix in (("stopped", 'start overlayd, or set this network\'s "socket" key'),
                     ("killed", "start the daemon")):  # fmt: skip
        if how == "stopped":
            assert daemon.stop() == 0  # it removes its socket
        else:
            daemon.kill()  # the socket stays, nobody listens
        msg = cni("ADD", conf, cid="late", netns=late.path).error(TRY_AGAIN_LATER)
        assert fix in msg and "--socket" not in msg, (how, msg)
        assert _leases(data_dir) == ["10.244.7.5"], how  # ADD gave its address back
        # DEL as the runtime sends it after a successful ADD: with its result.
        msg = cni("DEL", check, cid="up", netns=pod.path).error(TRY_AGAIN_LATER)
        assert fix in msg and "keeps attachment up/eth0 and its address 10.244.7.5" in msg, how
        assert _leases(data_dir) == ["10.244.7.5"], how  # DEL kept it: overlayd holds it
        msg = cni("CHECK", check, cid="up", netns=pod.path).error(TRY_AGAIN_LATER)
        assert fix in msg, how
        msg = cni("GC", gc, unset=NO_CONTAINER).error(TRY_AGAIN_LATER)
        assert fix in msg, how
        msg = cni("STATUS", conf, unset=NO_CONTAINER).error(PLUGIN_NOT_AVAILABLE)
        assert fix in msg and daemon.socket in msg, how
        assert pod.link_info("eth0").mac == added["interfaces"][0]["mac"]  # the pod is intact
        daemon.start()
        assert cni("STATUS", conf, unset=NO_CONTAINER).success() is None
        assert cni("CHECK", check, cid="up", netns=pod.path).success() is None

    # A DEL that reaches overlayd detaches, then releases the address.
    assert cni("DEL", conf, cid="up", netns=pod.path).success() is None
    assert pod.links() == ["lo"] and _leases(data_dir) == []
    assert late.links() == ["lo"] and _attached(daemon) == set()
