"""Comparing two policy sets by effective connectivity (``policy.diff``), the
report's lines, and the world loaded from Namespace and Pod manifests; with
hypothesis, that ``diff`` is ``evaluate`` compared probe by probe and that
its default probes miss no port."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_compile import PROTOS, admin_policies, baselines, network_policies, scenarios

from overlay import policy
from overlay.errors import ConfigError
from overlay.policy.diff import default_ports, default_probes

XA, XB, YA, YB = "10.244.1.10", "10.244.1.11", "10.244.2.10", "10.244.2.11"

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: front}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {pod: a}}
  spec: {containers: [{name: c, image: busybox}]}
  status: {podIP: 10.244.1.10, phase: Running}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: x, labels: {pod: b}}
  spec: {containers: [{name: c}]}
  status: {podIP: 10.244.1.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: y, labels: {pod: a}}
  spec: {containers: [{name: c}]}
  status: {podIP: 10.244.2.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: y, labels: {pod: web}}
  spec:
    containers:
    - name: c
      ports:
      - {name: http, containerPort: 8080}
      - {name: dns, containerPort: 53, protocol: UDP}
      - {containerPort: 9000}
  status: {podIP: 10.244.2.11}
- apiVersion: v1
  kind: Pod
  metadata: {name: pending, namespace: y}
  spec: {containers: [{name: c}]}
  status: {phase: Pending}
- apiVersion: v1
  kind: Pod
  metadata: {name: agent, namespace: x}
  spec: {hostNetwork: true, containers: [{name: c}]}
  status: {podIP: 10.244.1.1}
"""

WORLD = policy.world_from(CLUSTER)


def sets(text: str) -> Any:
    return policy.split(policy.load(text)) if text.strip() else ([], [], None)


WEB_80 = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: y}
spec:
  podSelector: {matchLabels: {pod: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: front}}}]
    ports: [{port: 80}]
"""
WEB_80_81 = WEB_80.replace("ports: [{port: 80}]", "ports: [{port: 80}, {port: 81}]")


def lines(a: str, b: str, world: policy.World = WORLD) -> list[str]:
    return policy.format_report(policy.diff(world, sets(a), sets(b))).splitlines()


def test_world_from_reads_namespaces_pods_and_named_ports() -> None:
    assert WORLD.namespaces["x"] == {"team": "front", "kubernetes.io/metadata.name": "x"}
    assert [(e.namespace, e.name, e.ip) for e in WORLD.endpoints] == [
        ("x", "a", XA),
        ("x", "b", XB),
        ("y", "a", YA),
        ("y", "web", YB),
    ]  # the pending pod is skipped; the hostNetwork pod is the node
    assert WORLD.endpoints[3].named_ports == {"http": (8080, "TCP"), "dns": (53, "UDP")}
    assert WORLD.node_addresses == frozenset({ipaddress.ip_address("10.244.1.1")})


def test_one_added_port_reports_exactly_that_change_and_the_deciding_policies() -> None:
    got = lines(WEB_80, WEB_80_81)
    assert got == [
        "x/a -> y/web 81/TCP: denied (a: networkpolicy y/web isolation)"
        " -> allowed (b: networkpolicy y/web rule 0)",
        "x/b -> y/web 81/TCP: denied (a: networkpolicy y/web isolation)"
        " -> allowed (b: networkpolicy y/web rule 0)",
    ]
    d = policy.diff(WORLD, sets(WEB_80), sets(WEB_80_81))[0]
    assert d.probe == policy.Probe(XA, YB, 81, "TCP")
    assert (d.a.allowed, d.a.direction, d.b.allowed) == (False, "ingress", True)
    # And back: the same lines, the sides swapped.
    assert lines(WEB_80_81, WEB_80)[0] == (
        "x/a -> y/web 81/TCP: allowed (a: networkpolicy y/web rule 0)"
        " -> denied (b: networkpolicy y/web isolation)"
    )


def test_adding_a_policy_names_it_against_the_default() -> None:
    # Isolating y/web leaves namespace x its port 80 and nothing else: the
    # port after the rule's (81) and a port no rule names (65535) are probed.
    iso = "allowed (a: default) -> denied (b: networkpolicy y/web isolation)"
    assert lines("", WEB_80) == [
        f"x/a -> y/web 81/TCP: {iso}",
        f"x/a -> y/web 65535/TCP: {iso}",
        f"x/b -> y/web 81/TCP: {iso}",
        f"x/b -> y/web 65535/TCP: {iso}",
        f"y/a -> y/web 80/TCP: {iso}",
        f"y/a -> y/web 81/TCP: {iso}",
        f"y/a -> y/web 65535/TCP: {iso}",
    ]


def test_identical_sets_report_nothing() -> None:
    assert policy.diff(WORLD, sets(WEB_80), sets(WEB_80)) == []
    assert policy.format_report([]) == ""


def test_reordered_renamed_equivalent_set_reports_nothing() -> None:
    a = (
        WEB_80
        + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress]}
"""
    )
    b = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: quiet-b, namespace: x}
