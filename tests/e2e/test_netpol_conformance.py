"""The upstream NetworkPolicy conformance scenarios on real nodes and real traffic.

Kubernetes' test/e2e/network/netpol builds namespaces x, y, z with pods a, b,
c serving ports 80 and 81 and compares an expected reachability table with
real probes. Here the nine pods are namespaces behind real TAPs spread over
three nodes (``policy_bed``); the policies go in through the embedding API
(``Network.apply_policies`` on every node, as a control plane would), and
every ordered pair is probed with a real TCP connect or UDP exchange.

Each scenario's table is first checked against the reference evaluator and
the compiled tables (``policy_matrix.observe``), so a wrong expectation fails
as such, and then against the wire. The scenarios follow the upstream
``f.It`` of the same name (network_policy.go), extended to all nine pods,
plus the admin tiers (AdminNetworkPolicy, BaselineAdminNetworkPolicy) of
policy.networking.k8s.io/v1alpha1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from policy_bed import PolicyBed, bed_prefix, policy_bed
from policy_matrix import (
    NS_NAME,
    Reachability,
    all_pods,
    egress,
    grid,
    ingress,
    labels,
    np,
    observe,
    pod_ip,
    world,
)

from overlay import policy
from overlay.testing.netns import Topology
from overlay.testing.plugin import root_unavailable_reason

pytestmark = pytest.mark.root

TCP, UDP = "TCP", "UDP"
PODS = all_pods()
ANP_API = "policy.networking.k8s.io/v1alpha1"
NOT_X = {"matchExpressions": [{"key": NS_NAME, "operator": "NotIn", "values": ["x"]}]}


def reach() -> Reachability:
    return Reachability(PODS, True)


def anp(name: str, priority: int, subject: dict[str, Any], **rules: Any) -> dict[str, Any]:
    return {
        "apiVersion": ANP_API,
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"priority": priority, "subject": subject, **rules},
    }


def banp(subject: dict[str, Any], **rules: Any) -> dict[str, Any]:
    return {
        "apiVersion": ANP_API,
        "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": "default"},
        "spec": {"subject": subject, **rules},
    }


def ns_sel(name: str) -> dict[str, Any]:
    return {"matchLabels": {NS_NAME: name}}


def rule(action: str, peers_key: str, *peers: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, peers_key: list(peers)}


def raw_np(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A NetworkPolicy as Kubernetes serves it (a dict), for the traps of defaulting."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass
class Scenario:
    """Policies (objects or dicts) and, per (port, protocol), the expected table."""

    policies: list[Any]
    probes: list[tuple[int, str, Reachability]] = field(default_factory=list)


def _large_cidr(ip: str) -> str:
    """makeLargeCIDRForIP: the /4 around the address."""
    return str(ipaddress.ip_network(f"{ip}/4", strict=False))


def _scenarios() -> dict[str, Callable[[], Scenario]]:
    out: dict[str, Callable[[], Scenario]] = {}

    def scenario(fn: Callable[[], Scenario]) -> Callable[[], Scenario]:
        out[fn.__name__] = fn
        return fn

    @scenario
    def default_deny_ingress() -> Scenario:
        return Scenario(
            [np("deny-ingress", "x", {}, ingress())],
            [(80, TCP, reach().expect_peer("", "x/", False))],
        )

    @scenario
    def default_deny_all_tcp_and_udp() -> Scenario:
        r = reach().expect_peer("", "x/", False).expect_peer("x/", "", False)
        return Scenario(
            [np("deny-all", "x", {}, ingress(), egress())], [(80, TCP, r), (81, UDP, r)]
        )

    @scenario
    def allow_from_namespace() -> Scenario:
        rule_ = {"from": [{"namespaceSelector": labels(**{NS_NAME: "y"})}]}
        pol = np("allow-client-a-via-ns-selector", "x", labels(pod="a"), ingress(rule_))
        r = reach().expect_all_ingress("x/a", False).expect_peer("y/", "x/a", True)
        return Scenario([pol], [(80, TCP, r)])

    @scenario
    def pod_or_namespace() -> Scenario:
        rule_ = {"from": [{"namespaceSelector": NOT_X}, {"podSelector": labels(pod="b")}]}
        pol = np("allow-ns-y-match-selector", "x", labels(pod="a"), ingress(rule_))
        r = reach().expect("x/c", "x/a", False)
        return Scenario([pol], [(80, TCP, r)])

    @scenario
    def pod_and_namespace() -> Scenario:
        rule_ = {"from": [{"namespaceSelector": NOT_X, "podSelector": labels(pod="b")}]}
        pol = np("allow-ns-y-podselector-and-nsselector", "x", labels(pod="a"), ingress(rule_))
        r = (
            reach()
            .expect_all_ingress("x/a", False)
            .expect("y/b", "x/a", True)
            .expect("z/b", "x/a", True)
        )
        return Scenario([pol], [(80, TCP, r)])

    @scenario
    def egress_to_cidr_block() -> Scenario:
        rule_ = {"to": [{"ipBlock": {"cidr": f"{pod_ip('y/b')}/32"}}]}
        pol = np("allow-client-a-via-cidr-egress-rule", "x", labels(pod="a"), egress(rule_))
        r = reach().expect_all_egress("x/a", False).expect("x/a", "y/b", True)
        return Scenario([pol], [(80, TCP, r)])

    @scenario
    def ipblock_except() -> Scenario:
        xb = pod_ip("x/b")
        rule_ = {"to": [{"ipBlock": {"cidr": _large_cidr(xb), "except": [f"{xb}/32"]}}]}
        pol = np("allow-client-a-via-cidr-egress-rule", "x", labels(pod="a"), egress(rule_))
        return Scenario([pol], [(80, TCP, reach().expect("x/a", "x/b", False))])

    @scenario
    def named_port_ingress() -> Scenario:
        pol = np("allow-all", "x", {}, ingress({"ports": [{"port": "serve-81-tcp"}]}))
        return Scenario(
            [pol], [(81, TCP, reach()), (80, TCP, reach().expect_peer("", "x/", False))]
        )

    @scenario
    def named_port_egress_udp() -> Scenario:
        # Resolved on each destination pod, by name and protocol.
        pol = np(
            "allow-egress",
            "x",
            {},
            egress({"ports": [{"port": "serve-80-udp", "protocol": UDP}]}),
        )
        denied = reach().expect_peer("x/", "", False)
        return Scenario([pol], [(80, UDP, reach()), (81, UDP, denied), (80, TCP, denied)])

    @scenario
    def egress_deny_by_podselector() -> Scenario:
        pol = np("deny-egress-for-a", "x", labels(pod="a"), egress())
        return Scenario([pol], [(80, TCP, reach().expect_all_egress("x/a", False))])

    @scenario
    def end_port_range() -> Scenario:
        pol = np(
            "allow-81-to-82",
            "x",
            labels(pod="a"),
            ingress({"ports": [{"port": 81, "endPort": 82}]}),
        )
        return Scenario(
            [pol], [(81, TCP, reach()), (80, TCP, reach().expect_all_ingress("x/a", False))]
        )

    @scenario
    def protocol_only_tcp() -> Scenario:
        pol = np(
            "allow-ingress-by-proto", "x", labels(pod="a"), ingress({"ports": [{"protocol": TCP}]})
        )
        return Scenario(
            [pol], [(80, TCP, reach()), (80, UDP, reach().expect_all_ingress("x/a", False))]
        )

    @scenario
    def policy_types_traps() -> Scenario:
        # policyTypes [Egress] alone leaves ingress open; egress: [] without
        # policyTypes isolates ingress only (Ingress is always a default type).
        egress_only = raw_np("egress-only", "x", {"podSelector": {}, "policyTypes": ["Egress"]})
        no_types = raw_np("no-types", "y", {"podSelector": {}, "egress": []})
        r = reach().expect_peer("x/", "", False).expect_peer("", "y/", False)
        return Scenario([egress_only, no_types], [(80, TCP, r)])

    @scenario
    def anp_deny_over_networkpolicy_allow() -> Scenario:
        allow_all = np("allow-all", "x", {}, ingress({}))
        deny_y = anp(
            "deny-y",
            10,
            {"namespaces": ns_sel("x")},
            ingress=[rule("Deny", "from", {"namespaces": ns_sel("y")})],
        )
        return Scenario([allow_all, deny_y], [(80, TCP, reach().expect_peer("y/", "x/", False))])

    @scenario
    def anp_pass_to_networkpolicy() -> Scenario:
        subject = {"namespaces": ns_sel("x")}
        pass_y = anp(
            "pass-y", 1, subject, ingress=[rule("Pass", "from", {"namespaces": ns_sel("y")})]
        )
        deny_all = anp("deny-all", 2, subject, ingress=[rule("Deny", "from", {"namespaces": {}})])
        only_b = np(
            "from-pod-b",
            "x",
            {},
            ingress({"from": [{"namespaceSelector": {}, "podSelector": labels(pod="b")}]}),
        )
        r = reach().expect_peer("", "x/", False).expect_peer("y/b", "x/", True)
        return Scenario([pass_y, deny_all, only_b], [(80, TCP, r)])

    @scenario
    def banp_only_where_no_networkpolicy_isolates() -> Scenario:
        base = banp(
            {
                "namespaces": {
                    "matchExpressions": [{"key": NS_NAME, "operator": "In", "values": ["x", "y"]}]
                }
            },
            ingress=[rule("Deny", "from", {"namespaces": {}})],
        )
        open_y = np("allow-all", "y", {}, ingress({}))
        return Scenario([base, open_y], [(80, TCP, reach().expect_peer("", "x/", False))])

    return out


SCENARIOS = _scenarios()


@pytest.fixture(scope="module")
def bed() -> Iterator[PolicyBed]:
    """One bed for the module (building it costs more than a scenario)."""
    reason = root_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Topology(bed_prefix("pc")) as topo, policy_bed(topo) as b:
        yield b


def _objects(policies: list[Any]) -> list[policy.PolicyObject]:
    out: list[policy.PolicyObject] = []
    for p in policies:
        if not isinstance(p, dict):
            out.append(p)
        elif p["kind"] == "NetworkPolicy":
            out.append(policy.NetworkPolicy.from_dict(p))
        elif p["kind"] == "AdminNetworkPolicy":
            out.append(policy.AdminNetworkPolicy.from_dict(p))
        else:
            out.append(policy.BaselineAdminNetworkPolicy.from_dict(p))
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_upstream_scenario_on_the_wire(bed: PolicyBed, name: str) -> None:
    s = SCENARIOS[name]()
    objs = _objects(s.policies)
    for port, proto, expected in s.probes:  # the expectation is the semantics'
        wrong = observe(world(PODS), objs, port, proto, expected)
        assert not wrong, "\n".join([grid(expected), *wrong])
    bed.apply(s.policies)  # dicts and objects, as an embedder hands them over
    try:
        problems = [line for port, proto, r in s.probes for line in bed.check(port, proto, r)]
        assert not problems, "\n".join(problems)
        # explain answers from the same tables, naming who decided.
        for port, proto, expected in s.probes:
            for (f, t), ok in expected.table.items():
                if f == t:
                    continue
                v = bed.nets[0].explain(pod_ip(f), pod_ip(t), port, proto)
                assert v.allowed == ok, (f, t, port, proto, v)
    finally:
        bed.apply([])
