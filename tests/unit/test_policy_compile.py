"""The compiler: the shape of a per-port table, and (hypothesis) that
classifying through compiled tables gives exactly ``evaluate``'s verdicts on
random worlds, policies of all three kinds, and packets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay import policy
from overlay.errors import ConfigError
from overlay.policy.compile import evaluate_tables

XA, XB, YA = "10.244.1.10", "10.244.1.11", "10.244.2.10"
W = policy.World(
    namespaces={"x": {}, "y": {}},
    endpoints=[
        policy.Endpoint(XA, "x", {"pod": "a"}, {"http": (8080, "TCP")}),
        policy.Endpoint(XB, "x", {"pod": "b"}, {"http": (9090, "TCP")}),
        policy.Endpoint(YA, "y", {"pod": "a"}),
    ],
    node_addresses={"10.244.1.1"},
)


def np(spec: dict[str, Any], name: str = "p", ns: str = "x") -> policy.NetworkPolicy:
    return policy.NetworkPolicy.from_dict(
        {"metadata": {"name": name, "namespace": ns}, "spec": spec}
    )


def test_table_resolves_pods_to_hosts_and_subtracts_excepts() -> None:
    p = np(
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}},
                        {"ipBlock": {"cidr": "198.19.0.0/16", "except": ["198.19.128.0/17"]}},
                    ],
                    "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP"}],
                }
            ],
        }
    )
    t = policy.compile_port(W, [p], port_ip=XA, direction="ingress")
    assert t.isolated and t.isolated_by == "x/p" and t.node == ("10.244.1.1/32",)
    peers = ("10.244.1.10/32", "10.244.2.10/32", "198.19.0.0/17")
    assert [
        (r.cidrs, r.protocol, r.port_min, r.port_max, r.action, r.policy, r.rule)
        for r in t.networkpolicy
    ] == [
        (peers, "TCP", 80, 90, "allow", "x/p", 0),
        (peers, "UDP", 0, 65535, "allow", "x/p", 0),
    ]
    json.dumps(t.to_dict())  # plain data
    # x/b is not selected: not isolated, no rules.
    tb = policy.compile_port(W, [p], port_ip=XB, direction="ingress")
    assert not tb.isolated and tb.networkpolicy == ()


def test_egress_named_port_expands_per_destination_pod() -> None:
    p = np(
        {"podSelector": {}, "egress": [{"ports": [{"port": "http"}]}], "policyTypes": ["Egress"]}
    )
    t = policy.compile_port(W, [p], port_ip=XA, direction="egress")
    got = [(r.cidrs, r.port_min) for r in t.networkpolicy]
    assert got == [(("10.244.1.10/32",), 8080), (("10.244.1.11/32",), 9090)]  # y/a has none
    ti = policy.compile_port(
        W,
        [np({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})],
        port_ip=XB,
        direction="ingress",
    )
    assert [(r.cidrs, r.port_min) for r in ti.networkpolicy] == [(("0.0.0.0/0", "::/0"), 9090)]


def test_compile_port_refuses_unknown_port_and_direction() -> None:
    with pytest.raises(ConfigError) as e:
        policy.compile_port(W, port_ip="10.244.9.9", direction="ingress")
    assert e.value.field == "port_ip"
    with pytest.raises(ConfigError) as e:
        policy.compile_port(W, port_ip=XA, direction="in")  # type: ignore[arg-type]
    assert e.value.field == "direction"


# -- random worlds ------------------------------------------------------------

NSS = ("x", "y", "z")
KEYS = ("app", "tier")
VALUES = ("a", "b")
PORT_NAMES = ("web", "dns")
PORTS = (53, 80, 81)
PROTOS = ("TCP", "UDP", "SCTP")

label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)


@st.composite
def selectors(draw: st.DrawFn) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if draw(st.booleans()):
        sel["matchLabels"] = draw(label_sets)
    if draw(st.booleans()):
        op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
        req: dict[str, Any] = {"key": draw(st.sampled_from(KEYS)), "operator": op}
        if op in ("In", "NotIn"):
            req["values"] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2))
        sel["matchExpressions"] = [req]
    return sel


def ns_selectors() -> st.SearchStrategy[dict[str, Any]]:
    by_name = st.sampled_from(NSS).map(
        lambda n: {"matchLabels": {"kubernetes.io/metadata.name": n}}
    )
    return st.one_of(selectors(), by_name)


CIDRS = ("10.244.0.0/16", "10.244.1.0/24", "10.244.2.8/29", "198.19.0.0/16", "0.0.0.0/0")


@st.composite
def ip_blocks(draw: st.DrawFn) -> dict[str, Any]:
    cidr = draw(st.sampled_from(CIDRS))
    inside = {
        "10.244.0.0/16": ["10.244.1.0/24", "10.244.2.10/32", "10.244.3.0/25"],
        "10.244.1.0/24": ["10.244.1.10/32", "10.244.1.8/30"],
        "10.244.2.8/29": ["10.244.2.10/31"],
        "198.19.0.0/16": ["198.19.0.0/17"],
        "0.0.0.0/0": ["10.0.0.0/8", "198.19.0.5/32"],
    }[cidr]
    return {
        "cidr": cidr,
        "except": draw(st.lists(st.sampled_from(inside), max_size=2, unique=True)),
    }


@st.composite
def np_peers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("pod", "ns", "both", "ip")))
    if kind == "ip":
        return {"ipBlock": draw(ip_blocks())}
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(selectors())
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(ns_selectors())
    return peer


@st.composite
def np_ports(draw: st.DrawFn) -> dict[str, Any]:
    port: dict[str, Any] = {}
    if draw(st.booleans()):
        port["protocol"] = draw(st.sampled_from(PROTOS))
    kind = draw(st.sampled_from(("none", "num", "range", "name")))
    if kind == "num":
        port["port"] = draw(st.sampled_from(PORTS))
    elif kind == "range":
        port["port"] = draw(st.sampled_from(PORTS))
        port["endPort"] = port["port"] + draw(st.integers(0, 30))
    elif kind == "name":
        port["port"] = draw(st.sampled_from(PORT_NAMES))
    return port


@st.composite
def np_rules(draw: st.DrawFn, peers_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule[peers_key] = draw(st.lists(np_peers(), max_size=2))
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(np_ports(), max_size=2))
    return rule


@st.composite
def network_policies(draw: st.DrawFn, i: int) -> policy.NetworkPolicy:
    spec: dict[str, Any] = {"podSelector": draw(selectors())}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(np_rules("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(np_rules("to"), max_size=2))
    if draw(st.booleans()):
        spec["policyTypes"] = draw(
            st.sampled_from((["Ingress"], ["Egress"], ["Ingress", "Egress"]))
        )
    return np(spec, name=f"np{i}", ns=draw(st.sampled_from(NSS)))


@st.composite
def admin_peers(draw: st.DrawFn, egress: bool) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(("namespaces", "pods", "networks") if egress else ("namespaces", "pods"))
    )
    if kind == "namespaces":
        return {"namespaces": draw(ns_selectors())}
    if kind == "pods":
        return {
            "pods": {"namespaceSelector": draw(ns_selectors()), "podSelector": draw(selectors())}
        }
    return {"networks": draw(st.lists(st.sampled_from(CIDRS[:4]), min_size=1, max_size=2))}


@st.composite
def admin_ports(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("portNumber", "portRange", "namedPort")))
    if kind == "namedPort":
        return {"namedPort": draw(st.sampled_from(PORT_NAMES))}
    proto = draw(st.sampled_from(PROTOS))
    start = draw(st.sampled_from(PORTS))
    if kind == "portNumber":
        return {"portNumber": {"protocol": proto, "port": start}}
    return {
        "portRange": {"protocol": proto, "start": start, "end": start + draw(st.integers(1, 30))}
    }


@st.composite
def admin_rules(draw: st.DrawFn, direction: str, actions: tuple[str, ...]) -> dict[str, Any]:
    key = "from" if direction == "ingress" else "to"
    rule: dict[str, Any] = {
        "action": draw(st.sampled_from(actions)),
        key: draw(st.lists(admin_peers(direction == "egress"), min_size=1, max_size=2)),
    }
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(admin_ports(), min_size=1, max_size=2))
    return rule


@st.composite
def subjects(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"namespaces": draw(ns_selectors())}
    return {"pods": {"namespaceSelector": draw(ns_selectors()), "podSelector": draw(selectors())}}


@st.composite
def admin_policies(draw: st.DrawFn, i: int) -> policy.AdminNetworkPolicy:
    actions = ("Allow", "Deny", "Pass")
    return policy.AdminNetworkPolicy.from_dict(
        {
            "metadata": {"name": f"anp{i}"},
            "spec": {
                "priority": draw(st.integers(0, 3)),
                "subject": draw(subjects()),
                "ingress": draw(st.lists(admin_rules("ingress", actions), max_size=2)),
                "egress": draw(st.lists(admin_rules("egress", actions), max_size=2)),
            },
        }
    )


@st.composite
def baselines(draw: st.DrawFn) -> policy.BaselineAdminNetworkPolicy:
    actions = ("Allow", "Deny")
    return policy.BaselineAdminNetworkPolicy.from_dict(
        {
            "metadata": {"name": "default"},
            "spec": {
                "subject": draw(subjects()),
                "ingress": draw(st.lists(admin_rules("ingress", actions), max_size=2)),
                "egress": draw(st.lists(admin_rules("egress", actions), max_size=2)),
            },
        }
    )


@st.composite
def worlds(draw: st.DrawFn) -> policy.World:
    n = draw(st.integers(1, 6))
    endpoints = []
    for i in range(n):
        named = draw(
            st.dictionaries(
                st.sampled_from(PORT_NAMES),
                st.tuples(st.sampled_from(PORTS), st.sampled_from(PROTOS)),
                max_size=2,
            )
        )
        endpoints.append(
            policy.Endpoint(
                ip=f"10.244.{1 + i % 3}.{10 + i}",
                namespace=draw(st.sampled_from(NSS)),
                labels=draw(label_sets),
                named_ports=named,
            )
        )
    return policy.World(
        namespaces={n: draw(label_sets) for n in NSS},
        endpoints=endpoints,
        node_addresses={"10.244.0.1"},
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Any, ...]:
    w = draw(worlds())
    nps = [draw(network_policies(i)) for i in range(draw(st.integers(0, 3)))]
    anps = [draw(admin_policies(i)) for i in range(draw(st.integers(0, 2)))]
    base = draw(st.one_of(st.none(), baselines()))
    return w, nps, anps, base


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_compiled_tables_decide_as_evaluate(scenario: tuple[Any, ...]) -> None:
    w, nps, anps, base = scenario
    tables = {
        (str(ep.address), d): policy.compile_port(w, nps, anps, base, port_ip=ep.ip, direction=d)
        for ep in w.endpoints
        for d in ("ingress", "egress")
    }
    addrs = [ep.ip for ep in w.endpoints] + ["10.244.0.1", "198.19.0.5", "198.19.200.1", "10.9.9.9"]
    for src in addrs:
        for dst in addrs:
            if src == dst:
                continue
            for proto in PROTOS:
                for port in (53, 80, 95):
                    v = policy.evaluate(
                        w, nps, anps, base, src=src, dst=dst, port=port, protocol=proto
                    )
                    c = evaluate_tables(w, tables, src=src, dst=dst, port=port, protocol=proto)
                    assert c == v, (src, dst, port, proto)
            v = policy.evaluate(w, nps, anps, base, src=src, dst=dst, port=0, protocol="ICMP")
            assert evaluate_tables(w, tables, src=src, dst=dst, port=0, protocol="ICMP") == v
