"""Network policy over time, on real nodes and real traffic: what changes when
labels, namespaces or the policy set change, what happens to established
connections, ports born before their policy, refused policies, audit mode,
and the events and hit counters that name the deciding rule.

The nine-pod bed of ``policy_bed`` (three nodes) is shared by the module;
each test puts back what it changed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from policy_bed import LONG_S, NAMED, VNI, PolicyBed, bed_prefix, node_of, policy_bed
from policy_matrix import NS_NAME, Reachability, all_pods, ingress, labels, np, pod_ip

from overlay.errors import ConfigError
from overlay.node import PolicyEvent
from overlay.policy.engine import RuleRef
from overlay.testing.cluster import Cluster
from overlay.testing.netns import Topology
from overlay.testing.plugin import root_unavailable_reason

pytestmark = pytest.mark.root

PODS = all_pods()
TCP = "TCP"
ANP_API = "policy.networking.k8s.io/v1alpha1"


def reach() -> Reachability:
    return Reachability(PODS, True)


@pytest.fixture(scope="module")
def bed() -> Iterator[PolicyBed]:
    reason = root_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Topology(bed_prefix("pg")) as topo, policy_bed(topo) as b:
        yield b


@pytest.fixture
def clean(bed: PolicyBed) -> Iterator[PolicyBed]:
    """The bed; afterwards no policy, original labels."""
    try:
        yield bed
    finally:
        bed.apply([])
        for pod in PODS:
            if bed.labels[pod] != {"pod": pod.split("/")[1]}:
                bed.set_pod_labels(pod, {"pod": pod.split("/")[1]})
        for ns in ("x", "y", "z"):
            bed.set_namespace_labels(ns, {"ns": ns})


def assert_reach(bed: PolicyBed, port: int, proto: str, expected: Reachability) -> None:
    wrong = bed.check(port, proto, expected)
    assert not wrong, "\n".join(wrong)


def echo(sock: socket.socket, data: bytes, timeout: float) -> bytes | None:
    """Send data on a TCP echo connection; what comes back in time, or None."""
    sock.settimeout(timeout)
    sock.sendall(data)
    got = b""
    try:
        while len(got) < len(data):
            chunk = sock.recv(len(data) - len(got))
            if not chunk:
                return None
            got += chunk
    except TimeoutError:
        return None
    return got


def drops(bed: PolicyBed, node: int, reason: str) -> int:
    return int(bed.nodes[node].counters()["drops"][reason])


def test_a_pod_label_change_is_enforced_at_once(clean: PolicyBed) -> None:
    # upstream "should allow ingress access from updated pod"
    rule = {"from": [{"podSelector": labels(pod2="updated")}]}
    clean.apply([np("allow-client-a-via-pod-selector", "x", labels(pod="a"), ingress(rule))])
    assert_reach(clean, 80, TCP, reach().expect_all_ingress("x/a", False))
    clean.set_pod_labels("x/b", {"pod": "b", "pod2": "updated"})
    assert_reach(
        clean, 80, TCP, reach().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    )
    # and taking the label away again isolates it again
    clean.set_pod_labels("x/b", {"pod": "b"})
    assert_reach(clean, 80, TCP, reach().expect_all_ingress("x/a", False))


def test_a_namespace_label_change_is_enforced_at_once(clean: PolicyBed) -> None:
    # upstream "should allow ingress access from updated namespace"
    rule = {"from": [{"namespaceSelector": labels(ns2="updated")}]}
    clean.apply([np("allow-client-a-via-ns-selector", "x", labels(pod="a"), ingress(rule))])
    assert_reach(clean, 80, TCP, reach().expect_all_ingress("x/a", False))
    clean.set_namespace_labels("y", {"ns": "y", "ns2": "updated"})
    r = reach().expect_all_ingress("x/a", False).expect_peer("y/", "x/a", True)
    assert_reach(clean, 80, TCP, r)


def test_deleting_a_policy_restores_traffic(clean: PolicyBed) -> None:
    clean.apply([np("deny-all", "x", {}, ingress(), {"policyTypes": ["Egress"]})])
    denied = reach().expect_peer("", "x/", False).expect_peer("x/", "", False)
    assert_reach(clean, 80, TCP, denied)
    clean.apply([])
    assert_reach(clean, 80, TCP, reach())


def test_a_new_deny_cuts_established_connections_and_lifting_it_resumes_them(
    clean: PolicyBed,
) -> None:
    node = node_of("x/a")
    # one connection from another node, one from x/a's own node, one x/a opened
    across = clean.connect("y/a", "x/a", 80)
    local = clean.connect("y/c", "x/a", 80)
    outbound = clean.connect("x/a", "y/a", 80)
    assert node_of("y/a") != node and node_of("y/c") == node
    try:
        for s in (across, local, outbound):
            assert echo(s, b"hello", LONG_S) == b"hello"
        before = drops(clean, node, "policy_denied_ingress")
        clean.apply([np("deny-ingress", "x", {}, ingress())])
        # The next segment into x/a is refused: no echo comes back.
        assert echo(across, b"again", 2.0) is None
        assert echo(local, b"again", 2.0) is None
        assert drops(clean, node, "policy_denied_ingress") > before
        # What x/a opened itself stays allowed: its replies belong to it.
        assert echo(outbound, b"still", LONG_S) == b"still"
        # Lifting the deny lets the retransmissions through: the streams resume.
        clean.apply([])
        for s in (across, local):
            s.settimeout(30.0)
            assert s.recv(5) == b"again"
    finally:
        for s in (across, local, outbound):
            s.close()


def test_a_refused_policy_changes_nothing(clean: PolicyBed) -> None:
    deny = np("deny-ingress", "x", {}, ingress())
    clean.apply([deny])
    bad = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "typo", "namespace": "y"},
        "spec": {"podSelecter": {}},
    }
    net = clean.nets[0]
    with pytest.raises(ConfigError) as exc:
        net.apply_policies([np("allow-all", "x", {}, ingress({})), bad])
    assert "policies[1]" in exc.value.field and "spec.podSelecter" in exc.value.field
    with pytest.raises(ConfigError) as exc:
        net.set_namespace("x", {"team": "not a label value"})
    assert exc.value.field == "labels.team"
    with pytest.raises(ConfigError) as exc:
        clean.ports["x/a"].set_labels({"-bad": "a"})
    assert clean.ports["x/a"].labels == {"pod": "a"}
    assert_reach(clean, 80, TCP, reach().expect_peer("", "x/", False))


def test_audit_mode_counts_and_reports_denies_and_forwards(clean: PolicyBed) -> None:
    for n in clean.nodes:
        n.events()  # start from an empty ring
    before = sum(int(n.counters()["node"]["policy_audit"]) for n in clean.nodes)
    clean.apply([np("deny-ingress", "x", {}, ingress())], audit=True)
    assert_reach(clean, 80, TCP, reach())
    after = sum(int(n.counters()["node"]["policy_audit"]) for n in clean.nodes)
    assert after > before
    node = node_of("x/a")
    events = clean.nodes[node].policy_events(clean.nodes[node].events())
    audited = [e for e in events if e.port is clean.ports["x/a"]]
    assert audited, events
    e = audited[0]
    assert (e.verdict, e.direction, e.tier, e.policy, e.dst, e.dport, e.proto) == (
        "audit",
        "ingress",
        "isolation",
        "x/deny-ingress",
        pod_ip("x/a"),
        80,
        6,
    )


def test_events_hits_and_explain_name_the_deciding_rule(clean: PolicyBed) -> None:
    deny_y = {
        "apiVersion": ANP_API,
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": "deny-y"},
        "spec": {
            "priority": 10,
            "subject": {"namespaces": {"matchLabels": {NS_NAME: "x"}}},
            "ingress": [
                {
                    "name": "no-y",
                    "action": "Deny",
                    "from": [{"namespaces": {"matchLabels": {NS_NAME: "y"}}}],
                }
            ],
        },
    }
    for n in clean.nodes:
        n.events()
    clean.apply([], admin=[deny_y])
    assert_reach(clean, 80, TCP, reach().expect_peer("y/", "x/", False))
    node = node_of("x/a")
    events: list[PolicyEvent] = clean.nodes[node].policy_events(clean.nodes[node].events())
    mine = [e for e in events if e.port is clean.ports["x/a"]]
    assert mine and all(
        (e.verdict, e.tier, e.policy, e.rule) == ("deny", "admin", "deny-y", 0) for e in mine
    ), events
    assert {e.src for e in mine} <= {pod_ip(p) for p in PODS if p.startswith("y/")}
    hits = clean.ports["x/a"].policy_hits("ingress")
    assert hits[RuleRef("admin", "deny-y", 0)] >= 3  # y/a, y/b, y/c
    v = clean.nets[node].explain(pod_ip("y/b"), pod_ip("x/a"), 80)
    assert (v.allowed, v.tier, v.policy, v.rule, v.direction) == (
        False,
        "admin",
        "deny-y",
        0,
        "ingress",
    )
    table = clean.nets[node].policy_table(clean.ports["x/a"], "ingress")
    assert table is not None and table.admin[0].policy == "deny-y"


def test_a_port_born_pending_passes_nothing_until_its_policy_is_set(
    overlay_topology: Topology,
) -> None:
    with Cluster(overlay_topology, n_nodes=2) as c:  # one node wired to a peer
        c.add_network(VNI, "acme", nodes=[0])
        net = c.nodes[0].network(VNI)
        pods: dict[str, Any] = {}
        for i, (name, pending) in enumerate((("open", False), ("pending", True)), start=1):
            ns = overlay_topology.add_netns(name)
            port = net.add_port(
                f"02:00:00:00:01:{i:02x}",
                [f"10.244.1.{i + 1}/16"],
                ifname=f"pp{name}"[:15],
                namespace="x",
                named_ports=NAMED,
                policy_pending=pending,
            )
            port.move_to_netns(ns.path, "eth0")
            pods[name] = (ns, port)
        c.start()
        ns_open, _ = pods["open"]
        ns_pending, port_pending = pods["pending"]
        server = ns_open.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("10.244.1.2", 80))
        server.listen(8)
        c.nodes[0].events()
        client = ns_pending.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(1.5)
        assert client.connect_ex(("10.244.1.2", 80)) != 0
        client.close()
        assert c.nodes[0].counters()["drops"]["policy_denied_egress"] > 0
        events = c.nodes[0].policy_events(c.nodes[0].events())
        assert any(e.port is port_pending and e.tier == "pending" for e in events), events
        net.apply_policies([])  # no policy at all: the port is released
        client = ns_pending.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(LONG_S)
        client.connect(("10.244.1.2", 80))
        client.close()
        # A port added once the network has policies is born isolated, and has
        # its tables before add_port returns.
        net.apply_policies([np("deny-ingress", "x", {}, ingress())])
        late = net.add_port("02:00:00:00:01:09", ["10.244.1.9/16"], ifname="pplate", namespace="x")
        table = net.policy_table(late, "ingress")
        assert table is not None and table.isolated and table.isolated_by == "x/deny-ingress"
        server.close()
