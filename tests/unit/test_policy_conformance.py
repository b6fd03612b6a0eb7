"""The upstream NetworkPolicy conformance scenarios, as truth tables.

Each test is one ``f.It`` of kubernetes/kubernetes
test/e2e/network/netpol/network_policy.go, named after it: the same pods,
the same policies, the same expected reachability per (port, protocol),
checked against ``policy.evaluate`` and against the compiled per-port tables
(``observe`` in policy_matrix). Steps that mutate a policy, a label or delete
a policy are separate evaluations of the world after the change.
"""

from __future__ import annotations

from typing import Any

import pytest
from policy_matrix import (
    NS_NAME,
    Reachability,
    egress,
    grid,
    ingress,
    labels,
    np,
    observe,
    pod_ip,
    world,
)

TCP, UDP, SCTP = "TCP", "UDP", "SCTP"


def check(
    pods: list[str],
    policies: list[Any],
    port: int,
    protocol: str,
    expected: Reachability,
    **world_kw: Any,
) -> None:
    wrong = observe(world(pods, **world_kw), policies, port, protocol, expected)
    assert not wrong, "\n".join([f"expected ({port}/{protocol}):", grid(expected), *wrong])


def reach(pods: list[str]) -> Reachability:
    return Reachability(pods, True)


# -- NetworkPolicy between server and client (TCP) ---------------------------


def test_should_support_a_default_deny_ingress_policy() -> None:
    pods = ["x/a", "x/b", "y/a", "y/b"]
    pol = [np("deny-ingress", "x", {}, ingress())]
    check(pods, pol, 80, TCP, reach(pods).expect_peer("", "x/", False))


def test_should_support_a_default_deny_all_policy() -> None:
    pods = ["x/a", "x/b", "y/a"]
    pol = [np("deny-all", "x", {}, ingress(), egress())]
    r = reach(pods).expect_peer("", "x/", False).expect_peer("x/", "", False)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_podselector() -> (  # noqa: E501
    None
):
    pods = ["x/a", "x/b", "x/c", "y/a"]
    pol = [
        np(
            "x-a-allows-x-b",
            "x",
            labels(pod="a"),
            ingress({"from": [{"podSelector": labels(pod="b")}]}),
        )
    ]
    r = reach(pods).expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_to_allow_ingress_traffic_for_a_target() -> None:
    pods = ["x/a", "x/b", "y/a"]
    pol = [
        np("deny-all", "x", {}, ingress()),
        np(
            "allow-all-to-a",
            "x",
            labels(pod="a"),
            ingress({"from": [{"podSelector": {}, "namespaceSelector": {}}]}),
        ),
    ]
    r = reach(pods).expect_all_ingress("x/a", True).expect_all_ingress("x/b", False)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces() -> None:
    pods = ["x/a", "x/b", "y/a", "z/a"]
    pol = [
        np(
            "allow-from-another-ns",
            "x",
            labels(pod="a"),
            ingress({"from": [{"namespaceSelector": {"matchLabels": {}}}]}),
        )
    ]
    check(pods, pol, 80, TCP, reach(pods))


def test_should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespaceselector() -> (  # noqa: E501
    None
):
    pods = ["x/a", "x/b", "y/a", "z/a"]
    pol = [
        np(
            "allow-client-a-via-ns-selector",
            "x",
            labels(pod="a"),
            ingress({"from": [{"namespaceSelector": labels(**{NS_NAME: "y"})}]}),
        )
    ]
    r = reach(pods).expect_peer("x/", "x/a", False).expect_peer("z/", "x/a", False)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_based_on_podselector_with_matchexpressions() -> None:
    pods = ["x/a", "x/b", "y/a"]
    sel = {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}
    pol = [np("x-a-allows-x-b", "x", labels(pod="a"), ingress({"from": [{"podSelector": sel}]}))]
    r = reach(pods).expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_based_on_namespaceselector_with_matchexpressions() -> None:
    pods = ["x/a", "x/b", "y/a", "z/a"]
    sel = {"matchExpressions": [{"key": NS_NAME, "operator": "In", "values": ["y"]}]}
    pol = [
        np(
            "allow-ns-y-match-selector",
            "x",
            labels(pod="a"),
            ingress({"from": [{"namespaceSelector": sel}]}),
        )
    ]
    r = reach(pods).expect_peer("x/", "x/a", False).expect_peer("z/", "x/a", False)
    check(pods, pol, 80, TCP, r)


