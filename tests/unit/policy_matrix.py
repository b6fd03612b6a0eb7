"""The truth-table model of the upstream NetworkPolicy conformance tests.

Kubernetes' e2e suite (test/e2e/network/netpol) builds namespaces x, y, z
with pods a, b, c (labels ``pod=<name>``; namespaces carry
``kubernetes.io/metadata.name``), each serving ports 80 and 81 over TCP, UDP
and SCTP on container ports named ``serve-<port>-<proto>``, then compares an
expected reachability table (every ordered pair of pods, loopback ignored)
with what it probes. Here the probe is ``policy.evaluate`` (and the compiled
tables): the same tables, checked without a cluster.

``Reachability`` starts all-allowed; ``expect``, ``expect_peer`` (empty
namespace or pod = any), ``expect_all_ingress`` (a column) and
``expect_all_egress`` (a row) override, later calls winning, as upstream.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from overlay import policy
from overlay.policy.compile import evaluate_tables

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
NODE = "10.244.0.1"


def pod_ip(pod: str) -> str:
    ns, name = pod.split("/")
    return f"10.244.{NAMESPACES.index(ns) + 1}.{PODS.index(name) + 10}"


def world(
    pods: Iterable[str],
    ns_labels: dict[str, dict[str, str]] | None = None,
    pod_labels: dict[str, dict[str, str]] | None = None,
) -> policy.World:
    ns_labels = ns_labels or {}
    pod_labels = pod_labels or {}
    named = {
        f"serve-{port}-{proto.lower()}": (port, proto)
        for port in (80, 81)
        for proto in ("TCP", "UDP", "SCTP")
    }
    return policy.World(
        namespaces={ns: {"ns": ns, **ns_labels.get(ns, {})} for ns in NAMESPACES},
        endpoints=[
            policy.Endpoint(
                ip=pod_ip(p),
                namespace=p.split("/")[0],
                labels={"pod": p.split("/")[1], **pod_labels.get(p, {})},
                named_ports=named,
                name=p,
            )
            for p in pods
        ],
        node_addresses={NODE},
    )


def np(
    name: str, namespace: str, pod_selector: dict[str, Any], *sets: dict[str, Any]
) -> policy.NetworkPolicy:
    """A NetworkPolicy built as upstream's GenNetworkPolicyWithNameAndPodSelector
    with SetSpecIngressRules/SetSpecEgressRules (``ingress()``/``egress()``)."""
    spec: dict[str, Any] = {"podSelector": pod_selector}
    for s in sets:
        for key, value in s.items():
            if key == "policyTypes":
                spec.setdefault("policyTypes", []).extend(value)
            else:
                spec.setdefault(key, []).extend(value)
    return policy.NetworkPolicy.from_dict(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def ingress(*rules: dict[str, Any]) -> dict[str, Any]:
    """SetSpecIngressRules: the rules, and Ingress in policyTypes."""
    return {"ingress": list(rules), "policyTypes": ["Ingress"]}


def egress(*rules: dict[str, Any]) -> dict[str, Any]:
    """SetSpecEgressRules: the rules, and Egress in policyTypes."""
    return {"egress": list(rules), "policyTypes": ["Egress"]}


def labels(**kv: str) -> dict[str, Any]:
    return {"matchLabels": dict(kv)}


NS_NAME = "kubernetes.io/metadata.name"


class Reachability:
    def __init__(self, pods: Iterable[str], default: bool = True) -> None:
        self.pods = list(pods)
        self.table = {(f, t): default for f in self.pods for t in self.pods}

    def expect(self, src: str, dst: str, ok: bool) -> Reachability:
        self.table[(src, dst)] = ok
        return self

    def expect_peer(self, src: str, dst: str, ok: bool) -> Reachability:
        """``src``/``dst`` as "ns/pod", "ns/" (any pod) or "" (anything)."""

        def match(pattern: str, pod: str) -> bool:
            ns, _, name = pattern.partition("/")
            pns, pname = pod.split("/")
            return (not ns or ns == pns) and (not name or name == pname)

        for f, t in self.table:
            if match(src, f) and match(dst, t):
                self.table[(f, t)] = ok
        return self

    def expect_all_ingress(self, pod: str, ok: bool) -> Reachability:
        return self.expect_peer("", pod, ok)

    def expect_all_egress(self, pod: str, ok: bool) -> Reachability:
        return self.expect_peer(pod, "", ok)


def observe(
    w: policy.World,
    policies: list[Any],
    port: int,
    protocol: str,
    expected: Reachability,
) -> list[str]:
    """Probe every ordered pair (loopback ignored, as upstream) with both the
    evaluator and the compiled tables; the differences as readable lines."""
    nps, admin, baseline = policy.split(policies)
    tables = {
        (str(ep.address), d): policy.compile_port(
            w, nps, admin, baseline, port_ip=ep.ip, direction=d
        )
        for ep in w.endpoints
        for d in ("ingress", "egress")
    }
    wrong = []
    for (f, t), ok in sorted(expected.table.items()):
        if f == t:
            continue
        v = policy.evaluate(
            w, nps, admin, baseline, src=pod_ip(f), dst=pod_ip(t), port=port, protocol=protocol
        )
        c = evaluate_tables(w, tables, src=pod_ip(f), dst=pod_ip(t), port=port, protocol=protocol)
        if v.allowed != ok:
            wrong.append(f"{f} -> {t} {port}/{protocol}: expected {ok}, evaluate said {v}")
        if c != v:
            wrong.append(f"{f} -> {t} {port}/{protocol}: compiled {c} != evaluated {v}")
    return wrong


def grid(expected: Reachability) -> str:
    """The expected table as upstream prints it ('.' allowed, 'X' denied, '#' loopback)."""
    pods = expected.pods
    rows = ["      " + " ".join(p.replace("/", "") for p in pods)]
    for f in pods:
        cells = ["#" if f == t else ("." if expected.table[(f, t)] else "X") for t in pods]
        rows.append(f"{f:5} " + "  ".join(cells))
    return "\n".join(rows)


def all_pods() -> list[str]:
    return [f"{ns}/{p}" for ns, p in itertools.product(NAMESPACES, PODS)]