spec: {podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]},
       egress: [], policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: front-to-web, namespace: y}
spec:
  podSelector: {matchLabels: {pod: web}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}]
    ports: [{port: 80, endPort: 80, protocol: TCP}]
"""
    assert policy.diff(WORLD, sets(a), sets(b)) == []
    assert lines(a, WEB_80)  # and the egress deny is a difference


ANP = """
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: guard}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}
  ingress:
  - {action: ACTION, from: [{namespaces: {matchLabels: {team: front}}}]}
"""


def test_admin_pass_versus_deny_names_the_admin_policy() -> None:
    deny, pas = ANP.replace("ACTION", "Deny"), ANP.replace("ACTION", "Pass")
    # Pass hands x -> y to the NetworkPolicies: y/web allows port 80 only.
    got = lines(pas + "---" + WEB_80, deny + "---" + WEB_80)
    by_admin = "denied (b: admin guard rule 0)"
    assert got == [
        f"{src} -> {dst} {port}/TCP: allowed (a: {why}) -> {by_admin}"
        for src in ("x/a", "x/b")
        for dst, port, why in [
            ("y/a", 80, "default"),  # y/a: no NetworkPolicy, every port
            ("y/a", 81, "default"),
            ("y/a", 65535, "default"),
            ("y/web", 80, "networkpolicy y/web rule 0"),  # y/web: port 80 only
        ]
    ]
    # Pass with nothing below: x -> y is open, as with no ANP at all.
    assert policy.diff(WORLD, sets(pas), sets("")) == []


def test_named_port_rule_is_probed_on_the_resolved_number() -> None:
    named = WEB_80.replace("ports: [{port: 80}]", "ports: [{port: http}]")
    ports, protocols = default_ports(WORLD, sets(WEB_80), sets(named))
    assert {80, 81, 8080, 8081} <= set(ports) and protocols == ["TCP"]
    got = lines(WEB_80, named)
    assert got == [
        "x/a -> y/web 80/TCP: allowed (a: networkpolicy y/web rule 0)"
        " -> denied (b: networkpolicy y/web isolation)",
        "x/a -> y/web 8080/TCP: denied (a: networkpolicy y/web isolation)"
        " -> allowed (b: networkpolicy y/web rule 0)",
        "x/b -> y/web 80/TCP: allowed (a: networkpolicy y/web rule 0)"
        " -> denied (b: networkpolicy y/web isolation)",
        "x/b -> y/web 8080/TCP: denied (a: networkpolicy y/web isolation)"
        " -> allowed (b: networkpolicy y/web rule 0)",
    ]


def test_explicit_probes_and_bad_input() -> None:
    d = policy.diff(
        WORLD, sets(WEB_80), sets(""), probes=[(XA, YB, 80, "TCP"), (YA, YB, 80, "TCP")]
    )
    assert [x.probe.src for x in d] == [YA]  # x/a -> y/web:80 is allowed by both
    with pytest.raises(ConfigError) as e:
        policy.diff(WORLD, sets(""), sets(""), probes=[(XA, YB, 70000, "TCP")])
    assert e.value.field == "probes[0].port"
    with pytest.raises(ConfigError) as e:
        policy.diff(WORLD, sets(""), "policies/")
    assert e.value.field == "b" and "policy.split" in e.value.expected
    with pytest.raises(ConfigError) as e:
        policy.diff(WORLD, ([1], [], None), sets(""))
    assert e.value.field == "a.networkpolicies[0]"
    # load's list is a set too
    assert policy.diff(WORLD, policy.load(WEB_80), sets(WEB_80)) == []


NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n"


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "<text> document 1 kind", "Pod"),
        ("apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n", "<text> document 1 apiVersion", "v1"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n"
            "status: {podIP: 10.244.1.10}\n",
            "<text> document 1 metadata.namespace",
            "Namespace",
        ),
        (
            NS + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n"
            "status: {podIP: 10.244.1.300}\n",
            "<text> document 2 status.podIP",
            "address",
        ),
        (
            NS + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {a: 1}}\n"
            "status: {podIP: 10.244.1.3}\n",
            "<text> document 2 metadata.labels.a",
            "string",
        ),
        (
            NS + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n"
            "spec: {containers: [{ports: [{name: http, containerPort: 0}]}]}\n"
            "status: {podIP: 10.244.1.3}\n",
            "<text> document 2 spec.containers[0].ports[0].containerPort",
            "1-65535",
        ),
        (
            NS + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n"
            "spec: {containers: [{ports: [{name: a, containerPort: 1}]},"
            " {ports: [{name: a, containerPort: 2}]}]}\n"
            "status: {podIP: 10.244.1.3}\n",
            "<text> document 2 spec.containers[1].ports[0].name",
            "no other port",
        ),
        (
            NS + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n"
            "status: {podIP: 10.244.1.3}\n---\n"
            "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: x}\n"
            "status: {podIP: 10.244.1.3}\n",
            "<text> document 3 status.podIP",
            "document 2",
        ),
        (NS + NS, "<text> document 2 metadata.name", "not already"),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: X}\n",
            "<text> document 1 metadata.name",
            "namespace name",
        ),
        ("apiVersion: v1\nkind: List\nitems: 3\n", "<text> document 1 items", "list"),
    ],
)
def test_world_from_errors_name_the_document_and_field(
    text: str, field: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as e:
        policy.world_from(text)
    assert e.value.field == field, e.value
    assert expected in e.value.expected


def test_world_from_directory_and_objects(tmp_path: Any) -> None:
    (tmp_path / "10-ns.yaml").write_text(NS)
    (tmp_path / "20-pod.json").write_text(
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"},'
        ' "status": {"podIP": "10.244.1.3"}}'
    )
    w = policy.world_from(tmp_path, node_addresses=["10.244.1.1"])
    assert [(e.name, e.ip) for e in w.endpoints] == [("p", "10.244.1.3")]
    with pytest.raises(ConfigError) as e:
        policy.world_from([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}])
    assert e.value.field == "objects[0] metadata.namespace"  # "default" is not declared
    with pytest.raises(ConfigError) as e:
        policy.world_from(tmp_path / "missing")
    assert e.value.field == "path"


# -- diff is evaluate, compared probe by probe ------------------------------


@st.composite
def two_sets(draw: st.DrawFn) -> tuple[Any, ...]:
    w, nps, anps, base = draw(scenarios())
    nps2 = [draw(network_policies(i)) for i in range(draw(st.integers(0, 3)))]
    anps2 = [draw(admin_policies(i)) for i in range(draw(st.integers(0, 2)))]
    base2 = draw(st.one_of(st.none(), baselines()))
    # Often a small edit of the first set, so that some answers agree.
    b = draw(
        st.sampled_from(
            [
                (nps2, anps2, base2),
                (nps + nps2[:1], anps, base),
                (nps, anps2, base),
                (nps[::-1], anps, base2),
            ]
        )
    )
    return w, (nps, anps, base), b


def probe_verdicts(w: policy.World, s: Any, p: policy.Probe) -> bool:
    return policy.evaluate(w, *s, src=p.src, dst=p.dst, port=p.port, protocol=p.protocol).allowed


WINDOW = (1, 52, 53, 54, 60, 79, 80, 81, 82, 95, 110, 111, 112, 1000, 65535)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(two_sets())
def test_diff_is_evaluate_probe_by_probe(case: tuple[Any, ...]) -> None:
    w, a, b = case
    assert policy.diff(w, a, a) == []
    probes = default_probes(w, a, b)
    got = policy.diff(w, a, b)
    want = [p for p in probes if probe_verdicts(w, a, p) != probe_verdicts(w, b, p)]
    assert {d.probe for d in got} == set(want)
    for d in got:
        p = d.probe
        assert d.a == policy.evaluate(w, *a, src=p.src, dst=p.dst, port=p.port, protocol=p.protocol)
        assert d.b == policy.evaluate(w, *b, src=p.src, dst=p.dst, port=p.port, protocol=p.protocol)
    # The default probes miss nothing: every port and protocol of a pair
    # behaves as some probe of that pair.
    changed = {(d.probe.src, d.probe.dst) for d in got}
    for s in w.endpoints[:3]:
        for t in w.endpoints[:3]:
            if s is t or (s.ip, t.ip) in changed:
                continue
            for proto in PROTOS:
                for port in WINDOW:
                    p = policy.Probe(s.ip, t.ip, port, proto)
                    assert probe_verdicts(w, a, p) == probe_verdicts(w, b, p), p
