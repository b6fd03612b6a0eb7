"""NetworkPolicy on real daemons: the upstream scenarios through ``overlay policy``.

Three ``overlayd`` processes on one real etcd, nine pods added by the real
``overlay-cni`` with their Kubernetes namespace and labels (``daemon_policy_bed``);
policies go in as manifest files through ``overlay policy apply -f FILE --prune``
on one node and reach every node through the store. What is proven here:

* **Pods carry who they are.** Each pod's namespace (from ``CNI_ARGS``),
  labels (from ``args.cni.labels`` or ``runtimeConfig.labels``) and named
  container ports (``args.cni.namedPorts`` or ``runtimeConfig.namedPorts``)
  are on its endpoint on every node.
* **The conformance scenarios hold.** Every scenario of
  ``test_netpol_conformance``, those naming ports (``serve-81-tcp``) too, is
  applied with the command (``overlay policy get`` on another node then
  lists exactly that set: ``--prune`` removed the previous scenario's),
  ``overlay policy status`` is waited on until it exits 0
  (every node has the set in force), and every ordered pair of pods is probed
  with real connections; ``overlay policy explain`` on the nodes of both ends
  then agrees with the expectation, and with the tables in force, for an
  allowed and a denied pair.
* **A pod started under deny-all never sends a denied packet.** With
  ingress+egress denied for namespace x, a new pod of x is ADDed while a
  thread in its namespace keeps sending to every pod (from before the
  interface exists to well after ADD returns). tshark on its node's underlay
  and packet sockets on the other pods of its node see none of its packets
  (and do see a control flow sent meanwhile), and the node's counters show
  the pod's packets as ``policy_denied_egress`` drops.
* **A change reaches the other nodes within a measured time.** A policy
  applied on node 0 is timed until nodes 1 and 2 report it in force
  (``overlay policy status``) and until their own ``explain`` gives the new
  verdict; the figures are printed and recorded as the test's properties
  (``propagation_*``), asserted only against a generous timeout.
* **Drops and verification.** ``overlay policy drops --follow --json`` on the
  node of a denied destination prints a line naming the deciding policy after
  a denied probe, and ``overlay policy verify`` reports no disagreement on any
  node once each has verified the scenario's tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_policy_bed import (
    SYNC_TIMEOUT,
    DaemonPolicyBed,
    Sniffer,
    daemon_policy_bed,
)
from policy_bed import NAMED, TENANT, VNI, bed_prefix, node_of
from policy_matrix import Reachability, all_pods, egress, ingress, labels, np
from test_netpol_conformance import SCENARIOS

from overlay.model import NAMESPACE_LABEL
from overlay.policy.model import NetworkPolicy
from overlay.testing.capture import Capture, tshark_fields
from overlay.testing.etcd import EtcdServer, etcd_unavailable_reason
from overlay.testing.netns import Netns, Topology
from overlay.testing.plugin import root_unavailable_reason

pytestmark = pytest.mark.root

PODS = all_pods()
TCP, UDP = "TCP", "UDP"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonPolicyBed]:
    """One bed for the module: its own etcd (daemons write nodes/ and networks/,
    which a shared one would mix with other tests'), three daemons, nine pods."""
    for reason in (root_unavailable_reason(), etcd_unavailable_reason()):
        if reason is not None:
            pytest.skip(reason)
    directory = tmp_path_factory.mktemp("netpol-daemon")
    with (
        EtcdServer(directory / "etcd") as etcd,
        Topology(bed_prefix("pd")) as topo,
        daemon_policy_bed(topo, directory / "bed", etcd.endpoint) as b,
    ):
        yield b


@pytest.fixture
def clean(bed: DaemonPolicyBed) -> Iterator[DaemonPolicyBed]:
    """The bed with only its namespaces applied, before and after the test."""
    bed.apply([])
    bed.wait_in_sync()
    try:
        yield bed
    finally:
        bed.apply([])
        bed.wait_in_sync()


# -- the bed itself -------------------------------------------------------------------


def test_pods_added_by_cni_carry_their_namespace_and_labels_to_every_node(
    bed: DaemonPolicyBed,
) -> None:
    """What the scenarios rest on: each pod's name, namespace label, ``pod``
    label and named ports, given through ``args.cni`` or ``runtimeConfig``, are
    on its endpoint on every node (local on its own, a remote from etcd
    elsewhere)."""
    ways = {"runtimeConfig" in p.conf for p in bed.added.values()}
    assert ways == {True, False}, "both ways of giving labels are exercised"
    for i, daemon in enumerate(bed.daemons):
        eps = {e["name"]: e for e in daemon.client.endpoints(vni=VNI)}
        for pod in PODS:
            ns, name = pod.split("/")
            ep = eps[pod]
            assert ep["labels"]["pod"] == name and ep["labels"][NAMESPACE_LABEL] == ns, ep
            assert ep["ports"] == {n: list(v) for n, v in NAMED.items()}, ep
            assert ep["local"] == (bed.added[pod].node == i), (i, ep)
            assert [a.split("/")[0] for a in ep["ips"]] == [bed.address(pod)], ep


# -- the scenarios -------------------------------------------------------------------


def _pick(
    probes: list[tuple[int, str, Reachability]], ok: bool
) -> tuple[str, str, int, str] | None:
    """The first (src, dst, port, proto) the scenario expects ``ok`` for."""
    for port, proto, expected in probes:
        for (f, t), want in expected.table.items():
            if f != t and want == ok:
                return f, t, port, proto
    return None


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_upstream_scenario_through_the_command(bed: DaemonPolicyBed, name: str) -> None:
    s = SCENARIOS[name]()
    applied = bed.apply(s.policies)  # --prune: the previous scenario's policies go
    assert applied["tenant"] == TENANT
    stored = bed.cli(1, "--json", "policy", "get").json()  # as any node reads the store
    names = {p.name if isinstance(p, NetworkPolicy) else p["metadata"]["name"] for p in s.policies}
    assert {i["metadata"]["name"] for i in stored["items"]} == names | {"x", "y", "z"}, stored
    assert stored["hash"] == applied["hash"]
    bed.wait_in_sync()
    problems = [line for port, proto, r in s.probes for line in bed.check(port, proto, r)]
    assert not problems, "\n".join(problems)
    # explain agrees, for an allowed and a denied pair, on the node of each end
    # (each probes its own end's tables in force too: "agree"); a denial names
    # one of the scenario's policies.
    for ok in (True, False):
        pick = _pick(s.probes, ok)
        if pick is None:
            continue
        f, t, port, proto = pick
        for node in sorted({node_of(f), node_of(t)}):
            run = bed.cli(
                node, "--json", "policy", "explain",
                bed.address(f), bed.address(t), f"{port}/{proto}",
            )  # fmt: skip
            v = run.json()
            assert v["allowed"] is ok and v["agree"] is True, (node, f, t, port, proto, v)
            if not ok:
                assert v["policy"].split("/")[-1] in names, (node, f, t, v)


# -- a pod started after deny-all -------------------------------------------------------


class Sender:
    """A thread in a pod's namespace sending, as fast as it can, a UDP datagram to
    every target and a TCP SYN to one of them per round; errors (no interface
    yet, no route) are counted and ignored. ``sent`` counts the datagrams the
    kernel took, ``first_sent`` is when it first took one."""

    def __init__(self, pod_netns: Netns, targets: list[str], tcp: int = 400) -> None:
        self.targets = targets
        self.udp = pod_netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setblocking(False)
        self.tcp: list[socket.socket] = pod_netns.call(
            lambda: [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(tcp)]
        )
        self.sent = 0
        self.errors = 0
        self.first_sent: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="deny-all-sender", daemon=True)

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            for ip in self.targets:
                try:
                    self.udp.sendto(b"denied?", (ip, 80))
                except OSError:
                    self.errors += 1
                    continue
                self.sent += 1
                if self.first_sent is None:
                    self.first_sent = time.monotonic()
            if rounds < len(self.tcp):
                s = self.tcp[rounds]
                s.setblocking(False)
                s.connect_ex((self.targets[rounds % len(self.targets)], 80))
            rounds += 1
            time.sleep(0.005)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.udp.close()
        for s in self.tcp:
            s.close()