NOT_X = {"matchExpressions": [{"key": NS_NAME, "operator": "NotIn", "values": ["x"]}]}


def test_should_enforce_policy_based_on_podselector_or_namespaceselector() -> None:
    pods = ["x/a", "x/b", "x/c", "y/a"]
    # Two peers: ORed.
    rule = {"from": [{"namespaceSelector": NOT_X}, {"podSelector": labels(pod="b")}]}
    pol = [np("allow-ns-y-match-selector", "x", labels(pod="a"), ingress(rule))]
    r = reach(pods).expect("x/a", "x/a", False).expect("x/c", "x/a", False)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_based_on_podselector_and_namespaceselector() -> None:
    pods = ["x/a", "x/b", "y/a", "y/b", "z/b"]
    # One peer with both selectors: ANDed.
    rule = {"from": [{"namespaceSelector": NOT_X, "podSelector": labels(pod="b")}]}
    pol = [np("allow-ns-y-podselector-and-nsselector", "x", labels(pod="a"), ingress(rule))]
    r = (
        reach(pods)
        .expect_all_ingress("x/a", False)
        .expect("y/b", "x/a", True)
        .expect("z/b", "x/a", True)
    )
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_based_on_multiple_podselectors_and_namespaceselectors() -> None:
    pods = ["x/a", "x/b", "y/a", "y/b", "y/c"]
    pod_in = {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}
    rule = {"from": [{"namespaceSelector": NOT_X, "podSelector": pod_in}]}
    pol = [np("allow-ns-y-z-pod-b-c", "x", labels(pod="a"), ingress(rule))]
    r = reach(pods).expect_peer("x/", "x/a", False).expect("y/a", "x/a", False)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_based_on_any_podselectors() -> None:
    pods = ["x/a", "x/b", "x/c"]
    rule = {"from": [{"podSelector": labels(pod="b")}, {"podSelector": labels(pod="c")}]}
    pol = [np("allow-ns-x-pod-b-c", "x", labels(pod="a"), ingress(rule))]
    r = (
        reach(pods)
        .expect_all_ingress("x/a", False)
        .expect("x/b", "x/a", True)
        .expect("x/c", "x/a", True)
    )
    check(pods, pol, 80, TCP, r)


Y_POD_A = {
    "from": [{"namespaceSelector": labels(**{NS_NAME: "y"}), "podSelector": labels(pod="a")}]
}


@pytest.mark.parametrize("protocol", [TCP, UDP, SCTP])
def test_should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_podselector_and_namespaceselector(  # noqa: E501
    protocol: str,
) -> None:
    # TCP with x/a x/b y/a y/b z/a; the UDP and SCTP variants use x/a x/b y/a.
    pods = ["x/a", "x/b", "y/a", "y/b", "z/a"] if protocol == TCP else ["x/a", "x/b", "y/a"]
    pol = [
        np("allow-ns-y-pod-a-via-namespace-pod-selector", "x", labels(pod="a"), ingress(Y_POD_A))
    ]
    r = reach(pods).expect_all_ingress("x/a", False).expect("y/a", "x/a", True)
    check(pods, pol, 80, protocol, r)


def _port81_from_y(protocol: str) -> dict[str, Any]:
    return {
        "from": [{"namespaceSelector": labels(**{NS_NAME: "y"})}],
        "ports": [{"port": 81, "protocol": protocol}],
    }


@pytest.mark.parametrize("protocol", [TCP, UDP, SCTP])
def test_should_enforce_policy_based_on_ports(protocol: str) -> None:
    pods = ["x/a", "x/b", "y/a", "y/b", "z/a"] if protocol == TCP else ["x/a", "x/b", "y/a", "z/a"]
    pol = [
        np(
            "allow-client-a-via-ns-selector",
            "x",
            labels(pod="a"),
            ingress(_port81_from_y(protocol)),
        )
    ]
    r = (
        reach(pods)
        .expect_peer("x/", "x/a", False)
        .expect_peer("y/", "x/a", True)
        .expect_peer("z/", "x/a", False)
    )
    check(pods, pol, 81, protocol, r)


