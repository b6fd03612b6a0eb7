"""Policies through overlayd: the ``overlay policy`` CLI and the policy routes
against real daemons, with the memory store (one node) and with a real etcd
(two nodes, one of them paused while the set changes).

The CLI runs in this process (``overlay.cli.main``), as a user's shell would
run it, its output captured; the drop follower runs as its own process.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from overlay import cli
from overlay.daemon.client import ApiError
from overlay.testing.netns import Topology
from overlay.testing.traffic import ping

pytestmark = [pytest.mark.root]

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: web}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: 80, protocol: TCP}]
"""

BAD = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: x}
spec: {podSelecter: {}}
"""

MORE = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}}
"""


class Cli:
    """``overlay --socket S ...`` in this process: (exit status, stdout, stderr)."""

    def __init__(self, socket: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.socket = socket
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = cli.main(["--socket", self.socket, *args])
        out, err = self.capsys.readouterr()
        return rc, out, err


def until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)


def _metrics_address(log: str) -> str:
    for line in log.splitlines():
        if "metrics on http://" in line:
            return line.split("metrics on http://", 1)[1].split("/", 1)[0]
    raise AssertionError(f"no metrics address in the log:\n{log[-2000:]}")


def _scrape(address: str) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_policies_through_one_daemon_with_the_memory_store(
    overlay_topology: Topology,
    overlay_daemons: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cl = overlay_daemons(
        n_nodes=1,
        extra={"metrics": {"address": "127.0.0.1:0"}, "policy": {"verify_interval": 0.2}},
    )
    cl.start()
    d = cl.daemons[0]
    c = d.client
    run = Cli(d.socket, capsys)
    pa, pb = overlay_topology.add_netns("pa"), overlay_topology.add_netns("pb")
    a = c.attach(
        {"container_id": "ca", "ifname": "eth0", "netns": pa.path, "vni": 100,
         "namespace": "x", "pod": "a", "labels": {"pod": "a"}}
    )  # fmt: skip
    b = c.attach(
        {"container_id": "cb", "ifname": "eth0", "netns": pb.path, "vni": 100,
         "namespace": "x", "pod": "b", "labels": {"pod": "b"}}
    )  # fmt: skip
    ip_a, ip_b = a["ips"][0].split("/")[0], b["ips"][0].split("/")[0]
    assert ping(pa, ip_b, count=1).received == 1  # no policy yet

    # apply, then apply again: nothing changes the second time.
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(MANIFEST)
    rc, out, err = run("policy", "apply", "-f", str(policy_file))
    assert rc == 0, err
    assert "NetworkPolicy x/b-from-a created" in out and "Namespace x created" in out
    rc, out, _ = run("policy", "apply", "-f", str(tmp_path))  # the directory: the same set
    assert rc == 0 and "0 created, 0 configured" in out, out
    applied_hash = c.policy_get()["hash"]

    # get prints what applies again unchanged: YAML documents, and a JSON List.
    rc, out, _ = run("policy", "get")
    assert rc == 0 and "---" in out and "kind: NetworkPolicy" in out
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "got.yaml").write_text(out)
    rc, out, _ = run("policy", "apply", "-f", str(tmp_path / "again" / "got.yaml"))
    assert rc == 0 and "0 created, 0 configured, 0 pruned" in out, out
    rc, out, _ = run("policy", "get", "-o", "json")
    assert json.loads(out)["kind"] == "List"
    (tmp_path / "again" / "got.yaml").unlink()
    (tmp_path / "again" / "got.json").write_text(out)
    rc, out, _ = run("policy", "apply", "--prune", "-f", str(tmp_path / "again"))
    assert rc == 0 and "0 created, 0 configured, 0 pruned" in out, out
    assert c.policy_get()["hash"] == applied_hash

    # A bad manifest: refused with the document and field named, nothing written.
    bad = tmp_path / "bad" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(MORE + "---\n" + BAD)
    rc, out, err = run("policy", "apply", "-f", str(bad))
    assert rc == 2 and "document 2 (NetworkPolicy x/typo) spec.podSelecter" in err, err
    assert "nothing was written" in err and "podSelector" in err
    with pytest.raises(ApiError) as refused:  # the daemon checks too
        c.policy_apply(MORE + "---\n" + BAD)
    assert refused.value.status == 400 and "spec.podSelecter" in str(refused.value.field)
    got = c.policy_get()
    assert got["hash"] == applied_hash and len(got["items"]) == 2
    dry = c.policy_apply(MORE, dry_run=True)
    assert dry["created"] == ["NetworkPolicy x/deny-all"] and dry["hash"] != applied_hash
    assert c.policy_get()["hash"] == applied_hash  # a dry run writes nothing

    # status: this node has the store's set in force.
    def in_sync() -> tuple[int, str, str] | None:
        got = run("policy", "status")
        return got if got[0] == 0 else None

    _, out, _ = until(in_sync, what="node0 in sync")
    row = next(ln for ln in out.splitlines() if ln.startswith("node0"))
    assert row.split()[:3] == ["node0", "blue", "yes"], out

    # verify: the node's probe checked its tables against the policies, and agrees.
    def verified() -> tuple[int, str, str] | None:
        got = run("policy", "verify")
        return got if got[0] == 0 and "node0 blue: ok" in got[1] else None

    _, out, _ = until(verified, what="a verification round")
    assert out.splitlines()[-1] == "0 disagreements", out
    summary = c.policy_verify()
    assert summary["disagreements"] == 0 and summary["nodes"][0]["checked"] > 0
    # repair: every table of the node set again (4: two pods, two directions), verified.
    rc, out, _ = run("policy", "repair")
    assert rc == 0 and out.startswith("node0: 4 policy tables set again"), out
    assert "blue: " in out and ", 0 disagreements" in out, out

    # explain: the policies' verdict and the tables', agreeing.
    rc, out, _ = run("policy", "explain", ip_a, ip_b, "80/tcp")
    assert rc == 0 and ": allowed" in out and "networkpolicy x/b-from-a rule 0" in out, out
    rc, out, _ = run("policy", "explain", ip_a, ip_b, "81")
    assert rc == 0 and "DENIED" in out and "x/b-from-a" in out and "DISAGREE" not in out, out
    e = c.policy_explain(ip_b, ip_a, 22)
    assert e["allowed"] and e["dataplane"]["allowed"] and e["agree"] is True
    e = c.policy_explain(ip_a, ip_b, 0, "icmp")
    assert (e["allowed"], e["direction"], e["policy"]) == (False, "ingress", "x/b-from-a")
    assert e["dataplane"]["ingress"]["verdict"] == "deny" and e["agree"] is True
    with pytest.raises(ApiError) as no_net:
        c.policy_explain("192.0.2.1", "192.0.2.2", 80)
    assert no_net.value.field == "vni"

    # drops: a denied ping from a to b shows up, named by policy and pod.
    follower = subprocess.Popen(
        [sys.executable, "-m", "overlay.cli", "--socket", d.socket, "policy", "drops",
         "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert ping(pa, ip_b, count=2, interval=0.1, timeout=1).received == 0
        ready, _, _ = select.select([follower.stdout], [], [], 10)
        assert ready, "the follower printed nothing"
        assert follower.stdout is not None
        followed = json.loads(follower.stdout.readline())
        assert followed["policy"] == "x/b-from-a" and followed["pod"] == "x/b"
    finally:
        follower.terminate()
        follower.wait(5)
    rc, out, _ = run("policy", "drops", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    deny = [ev for ev in events if ev["policy"] == "x/b-from-a"]
    assert deny and deny[0]["verdict"] == "deny" and deny[0]["direction"] == "ingress"
    assert deny[0]["src"] == ip_a and deny[0]["dst"] == ip_b and deny[0]["pod"] == "x/b"
    assert deny[0]["tier"] == "isolation" and deny[0]["protocol"] == "ICMP"
    rc, out, _ = run("policy", "drops")
    assert rc == 0 and "x/b-from-a" in out and "deny" in out
    page = c.policy_drops()
    assert c.policy_drops(since=page["next"])["events"] == []

    # metrics: hits, drops per rule, conntrack, the set in force, apply latency.
    m = _scrape(_metrics_address(d.log()))
    drops = [s for s in m["overlay_policy_drops"] if s.name.endswith("_total")]
    assert any(
        s.labels["policy"] == "x/b-from-a" and s.labels["verdict"] == "deny"
        and s.labels["tenant"] == "blue" and s.value >= 1 for s in drops
    )  # fmt: skip
    assert "overlay_policy_rule_hits" in m
    assert any(s.labels["policy"] == "x/b-from-a" for s in m["overlay_policy_rule_hits"])
    assert m["overlay_conntrack_sessions"][0].value >= 0
    assert m["overlay_policy_in_force"][0].labels == {"tenant": "blue", "hash": applied_hash}
    assert m["overlay_policy_realised_revision"][0].value > 0
    count = [s for s in m["overlay_policy_apply_seconds"] if s.name.endswith("_count")]
    assert count and count[0].value >= 1
    # Audited denies and conntrack evictions: engine counters, exported with the others.
    assert "overlay_node_policy_audit" in m and "overlay_node_conntrack_evicted" in m

    # delete: by name, then what is not there is a 404 (exit 1).
    rc, out, _ = run("policy", "delete", "netpol", "b-from-a", "-n", "x")
    assert rc == 0 and "NetworkPolicy x/b-from-a deleted" in out
    rc, _, err = run("policy", "delete", "netpol", "b-from-a", "-n", "x")
    assert rc == 1 and "not in tenant blue" in err
    rc, _, err = run("policy", "delete", "netpol")
    assert rc == 2
    assert [i["kind"] for i in c.policy_get()["items"]] == ["Namespace"]
    rc, out, _ = run("policy", "delete", "-f", str(tmp_path / "again"))
    assert rc == 1  # the NetworkPolicy is gone already: nothing is deleted
    assert until(lambda: ping(pa, ip_b, count=1, timeout=1).received == 1, what="ping again")


def test_status_follows_two_nodes_on_etcd_through_a_pause(
    overlay_topology: Topology,
    overlay_daemons: Any,
    overlay_etcd: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A TTL well above the pause: the paused node stays a member, only behind.
    cl = overlay_daemons(
        store=overlay_etcd.endpoint, extra={"health": {"enabled": False}, "store": {"ttl": 15}}
    )
    cl.start()
    d0, d1 = cl.daemons
    run = Cli(d0.socket, capsys)
    for i, d in enumerate(cl.daemons):
        ns = overlay_topology.add_netns(f"p{i}")
        d.client.attach(
            {"container_id": f"c{i}", "ifname": "eth0", "netns": ns.path, "vni": 100,
             "namespace": "x", "pod": f"p{i}", "labels": {"pod": f"p{i}"}}
        )  # fmt: skip
    (tmp_path / "policy.yaml").write_text(MANIFEST)
    rc, _, err = run("policy", "apply", "-f", str(tmp_path / "policy.yaml"))
    assert rc == 0, err

    def rows() -> dict[str, dict[str, Any]]:
        return {r["node"]: r for r in d0.client.policy_status()["rows"]}

    until(lambda: [r["in_sync"] for r in rows().values()] == [True, True], what="both in sync")
    rc, out, _ = run("policy", "status")
    assert rc == 0 and out.count(" yes ") == 2, out

    assert d1.proc is not None
    os.kill(d1.proc.pid, signal.SIGSTOP)
    try:
        (tmp_path / "more.yaml").write_text(MORE)
        rc, _, err = run("policy", "apply", "-f", str(tmp_path / "more.yaml"))
        assert rc == 0, err

        def split() -> dict[str, dict[str, Any]] | None:
            r = rows()
            return r if r["node0"]["in_sync"] and not r["node1"]["in_sync"] else None

        got = until(split, timeout=5, what="node0 in sync, node1 behind")
        assert got["node1"]["behind"] >= 1 and got["node1"]["hash"] != got["node0"]["hash"]
        rc, out, _ = run("policy", "status")
        assert rc == 1, out
        lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:] if ln.strip()}
        assert lines["node0"][2] == "yes" and lines["node1"][2] == "no", out
    finally:
        os.kill(d1.proc.pid, signal.SIGCONT)
    until(lambda: run("policy", "status")[0] == 0, timeout=8, what="both in sync again")
    r = rows()
    assert r["node0"]["hash"] == r["node1"]["hash"] == r["node1"]["desired_hash"]

    # The same through the cluster's store, without a daemon (--cluster), and diff.
    spec = "etcd://" + overlay_etcd.endpoint.split("://", 1)[-1]
    rc, out, _ = run("policy", "status", "--cluster", spec)
    assert rc == 0 and out.count(" yes ") == 2, out
    rc, out, _ = run("policy", "get", "--cluster", spec, "--tenant", "blue")
    assert rc == 0 and "name: deny-all" in out and "name: b-from-a" in out
    rc, out, _ = run(
        "policy", "apply", "--cluster", spec, "--tenant", "blue", "--dry-run", "-f",
        str(tmp_path / "more.yaml"),
    )  # fmt: skip
    assert rc == 0 and "0 created, 0 configured" in out and r["node0"]["hash"] in out
    whole = ["-f", str(tmp_path / "policy.yaml"), "-f", str(tmp_path / "more.yaml")]
    rc, out, _ = run("policy", "apply", "--cluster", spec, "--tenant", "blue", *whole)
    assert rc == 0 and "in sync" in out, out  # the whole set: no drift
    rc, _, err = run("policy", "apply", "--cluster", spec, "-f", str(tmp_path / "more.yaml"))
    assert rc == 2 and "--tenant" in err
    only_first = tmp_path / "first"
    only_first.mkdir()
    (only_first / "policy.yaml").write_text(MANIFEST)
    rc, out, _ = run("policy", "diff", spec, str(only_first), "--tenant", "blue")
    assert rc == 1 and "denied" in out and "allowed" in out, out
    rc, out, _ = run("policy", "verify", "--cluster", spec)
    assert rc == 0 and "0 disagreements" in out, out