def _drops(counters: dict[str, Any], name: str) -> int:
    """A drop counter of the node (``drops`` by reason), 0 when absent."""
    return int(counters.get("drops", {}).get(name, 0))


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark: apt-get install tshark")
def test_a_pod_started_after_deny_all_never_sends_a_denied_packet(
    clean: DaemonPolicyBed, tmp_path: Path
) -> None:
    bed = clean
    bed.apply([np("deny-all", "x", {}, ingress(), egress())])
    bed.wait_in_sync()
    node = 0
    neighbours = [p for p in PODS if node_of(p) == node]  # the other pods of its node
    remote = [p for p in PODS if node_of(p) != node]
    # Control flows, allowed, that cross this node's underlay both ways and reach
    # its pods meanwhile: the capture and the sniffers are seen to see.
    ctrl_src = [p for p in remote if not p.startswith("x/")]
    ctrl_dst = [p for p in neighbours if not p.startswith("x/")]
    before = bed.cli(node, "--json", "counters").json()
    netns = bed.topo.add_netns("xd")
    sender = Sender(netns, [bed.address(p) for p in PODS])
    sniffers = {p: Sniffer(bed.pods[p], "eth0") for p in neighbours}
    try:
        pcap = tmp_path / "ul0.pcap"
        with Capture(bed.node_ns(node), "ul0", bpf="udp port 4789", path=pcap):
            sender.start()  # before the pod has an interface: it sends from the first moment
            added = bed.add_pod("x/d", node, netns, labels={"pod": "d"})
            returned = time.monotonic()
            got = bed.probe([(f, t) for f in ctrl_src for t in ctrl_dst], 80, UDP, 5.0)
            got.update(bed.probe([(f, ctrl_src[0]) for f in ctrl_dst], 80, UDP, 5.0))
            while time.monotonic() - returned < 1.5:  # and well after ADD returned
                time.sleep(0.1)
            sender.stop()
        new_ip = added.ip
        assert all(got.values()), got
        assert sender.first_sent is not None, (sender.sent, sender.errors)

        # (b) Nothing of the new pod on the wire: not on its node's underlay
        # (tshark dissects the VXLAN; inner source last) ...
        rows = tshark_fields(pcap, ["eth.src", "ip.src", "ip.dst", "arp"], display_filter="vxlan")
        inner = {r["ip.src"].split(",")[-1] for r in rows}
        assert {bed.address(p) for p in ctrl_dst} <= inner, inner  # the control was seen
        leaked = [r for r in rows if r["ip.src"].split(",")[-1] == new_ip]
        assert not leaked, f"{len(leaked)} frames of {new_ip} crossed the underlay: {leaked[:5]}"
        # Of the pod's own frames (inner source MAC) only ARP went: policy is for IP.
        mac = added.result["interfaces"][0]["mac"]
        own = [r for r in rows if r["eth.src"].split(",")[-1] == mac]
        assert all(r["arp"] for r in own), [r for r in own if not r["arp"]][:5]
        # ... nor delivered to a pod of its own node.
        for p, sniffer in sniffers.items():
            assert sniffer.sources[new_ip] == 0, f"{p} got {sniffer.sources[new_ip]} of {new_ip}"
            if p in ctrl_dst:
                assert any(sniffer.sources[bed.address(c)] for c in ctrl_src), sniffer.sources

        # (a) The node counted them as policy drops, on the pod's own port too.
        after = bed.cli(node, "--json", "counters").json()
        denied = _drops(after, "policy_denied_egress") - _drops(before, "policy_denied_egress")
        assert denied > 0, (sender.sent, before["drops"], after["drops"])
        port = next(c for c in after["ports"].values() if c["mac"] == mac)
        assert port["rx_packets"] > 0 and port["drops"] > 0, (sender.sent, port)
        print(
            f"\ndeny-all pod x/d {new_ip}: {sender.sent} datagrams sent, the first "
            f"{sender.first_sent - returned:+.3f}s from ADD's return; {denied} "
            f"policy_denied_egress drops ({port['drops']} of {port['rx_packets']} frames "
            "from its port); none on the underlay or at its node's pods"
        )
    finally:
        sender.stop()
        for sniffer in sniffers.values():
            sniffer.close()
        if "x/d" in bed.added:
            run = bed.del_pod("x/d")
            assert run.rc == 0, run