def test_should_enforce_multiple_stacked_policies_with_overlapping_podselectors() -> None:
    pods = ["x/a", "x/b", "y/a", "y/b", "z/a"]
    p81 = np("allow-client-a-via-ns-selector", "x", labels(pod="a"), ingress(_port81_from_y(TCP)))
    allow = (
        reach(pods)
        .expect_peer("x/", "x/a", False)
        .expect_peer("y/", "x/a", True)
        .expect_peer("z/", "x/a", False)
    )
    check(pods, [p81], 81, TCP, allow)
    check(pods, [p81], 80, TCP, reach(pods).expect_all_ingress("x/a", False))
    rule80 = {
        "from": [{"namespaceSelector": labels(**{NS_NAME: "y"})}],
        "ports": [{"port": 80, "protocol": TCP}],
    }
    p80 = np("allow-client-a-via-ns-selector-80", "x", labels(pod="a"), ingress(rule80))
    check(pods, [p81, p80], 80, TCP, allow)  # adding a policy unblocks port 80


def test_should_support_allow_all_policy() -> None:
    pods = ["x/a", "x/b", "y/a"]
    pol = [np("allow-all", "x", {}, ingress({}))]
    check(pods, pol, 80, TCP, reach(pods))
    check(pods, pol, 81, TCP, reach(pods))


def test_should_allow_ingress_access_on_one_named_port() -> None:
    pods = ["x/a", "x/b", "y/a"]
    pol = [np("allow-all", "x", {}, ingress({"ports": [{"port": "serve-81-tcp"}]}))]
    check(pods, pol, 81, TCP, reach(pods))
    check(pods, pol, 80, TCP, reach(pods).expect_peer("", "x/", False))


def test_should_allow_ingress_access_from_namespace_on_one_named_port() -> None:
    pods = ["x/a", "x/b", "y/a", "z/a"]
    rule = {
        "from": [{"namespaceSelector": labels(**{NS_NAME: "y"})}],
        "ports": [{"port": "serve-80-tcp", "protocol": TCP}],
    }
    pol = [np("allow-client-a-via-ns-selector-80", "x", labels(pod="a"), ingress(rule))]
    r = reach(pods).expect_peer("x/", "x/a", False).expect_peer("z/", "x/a", False)
    check(pods, pol, 80, TCP, r)
    check(pods, pol, 81, TCP, reach(pods).expect_all_ingress("x/a", False))


def test_should_allow_egress_access_on_one_named_port() -> None:
    pods = ["x/a", "y/a"]
    pol = [np("allow-egress", "x", {}, egress({"ports": [{"port": "serve-80-tcp"}]}))]
    check(pods, pol, 80, TCP, reach(pods))
    check(pods, pol, 81, TCP, reach(pods).expect_peer("x/", "", False))


def test_should_enforce_updated_policy() -> None:
    pods = ["x/a", "y/a"]
    before = np("allow-all-mutate-to-deny-all", "x", {}, ingress({}))
    check(pods, [before], 81, TCP, reach(pods))
    after = np("allow-all-mutate-to-deny-all", "x", {}, ingress())  # Spec.Ingress = []
    check(pods, [after], 81, TCP, reach(pods).expect_peer("", "x/", False))


def test_should_allow_ingress_access_from_updated_namespace() -> None:
    pods = ["x/a", "y/a"]
    rule = {"from": [{"namespaceSelector": labels(ns2="updated")}]}
    pol = [np("allow-client-a-via-ns-selector", "x", labels(pod="a"), ingress(rule))]
    check(pods, pol, 80, TCP, reach(pods).expect_all_ingress("x/a", False))
    r = reach(pods).expect_all_ingress("x/a", False).expect_peer("y/", "", True)
    check(pods, pol, 80, TCP, r, ns_labels={"y": {"ns2": "updated"}})


