"""AdminNetworkPolicy and BaselineAdminNetworkPolicy tiers around
NetworkPolicy (policy.networking.k8s.io v1alpha1 semantics), on the x/y/z
model of the conformance tests; every verdict also checked through the
compiled tables."""

from __future__ import annotations

from typing import Any

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

ANP_API = "policy.networking.k8s.io/v1alpha1"


def anp(
    name: str, priority: int, subject: dict[str, Any], **rules: Any
) -> policy.AdminNetworkPolicy:
    return policy.AdminNetworkPolicy.from_dict(
        {
            "apiVersion": ANP_API,
            "kind": "AdminNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"priority": priority, "subject": subject, **rules},
        }
    )


def banp(subject: dict[str, Any], **rules: Any) -> policy.BaselineAdminNetworkPolicy:
    return policy.BaselineAdminNetworkPolicy.from_dict(
        {
            "apiVersion": ANP_API,
            "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default"},
            "spec": {"subject": subject, **rules},
        }
    )


def ns(name: str) -> dict[str, Any]:
    return {"matchLabels": {NS_NAME: name}}


def rule(
    action: str, peers_key: str, *peers: dict[str, Any], ports: list[Any] | None = None
) -> dict[str, Any]:
    r: dict[str, Any] = {"action": action, peers_key: list(peers)}
    if ports is not None:
        r["ports"] = ports
    return r


PODS = all_pods()


def check(policies: list[Any], port: int, protocol: str, expected: Reachability, **kw: Any) -> None:
    wrong = observe(world(PODS, **kw), policies, port, protocol, expected)
    assert not wrong, "\n".join([grid(expected), *wrong])


def verdict(
    policies: list[Any], src: str, dst: str, port: int = 80, proto: str = "TCP"
) -> policy.Verdict:
    nps, admin, baseline = policy.split(policies)
    return policy.evaluate(
        world(PODS),
        nps,
        admin,
        baseline,
        src=pod_ip(src),
        dst=pod_ip(dst),
        port=port,
        protocol=proto,
    )


def test_anp_deny_overrides_a_networkpolicy_allow() -> None:
    # Deny: "Pods will never receive traffic which has been matched by a Deny rule".
    allow_all = np("allow-all", "x", {}, ingress({}))
    deny_y = anp(
        "deny-y",
        10,
        {"namespaces": ns("x")},
        ingress=[rule("Deny", "from", {"namespaces": ns("y")})],
    )
    check([allow_all, deny_y], 80, "TCP", Reachability(PODS).expect_peer("y/", "x/", False))
    v = verdict([allow_all, deny_y], "y/a", "x/b")
    assert (v.allowed, v.tier, v.policy, v.rule, v.direction) == (
        False,
        "admin",
        "deny-y",
        0,
        "ingress",
    )


def test_anp_allow_overrides_a_networkpolicy_deny() -> None:
    # Allow: "allows the selected traffic (even if it would otherwise have been denied
    # by NetworkPolicy)".
    deny_all = np("deny-all", "x", {}, ingress())
    allow_y = anp(
        "allow-y",
        10,
        {"namespaces": ns("x")},
        ingress=[rule("Allow", "from", {"namespaces": ns("y")})],
    )
    r = Reachability(PODS).expect_peer("x/", "x/", False).expect_peer("z/", "x/", False)
    check([deny_all, allow_y], 80, "TCP", r)


def test_anp_lower_priority_number_wins_and_rules_apply_in_order() -> None:
    # "Rules with lower priority values have higher precedence"; within a policy
    # "a rule that appears at the top of the ingress/egress rules would take the
    # highest precedence".
    subject = {"namespaces": ns("x")}
    allow_ya = rule(
        "Allow", "from", {"pods": {"namespaceSelector": ns("y"), "podSelector": labels(pod="a")}}
    )
    deny_y = rule("Deny", "from", {"namespaces": ns("y")})
    first = anp("first", 5, subject, ingress=[allow_ya, deny_y])
    later = anp("later", 50, subject, ingress=[rule("Deny", "from", {"namespaces": {}})])
    r = Reachability(PODS).expect_peer("", "x/", False).expect_peer("y/a", "x/", True)
    check([later, first], 80, "TCP", r)
    assert verdict([later, first], "y/b", "x/a").policy == "first"
    assert verdict([later, first], "z/a", "x/a").policy == "later"


def test_anp_pass_skips_remaining_admin_rules_and_hands_over_to_networkpolicy() -> None:
    # Pass: "skip any remaining ANP rules, and then pass execution to any
    # NetworkPolicies that select the pod".
    subject = {"namespaces": ns("x")}
    pass_y = anp("pass-y", 1, subject, ingress=[rule("Pass", "from", {"namespaces": ns("y")})])
    deny_all = anp("deny-all", 2, subject, ingress=[rule("Deny", "from", {"namespaces": {}})])
    only_pod_b = np(
        "from-pod-b",
        "x",
        {},
        ingress({"from": [{"namespaceSelector": {}, "podSelector": labels(pod="b")}]}),
    )
    r = Reachability(PODS).expect_peer("", "x/", False).expect_peer("y/b", "x/", True)
    check([pass_y, deny_all, only_pod_b], 80, "TCP", r)
    v = verdict([pass_y, deny_all, only_pod_b], "y/a", "x/a")
    assert (v.tier, v.policy) == ("networkpolicy", "x/from-pod-b")