# -- how fast a change reaches the other nodes --------------------------------------------


ROUNDS = 6  # changes timed, alternately denying and allowing


def test_a_change_applied_on_one_node_reaches_the_others_within_a_measured_time(
    clean: DaemonPolicyBed, record_property: Callable[[str, object], None]
) -> None:
    """Each round applies a change with ``overlay policy apply`` on node 0 and
    times, for nodes 1 and 2, from the moment the command starts: until their
    ``overlay policy status`` row has the new set in force (``status``, as
    polled; ``reported``, the time the node itself gives for putting it in
    force), and until ``overlay policy explain`` on the node itself gives the
    new verdict (``explain``). ``apply`` is how long the command took."""
    bed = clean
    src, dst = "y/a", "x/a"  # denied by the first change, allowed again by the next
    deny = np("deny-ingress", "x", labels(pod="a"), ingress())
    figures: dict[str, dict[str, list[float]]] = {"node0": {"apply": []}}
    for i in (1, 2):
        figures[f"node{i}"] = {"status": [], "reported": [], "explain": []}
    for r in range(ROUNDS):
        denied = r % 2 == 0
        wall, t0 = time.time(), time.monotonic()
        want = bed.apply([deny] if denied else [], node=0)["hash"]
        figures["node0"]["apply"].append(time.monotonic() - t0)
        pending = {(i, what) for i in (1, 2) for what in ("status", "explain")}
        while pending:
            assert time.monotonic() - t0 < SYNC_TIMEOUT, f"round {r}: pending {sorted(pending)}"
            for i, what in sorted(pending):
                name = f"node{i}"
                if what == "status":
                    # (exit 1 while a node is behind: the rows are read either way)
                    rows = json.loads(bed.status(i).out)["rows"]
                    row = next((x for x in rows if x["node"] == name), None)
                    if row is None or not row["in_sync"] or row["hash"] != want:
                        continue
                    figures[name]["status"].append(time.monotonic() - t0)
                    # The node's report says when it put the set in force (its clock
                    # is this machine's): "age" seconds before this answer.
                    figures[name]["reported"].append(time.time() - row["age"] - wall)
                else:
                    v = bed.cli(
                        i, "--json", "policy", "explain",
                        bed.address(src), bed.address(dst), "80/TCP",
                    ).json()  # fmt: skip
                    if v["allowed"] is denied:
                        continue
                    figures[name]["explain"].append(time.monotonic() - t0)
                pending.discard((i, what))
    problems = bed.check(80, TCP, Reachability(PODS, True))  # the last round allowed all
    assert not problems, "\n".join(problems)
    summary = {
        node: {
            what: {
                "min": round(min(v), 4),
                "median": round(statistics.median(v), 4),
                "max": round(max(v), 4),
            }
            for what, v in by.items()
        }
        for node, by in figures.items()
    }
    record_property("propagation_rounds", ROUNDS)
    record_property("propagation_s", json.dumps(summary, sort_keys=True))
    print(f"\npropagation of {ROUNDS} changes applied on node0, seconds from the command's start:")
    for node, by in summary.items():
        for what, f in by.items():
            figure = f"min {f['min']:.3f}  median {f['median']:.3f}  max {f['max']:.3f}"
            print(f"  {node} {what:<8} {figure}")