def test_should_allow_ingress_access_from_updated_pod() -> None:
    pods = ["x/a", "x/b"]
    rule = {"from": [{"podSelector": labels(pod="b", pod2="updated")}]}
    pol = [np("allow-client-a-via-pod-selector", "x", labels(pod="a"), ingress(rule))]
    check(pods, pol, 80, TCP, reach(pods).expect_all_ingress("x/a", False))
    r = reach(pods).expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    check(pods, pol, 80, TCP, r, pod_labels={"x/b": {"pod2": "updated"}})


def test_should_deny_ingress_from_pods_on_other_namespaces() -> None:
    pods = ["x/a", "x/b", "y/a", "z/a"]
    pol = [
        np("deny-empty-policy", "x", {}, ingress({"from": [{"podSelector": {"matchLabels": {}}}]}))
    ]
    r = reach(pods).expect_peer("y/", "x/", False).expect_peer("z/", "x/", False)
    check(pods, pol, 80, TCP, r)


def test_should_deny_ingress_access_to_updated_pod() -> None:
    pods = ["x/a", "y/a"]
    pol = [np("deny-ingress-via-label-selector", "x", labels(target="isolated"), ingress())]
    check(pods, pol, 80, TCP, reach(pods))
    r = reach(pods).expect_all_ingress("x/a", False)
    check(pods, pol, 80, TCP, r, pod_labels={"x/a": {"target": "isolated"}})


def test_should_deny_egress_from_pods_based_on_podselector() -> None:
    pods = ["x/a", "x/b", "y/a"]
    pol = [np("deny-egress-pod-a", "x", labels(pod="a"), egress())]
    check(pods, pol, 80, TCP, reach(pods).expect_all_egress("x/a", False))


def test_should_deny_egress_from_all_pods_in_a_namespace() -> None:
    pods = ["x/a", "x/b", "y/a"]
    pol = [np("deny-egress-ns-x", "x", {}, egress())]
    check(pods, pol, 80, TCP, reach(pods).expect_peer("x/", "", False))


def test_should_work_with_ingress_egress_specified_together() -> None:
    pods = ["x/a", "x/b", "x/c", "y/a"]
    pol = [
        np(
            "allow-client-a-via-pod-selector",
            "x",
            labels(pod="a"),
            {
                "ingress": [{"from": [{"podSelector": labels(pod="b")}]}],
                "egress": [{"ports": [{"port": 80}]}],
                "policyTypes": ["Egress", "Ingress"],
            },
        )
    ]
    r80 = reach(pods).expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    check(pods, pol, 80, TCP, r80)
    r81 = (
        reach(pods)
        .expect_all_ingress("x/a", False)
        .expect_all_egress("x/a", False)
        .expect("x/b", "x/a", True)
    )
    check(pods, pol, 81, TCP, r81)


def test_should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic() -> (  # noqa: E501
    None
):
    pods = ["x/a", "y/a", "y/b"]
    to_ya = {
        "to": [{"namespaceSelector": labels(**{NS_NAME: "y"}), "podSelector": labels(pod="a")}]
    }
    from_xa = {
        "from": [{"namespaceSelector": labels(**{NS_NAME: "x"}), "podSelector": labels(pod="a")}]
    }
    pol = [
        np("allow-to-ns-y-pod-a", "x", labels(pod="a"), egress(to_ya)),
        np("allow-from-xa-on-ya-match-selector", "y", labels(pod="a"), ingress(from_xa)),
        np("allow-from-xa-on-yb-match-selector", "y", labels(pod="b"), ingress(from_xa)),
    ]
    r = (
        reach(pods)
        .expect_peer("x/a", "", False)
        .expect_peer("", "y/a", False)
        .expect_peer("x/a", "y/a", True)
        .expect_peer("", "y/b", False)
    )
    check(pods, pol, 80, TCP, r)


def test_should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_podselector_and_namespaceselector() -> (  # noqa: E501
    None
):
    pods = ["x/a", "y/a", "y/b"]
    to_ya = {
        "to": [{"namespaceSelector": labels(**{NS_NAME: "y"}), "podSelector": labels(pod="a")}]
    }
    pol = [np("allow-to-ns-y-pod-a", "x", labels(pod="a"), egress(to_ya))]
    r = reach(pods).expect_all_egress("x/a", False).expect("x/a", "y/a", True)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol() -> (  # noqa: E501
    None
):
    pods = ["x/a", "y/a"]
    pol = [
        np("allow-ingress-by-proto", "x", labels(pod="a"), ingress({"ports": [{"protocol": TCP}]}))
    ]
    check(pods, pol, 80, TCP, reach(pods))
    check(pods, pol, 80, UDP, reach(pods).expect_peer("", "x/a", False))


