"""Network policy: Kubernetes NetworkPolicy semantics with admin and baseline tiers.

The pure-Python layer of overlay's policy: the objects, a strict manifest
loader, the reference evaluator and the compiler of per-port rule tables the
C engine enforces (with connection tracking, so replies of allowed
connections pass)::

    from overlay import policy

    objs = policy.load("policies.yaml")          # a path, a directory or text
    nps, admin, baseline = policy.split(objs)
    np = policy.NetworkPolicy.from_dict(d)        # one object; ConfigError names the field

    world = policy.World(
        namespaces={"x": {"team": "web"}, "y": {}},   # kubernetes.io/metadata.name is added
        endpoints=[
            policy.Endpoint(ip="10.244.1.10", namespace="x", labels={"pod": "a"},
                            named_ports={"serve-80-tcp": (80, "TCP")}),
            policy.Endpoint(ip="10.244.2.10", namespace="y", labels={"pod": "b"}),
        ],
        node_addresses={"10.244.1.1"},              # the pods' node: always allowed
    )
    v = policy.evaluate(world, nps, admin, baseline,
                        src="10.244.1.10", dst="10.244.2.10", port=80, protocol="TCP")
    v.allowed, v.tier, v.policy, v.rule, v.direction   # who decided, and where

    table = policy.compile_port(world, nps, admin, baseline,
                                port_ip="10.244.1.10", direction="ingress")
    table.to_dict()                                 # plain data for the classifier
    tables = policy.compile_ports(world, nps, admin, baseline)   # every pod, both directions

    world = policy.world_from("cluster/")           # Namespace and Pod manifests
    diffs = policy.diff(world, (nps, admin, baseline), policy.split(policy.load("new/")))
    print(policy.format_report(diffs))              # the connections whose verdict changed

Kinds: ``NetworkPolicy`` (networking.k8s.io/v1), ``AdminNetworkPolicy`` and
``BaselineAdminNetworkPolicy`` (policy.networking.k8s.io/v1alpha1).

Semantics (each is a test in tests/unit/test_policy_*.py):

- A NetworkPolicy selects pods of its own namespace (``podSelector``, ``{}``
  = all). A pod is isolated per direction once any policy selecting it lists
  that direction in ``policyTypes``; then a connection is allowed iff some
  rule of some such policy matches (union). Not isolated: allowed.
- ``policyTypes`` defaults to Ingress, plus Egress when ``egress`` has rules:
  ``policyTypes: [Egress]`` alone leaves ingress open, and ``egress: []``
  without ``policyTypes: [Egress]`` isolates nothing.
- A rule matches when a peer AND a port match; ``from``/``to`` or ``ports``
  empty or missing = all. A peer with ``podSelector`` (this namespace) and/or
  ``namespaceSelector`` (both = AND; separate peers = OR) selects pods;
  ``ipBlock`` (``cidr`` minus ``except``) selects addresses, pods' included.
- Ports: protocol TCP (default), UDP or SCTP, never one for another; a number,
  a range (``endPort``) or a name resolved on the destination pod by name and
  protocol (unresolved: matches nothing).
- A connection needs egress allowed at the source pod and ingress allowed at
  the destination pod; traffic between a pod and a node address is allowed.
- AdminNetworkPolicies come first: by priority (0-1000, lower first; ties by
  name), rules in order, first match decides: Allow, Deny, or Pass (skip the
  remaining admin rules). Then NetworkPolicy. The BaselineAdminNetworkPolicy
  (named ``default``) decides, rules in order, only for pods no
  NetworkPolicy isolates in that direction. Then: allowed.
"""

from __future__ import annotations

from overlay.policy.compile import (
    CompiledRule,
    PortTable,
    compile_port,
    compile_ports,
    evaluate_tables,
)
from overlay.policy.diff import Difference, Probe, diff, format_report, world_from
from overlay.policy.evaluate import Decision, Verdict, evaluate
from overlay.policy.load import PolicyObject, load, split
from overlay.policy.model import (
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    Endpoint,
    LabelSelector,
    NetworkPolicy,
    World,
)

__all__ = [
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "CompiledRule",
    "Decision",
    "Difference",
    "Endpoint",
    "LabelSelector",
    "NetworkPolicy",
    "PolicyObject",
    "PortTable",
    "Probe",
    "Verdict",
    "World",
    "compile_port",
    "compile_ports",
    "diff",
    "evaluate",
    "evaluate_tables",
    "format_report",
    "load",
    "split",
    "world_from",
]