# -- drops and verification ----------------------------------------------------------------


def _overlay_command() -> list[str]:
    """The ``overlay`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("overlay")
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "overlay.cli"]


@contextlib.contextmanager
def _follow(socket_path: str) -> Iterator[queue.Queue[str]]:
    """``overlay policy drops --follow --json`` running; its lines in a queue.
    Stopped by PID after use."""
    proc = subprocess.Popen(
        [*_overlay_command(), "--socket", socket_path, "policy", "drops", "--follow", "--json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, name="drops-follow", daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_drops_name_the_deciding_policy_and_verify_finds_no_disagreement(
    clean: DaemonPolicyBed,
) -> None:
    bed = clean
    s = SCENARIOS["default_deny_ingress"]()
    bed.apply(s.policies)
    bed.wait_in_sync()
    synced = time.time()

    # A denied probe, and the line overlay policy drops --follow prints for it on
    # the node of the destination.
    src, dst = "z/a", "x/b"  # on node 2 and node 1
    node = node_of(dst)
    seen = [json.loads(x) for x in bed.cli(node, "policy", "drops", "--json").ok().splitlines()]
    last = max((e["seq"] for e in seen), default=0)
    found: dict[str, Any] | None = None
    with _follow(bed.socket(node)) as lines:
        deadline = time.monotonic() + 20.0
        while found is None and time.monotonic() < deadline:
            # The engine reports a (port, rule) at most once a second: probe again
            # until a report of this probe comes.
            assert bed.probe([(src, dst)], 80, TCP, 0.3) == {(src, dst): False}
            until = time.monotonic() + 1.2
            while found is None and time.monotonic() < until:
                try:
                    e = json.loads(lines.get(timeout=0.2))
                except queue.Empty:
                    continue
                if (
                    e["seq"] > last
                    and e["src"] == bed.address(src)
                    and e["dst"] == bed.address(dst)
                    and e["dport"] == 80
                ):
                    found = e
    assert found is not None, "no drop reported for the denied probe"
    assert found["verdict"] == "deny" and found["direction"] == "ingress", found
    # Nothing allows it, and the policy that isolates x/b is what denies it.
    assert found["policy"] == "x/deny-ingress" and found["tier"] == "isolation", found
    assert found["pod"] == dst and found["protocol"] == TCP and found["tenant"] == TENANT, found

    # Every node verifies a round of its tables after the set is in force: no
    # disagreement, asked through each node.
    def verified() -> bool:
        summary = bed.cli(0, "--json", "policy", "verify").json()
        nodes = [n for n in summary["nodes"] if n["tenant"] == TENANT]
        return len(nodes) == 3 and all(
            n["checked"] and n["at"] and n["at"] >= synced and not n["skipped"] for n in nodes
        )

    bed.poll(verified, timeout=SYNC_TIMEOUT)
    for i in range(3):
        run = bed.cli(i, "--json", "policy", "verify")
        summary = json.loads(run.out)
        assert run.rc == 0 and summary["disagreements"] == 0, summary
        assert {n["node"] for n in summary["nodes"]} == {"node0", "node1", "node2"}, summary
        assert all(n["count"] == 0 and n["checked"] > 0 for n in summary["nodes"]), summary
    print(f"\ndrop reported on node{node}: {json.dumps(found, sort_keys=True)}")