def test_should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence() -> (  # noqa: E501
    None
):
    pods = ["x/a", "y/a"]
    only80 = np("allow-ingress-port-80", "x", {}, ingress({"ports": [{"port": 80}]}))
    check(pods, [only80], 81, TCP, reach(pods).expect_peer("", "x/", False))
    allow_all = np("allow-ingress", "x", {}, ingress({}))
    check(pods, [only80, allow_all], 81, TCP, reach(pods))


def test_should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence() -> (  # noqa: E501
    None
):
    pods = ["x/a", "y/a"]
    only80 = np("allow-egress-port-80", "x", {}, egress({"ports": [{"port": 80}]}))
    check(pods, [only80], 81, TCP, reach(pods).expect_peer("x/", "", False))
    allow_all = np("allow-egress", "x", {}, egress({}))
    check(pods, [only80, allow_all], 81, TCP, reach(pods))


def test_should_stop_enforcing_policies_after_they_are_deleted() -> None:
    pods = ["x/a", "y/a"]
    pol = [np("deny-all", "x", {}, ingress(), egress())]
    check(pods, pol, 80, TCP, reach(pods).expect_peer("x/", "", False).expect_peer("", "x/", False))
    check(pods, [], 80, TCP, reach(pods))


def test_should_allow_egress_access_to_server_in_cidr_block() -> None:
    pods = ["x/a", "y/a", "y/b"]
    rule = {"to": [{"ipBlock": {"cidr": f"{pod_ip('y/b')}/32"}}]}
    pol = [np("allow-client-a-via-cidr-egress-rule", "x", labels(pod="a"), egress(rule))]
    r = reach(pods).expect_all_egress("x/a", False).expect("x/a", "y/b", True)
    check(pods, pol, 80, TCP, r)


def _large_cidr(ip: str) -> str:
    """makeLargeCIDRForIP: the /4 around the address."""
    import ipaddress

    return str(ipaddress.ip_network(f"{ip}/4", strict=False))


def test_should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() -> None:
    pods = ["x/a", "x/b", "x/c"]
    xb = pod_ip("x/b")
    rule = {"to": [{"ipBlock": {"cidr": _large_cidr(xb), "except": [f"{xb}/32"]}}]}
    pol = [np("allow-client-a-via-cidr-egress-rule", "x", labels(pod="a"), egress(rule))]
    check(pods, pol, 80, TCP, reach(pods).expect("x/a", "x/b", False))


def test_should_ensure_an_ip_overlapping_both_ipblock_cidr_and_ipblock_except_is_allowed() -> None:
    pods = ["x/a", "x/b", "x/c"]
    xb = pod_ip("x/b")
    rule = {"to": [{"ipBlock": {"cidr": _large_cidr(xb), "except": [f"{xb}/32"]}}]}
    name = "allow-client-a-via-cidr-egress-rule"
    first = np(name, "x", labels(pod="a"), egress(rule))
    check(pods, [first], 80, TCP, reach(pods).expect("x/a", "x/b", False))
    # Upstream updates the policy of the same name: it replaces the first.
    second = np(name, "x", labels(pod="a"), egress({"to": [{"ipBlock": {"cidr": f"{xb}/32"}}]}))
    r = reach(pods).expect_all_egress("x/a", False).expect("x/a", "x/b", True)
    check(pods, [second], 80, TCP, r)
    # And as two policies side by side (the union): the except no longer denies.
    other = np(
        "allow-x-b", "x", labels(pod="a"), egress({"to": [{"ipBlock": {"cidr": f"{xb}/32"}}]})
    )
    check(pods, [first, other], 80, TCP, reach(pods))


def test_should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_podselector() -> (  # noqa: E501
    None
):
    pods = ["x/a", "x/b", "y/a"]
    allow_egress = np("allow-egress-for-target", "x", labels(pod="a"), egress({}))
    check(pods, [allow_egress], 80, TCP, reach(pods))
    deny_ingress = np("deny-ingress-via-label-selector", "x", labels(pod="a"), ingress())
    check(pods, [allow_egress, deny_ingress], 80, TCP, reach(pods).expect_all_ingress("x/a", False))