def test_anp_pass_without_networkpolicy_goes_to_baseline() -> None:
    # "If the pod is not selected by any NetworkPolicies then execution is passed to
    # any BaselineAdminNetworkPolicies that select the pod."
    pass_all = anp(
        "pass-all", 1, {"namespaces": {}}, ingress=[rule("Pass", "from", {"namespaces": {}})]
    )
    base = banp({"namespaces": {}}, ingress=[rule("Deny", "from", {"namespaces": ns("z")})])
    check([pass_all, base], 80, "TCP", Reachability(PODS).expect_peer("z/", "", False))
    v = verdict([pass_all, base], "z/a", "y/a")
    assert (v.tier, v.policy, v.rule) == ("baseline", "default", 0)


def test_baseline_applies_only_where_no_networkpolicy_isolates() -> None:
    # BANP: a default that NetworkPolicy overrides: here deny everything into x and y,
    # but y has a NetworkPolicy allowing all ingress, so y is open again.
    base = banp(
        {
            "namespaces": {
                "matchExpressions": [{"key": NS_NAME, "operator": "In", "values": ["x", "y"]}]
            }
        },
        ingress=[rule("Deny", "from", {"namespaces": {}})],
    )
    open_y = np("allow-all", "y", {}, ingress({}))
    r = Reachability(PODS).expect_peer("", "x/", False)
    check([base, open_y], 80, "TCP", r)
    # Egress isolation in y does not make the BANP skip y's ingress: per direction.
    only_egress = np("egress-only", "y", {}, egress({}))
    r = Reachability(PODS).expect_peer("", "x/", False).expect_peer("", "y/", False)
    check([base, only_egress], 80, "TCP", r)


def test_baseline_rules_apply_in_order() -> None:
    base = banp(
        {"namespaces": ns("x")},
        egress=[
            rule(
                "Allow", "to", {"pods": {"namespaceSelector": {}, "podSelector": labels(pod="c")}}
            ),
            rule("Deny", "to", {"namespaces": {}}),
        ],
    )
    r = Reachability(PODS).expect_peer("x/", "", False).expect_peer("x/", "/c", True)
    check([base], 81, "UDP", r)


def test_admin_ports_numbers_ranges_and_named_ports() -> None:
    subject = {"namespaces": ns("x")}
    a = anp(
        "ports",
        3,
        subject,
        egress=[
            rule("Allow", "to", {"namespaces": {}}, ports=[{"namedPort": "serve-81-udp"}]),
            rule(
                "Allow",
                "to",
                {"namespaces": ns("y")},
                ports=[{"portRange": {"protocol": "SCTP", "start": 70, "end": 80}}],
            ),
            rule("Deny", "to", {"namespaces": {}}),
        ],
    )
    check([a], 81, "UDP", Reachability(PODS))
    check([a], 81, "TCP", Reachability(PODS).expect_peer("x/", "", False))
    check(
        [a],
        80,
        "SCTP",
        Reachability(PODS).expect_peer("x/", "", False).expect_peer("x/", "y/", True),
    )


def test_admin_networks_peer_matches_pod_addresses_too() -> None:
    a = anp(
        "nets",
        3,
        {"namespaces": ns("x")},
        egress=[rule("Deny", "to", {"networks": [f"{pod_ip('y/b')}/32", "10.244.3.0/24"]})],
    )
    r = Reachability(PODS).expect_peer("x/", "y/b", False).expect_peer("x/", "z/", False)
    check([a], 80, "TCP", r)


def test_admin_subject_pods_form_is_namespace_and_pod_selector() -> None:
    a = anp(
        "subj",
        3,
        {"pods": {"namespaceSelector": ns("y"), "podSelector": labels(pod="b")}},
        ingress=[rule("Deny", "from", {"namespaces": {}})],
    )
    check([a], 80, "TCP", Reachability(PODS).expect_all_ingress("y/b", False))


def test_anps_without_rules_for_a_direction_do_not_affect_it() -> None:
    # "ANPs with no ingress rules do not affect ingress traffic."
    a = anp(
        "egress-only", 1, {"namespaces": {}}, egress=[rule("Deny", "to", {"namespaces": ns("z")})]
    )
    deny_x = np("deny", "x", {}, ingress())
    r = Reachability(PODS).expect_peer("", "z/", False).expect_peer("", "x/", False)
    check([a, deny_x], 80, "TCP", r)


def test_equal_priorities_are_ordered_by_name() -> None:
    subject = {"namespaces": ns("x")}
    b = anp("b", 7, subject, ingress=[rule("Allow", "from", {"namespaces": {}})])
    a = anp("a", 7, subject, ingress=[rule("Deny", "from", {"namespaces": {}})])
    assert verdict([b, a], "y/a", "x/a").policy == "a"
    assert verdict([a, b], "y/a", "x/a").policy == "a"