def test_should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp() -> None:
    pods = ["x/a", "y/a"]
    pol = [
        np("deny-ingress", "x", {}, ingress()),
        np(
            "allow-only-sctp-ingress-on-port-81",
            "x",
            labels(pod="a"),
            ingress({"ports": [{"port": 81, "protocol": SCTP}]}),
        ),
    ]
    check(pods, pol, 81, TCP, reach(pods).expect_peer("", "x/", False))
    check(pods, pol, 81, SCTP, reach(pods).expect_peer("", "x/b", False))


def test_should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp() -> None:
    pods = ["x/a", "y/a"]
    pol = [
        np(
            "allow-only-sctp-ingress-on-port-80",
            "x",
            labels(pod="a"),
            ingress({"ports": [{"port": 80, "protocol": SCTP}]}),
        )
    ]
    check(pods, pol, 81, TCP, reach(pods).expect_all_ingress("x/a", False))


def test_should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp() -> None:
    pods = ["x/a", "y/a"]
    pol = [
        np(
            "allow-only-udp-ingress-on-port-81",
            "x",
            labels(pod="a"),
            ingress({"ports": [{"port": 81, "protocol": UDP}]}),
        )
    ]
    check(pods, pol, 81, TCP, reach(pods).expect_all_ingress("x/a", False))
    check(pods, pol, 81, UDP, reach(pods))


def test_should_enforce_policy_to_allow_traffic_based_on_namespaceselector_with_matchlabels_using_default_ns_label() -> (  # noqa: E501
    None
):
    pods = ["x/a", "x/b", "y/a", "z/a"]
    rule = {"from": [{"namespaceSelector": labels(**{NS_NAME: "y"})}]}
    pol = [
        np(
            "allow-client-a-via-ns-selector-for-immutable-ns-label",
            "x",
            labels(pod="a"),
            ingress(rule),
        )
    ]
    r = reach(pods).expect_peer("x/", "x/a", False).expect_peer("z/", "x/a", False)
    check(pods, pol, 80, TCP, r)


def test_should_enforce_policy_based_on_namespaceselector_with_matchexpressions_using_default_ns_label() -> (  # noqa: E501
    None
):
    pods = ["x/a", "x/b", "y/a", "z/a"]
    not_y = {"matchExpressions": [{"key": NS_NAME, "operator": "NotIn", "values": ["y"]}]}
    pol = [
        np(
            "allow-ns-y-match-selector-for-immutable-ns-label",
            "x",
            labels(pod="a"),
            egress({"to": [{"namespaceSelector": not_y}]}),
        )
    ]
    check(pods, pol, 80, TCP, reach(pods).expect_peer("x/a", "y/", False))


# -- the UDP and SCTP contexts: default-deny-ingress ---------------------------


@pytest.mark.parametrize("protocol", [UDP, SCTP])
def test_should_support_a_default_deny_ingress_policy_over(protocol: str) -> None:
    pods = ["x/a", "x/b", "y/a", "y/b"]
    pol = [np("deny-all", "x", {}, ingress())]
    check(pods, pol, 80, protocol, reach(pods).expect_peer("", "x/", False))


# -- the whole 3x3 model, every port and protocol ------------------------------


@pytest.mark.parametrize("port", [80, 81])
@pytest.mark.parametrize("protocol", [TCP, UDP, SCTP])
def test_full_model_named_port_resolves_by_name_and_protocol(port: int, protocol: str) -> None:
    """All nine pods: ingress to namespace x only on serve-80-udp. Port 80/UDP
    passes; 80/TCP does not (same number, other protocol), nor anything on 81."""
    from policy_matrix import all_pods

    pods = all_pods()
    pol = [
        np("udp-80-only", "x", {}, ingress({"ports": [{"port": "serve-80-udp", "protocol": UDP}]}))
    ]
    r = reach(pods)
    if (port, protocol) != (80, UDP):
        r.expect_peer("", "x/", False)
    check(pods, pol, port, protocol, r)
