"""NetworkPolicy semantics, one behaviour per test, with the API wording it
follows (kubernetes.io/docs/concepts/services-networking/network-policies and
k8s.io/api networking/v1 types.go)."""

from __future__ import annotations

from typing import Any

import pytest

from overlay import policy
from overlay.errors import ConfigError

XA, XB, YA, YB = "10.244.1.10", "10.244.1.11", "10.244.2.10", "10.244.2.11"
NODE, OUTSIDE = "10.244.1.1", "198.19.0.5"


def make_world(**kw: Any) -> policy.World:
    return policy.World(
        namespaces={"x": {"team": "web"}, "y": {"team": "db"}},
        endpoints=[
            policy.Endpoint(XA, "x", {"pod": "a"}, {"http": (8080, "TCP"), "dns": (53, "UDP")}),
            policy.Endpoint(XB, "x", {"pod": "b"}, {"http": (9090, "TCP")}),
            policy.Endpoint(YA, "y", {"pod": "a"}, {"http": (8080, "TCP")}),
            policy.Endpoint(YB, "y", {"pod": "b"}),
        ],
        node_addresses={NODE},
        **kw,
    )


W = make_world()


def np(spec: dict[str, Any], name: str = "p", ns: str = "x") -> policy.NetworkPolicy:
    return policy.NetworkPolicy.from_dict(
        {"metadata": {"name": name, "namespace": ns}, "spec": spec}
    )


def ok(
    pols: list[policy.NetworkPolicy], src: str, dst: str, port: int = 80, proto: str = "TCP"
) -> bool:
    return policy.evaluate(W, pols, src=src, dst=dst, port=port, protocol=proto).allowed


A_ONLY = {"matchLabels": {"pod": "a"}}


def test_no_policy_allows_everything() -> None:
    v = policy.evaluate(W, src=XA, dst=YB, port=80)
    assert v.allowed and v.tier == "default" and v.policy is None


def test_world_adds_the_namespace_name_label() -> None:
    # "The Kubernetes control plane sets an immutable label kubernetes.io/metadata.name
    # on all namespaces".
    assert W.namespaces["x"] == {"team": "web", "kubernetes.io/metadata.name": "x"}


def test_pod_selector_selects_pods_of_the_policys_namespace_only() -> None:
    # "podSelector ... selects particular Pods in the same namespace as the NetworkPolicy".
    p = np({"podSelector": A_ONLY})
    assert not ok([p], YB, XA)
    assert ok([p], XA, YA) and ok([p], XB, YA) and ok([p], YB, YA)  # y/a not selected


def test_peer_pod_selector_means_this_namespace_namespace_selector_all_its_pods() -> None:
    p = np({"podSelector": {}, "ingress": [{"from": [{"podSelector": A_ONLY}]}]})
    assert not ok([p], YA, XB)  # y/a has pod=a but is in another namespace
    q = np(
        {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "db"}}}]}],
        }
    )
    assert ok([q], YA, XB) and ok([q], YB, XB) and not ok([q], XA, XB)


def test_both_selectors_in_one_peer_are_anded_separate_peers_ored() -> None:
    # "contains a single from element allowing connections from Pods with the label
    # role=client in namespaces with the label user=alice" vs "two elements ... ORed".
    ns_db = {"matchLabels": {"team": "db"}}
    anded = np(
        {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": ns_db, "podSelector": A_ONLY}]}],
        }
    )
    ored = np(
        {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": ns_db}, {"podSelector": A_ONLY}]}],
        }
    )
    assert ok([anded], YA, XB) and not ok([anded], YB, XB) and not ok([anded], XA, XB)
    assert ok([ored], YA, XB) and ok([ored], YB, XB) and ok([ored], XA, XB)


def test_empty_selectors_select_all() -> None:
    every_ns = np({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert ok([every_ns], YB, XA)
    assert not ok([every_ns], OUTSIDE, XA)  # selectors select pods, never other addresses
    every_src = np({"podSelector": {}, "ingress": [{"from": []}]})
    assert ok([every_src], OUTSIDE, XA)  # "If this field is empty or missing ... all sources"


def test_ip_block_matches_outside_and_pod_addresses_minus_except() -> None:
    block = {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}
    p = np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": block}]}]})
    assert ok([p], XB, XA)  # a pod address in the cidr
    assert not ok([p], YA, XA)  # in the except
    assert not ok([p], OUTSIDE, XA)
    q = np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.0.0/16"}}]}]})
    assert ok([q], OUTSIDE, XA) and not ok([q], YA, XA)


def test_ports_protocols_ranges() -> None:
    p = np(
        {
            "podSelector": {},
            "ingress": [
                {"ports": [{"protocol": "UDP", "port": 53}, {"port": 8000, "endPort": 8100}]}
            ],
        }
    )
    assert ok([p], YA, XA, 53, "UDP") and not ok([p], YA, XA, 53, "TCP")
    assert ok([p], YA, XA, 8000) and ok([p], YA, XA, 8100) and not ok([p], YA, XA, 8101)
    assert not ok([p], YA, XA, 8050, "SCTP")  # SCTP never matches a TCP rule
    assert not ok([p], YA, XA, 0, "ICMP")  # a rule with ports matches only those protocols
    every = np({"podSelector": {}, "ingress": [{}]})
    assert ok([every], YA, XA, 0, "ICMP")  # "ports ... empty or missing ... matches all ports"


def test_protocol_only_port_matches_every_port_of_it() -> None:
    p = np({"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP"}]}]})
    assert ok([p], YA, XA, 1, "SCTP") and ok([p], YA, XA, 65535, "SCTP")
    assert not ok([p], YA, XA, 1, "TCP")


def test_named_port_resolves_on_the_destination_pod_by_name_and_protocol() -> None:
    ing = np({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})
    assert ok([ing], YA, XA, 8080) and not ok([ing], YA, XA, 9090)
    assert ok([ing], YA, XB, 9090) and not ok([ing], YA, XB, 8080)
    udp = np({"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]})
    tcp = np({"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]})  # TCP by default
    assert ok([udp], YA, XA, 53, "UDP") and not ok([tcp], YA, XA, 53, "UDP")
    assert not ok([tcp], YA, XA, 53, "TCP")
    # Egress: the name is looked up on the destination, not on the selected source
    # (aws/amazon-network-policy-controller-k8s#52 got this wrong).
    eg = np(
        {"podSelector": {}, "egress": [{"ports": [{"port": "http"}]}], "policyTypes": ["Egress"]}
    )
    assert ok([eg], XB, YA, 8080)  # y/a's http is 8080 (x/b's own http is 9090)
    assert not ok([eg], XB, YA, 9090)
    assert not ok([eg], XA, YB, 8080)  # y/b has no port named http: nothing matches
    assert not ok([eg], XA, OUTSIDE, 8080)  # an address outside has no named ports


def test_policy_types_egress_alone_leaves_ingress_open() -> None:
    p = np({"podSelector": {}, "ingress": [], "egress": [], "policyTypes": ["Egress"]})
    assert ok([p], YA, XA)
    assert not ok([p], XA, YA)


def test_egress_rules_without_policy_types_isolate_ingress_too() -> None:
    # The other trap: defaulting adds Ingress, so this policy denies all ingress.
    p = np({"podSelector": {}, "egress": [{}]})
    assert not ok([p], YA, XA)
    assert ok([p], XA, YA)


def test_empty_egress_with_egress_type_denies_all_egress() -> None:
    # "if you want to write a policy that specifies that no egress is allowed, you
    # must specify a policyTypes value that include Egress".
    deny = np({"podSelector": {}, "egress": [], "policyTypes": ["Egress"]})
    assert not ok([deny], XA, YA) and not ok([deny], XA, OUTSIDE)
    no_types = np({"podSelector": {}, "egress": []})
    assert ok([no_types], XA, YA)  # no egress isolation without the type


def test_isolation_per_direction_and_union_of_allows() -> None:
    # "Multiple network policies can select the same set of pods ... the rules for each
    # are combined additively".
    only_ya = np(
        {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": A_ONLY}]}],
        },
        "one",
    )
    only_80 = np({"podSelector": A_ONLY, "ingress": [{"ports": [{"port": 80}]}]}, "two")
    assert ok([only_ya, only_80], YB, XA, 80)  # allowed by two
    assert ok([only_ya, only_80], YA, XB, 81)  # allowed by one
    assert not ok([only_ya, only_80], YB, XB, 80)
    v = policy.evaluate(W, [only_ya, only_80], src=YB, dst=XA, port=80)
    assert (v.tier, v.policy, v.rule, v.direction) == ("networkpolicy", "x/two", 0, "ingress")


def test_connection_needs_egress_at_source_and_ingress_at_destination() -> None:
    deny_in = np({"podSelector": {}, "ingress": []}, "deny-in", "y")
    allow_out = np({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}, "out")
    v = policy.evaluate(W, [deny_in, allow_out], src=XA, dst=YA, port=80)
    assert not v.allowed and v.direction == "ingress" and v.policy == "y/deny-in" and v.rule is None
    assert v.egress is not None and v.egress.allowed and v.egress.policy == "x/out"
    deny_out = np({"podSelector": {}, "egress": [], "policyTypes": ["Egress"]}, "deny-out")
    v = policy.evaluate(W, [deny_in, deny_out], src=XA, dst=YA, port=80)
    assert v.direction == "egress" and v.policy == "x/deny-out"  # met first


def test_traffic_with_the_node_is_always_allowed() -> None:
    # "traffic to and from the node where a Pod is running is always allowed".
    deny = np(
        {"podSelector": {}, "ingress": [], "egress": [], "policyTypes": ["Ingress", "Egress"]}
    )
    for src, dst in ((NODE, XA), (XA, NODE)):
        v = policy.evaluate(W, [deny], src=src, dst=dst, port=10250)
        assert v.allowed and v.tier == "node"
    assert not ok([deny], OUTSIDE, XA) and not ok([deny], XA, OUTSIDE)


def test_evaluator_answers_for_the_initiating_direction() -> None:
    # Replies of allowed connections are the connection tracker's job; the reverse
    # direction asked as a new connection is a different question.
    p = np({"podSelector": {}, "ingress": []})
    assert ok([p], XA, YA) and not ok([p], YA, XA)


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ConfigError) as e:
        policy.evaluate(W, src="10.244.1", dst=XA, port=80)
    assert e.value.field == "src"
    with pytest.raises(ConfigError) as e:
        policy.evaluate(W, src=XA, dst=YA, port=70000)
    assert e.value.field == "port"
    with pytest.raises(ConfigError) as e:
        policy.evaluate(W, src=XA, dst=YA, port=80, protocol="tcp")
    assert e.value.field == "protocol"
    with pytest.raises(ConfigError) as e:
        policy.evaluate(W, [{"kind": "NetworkPolicy"}], src=XA, dst=YA, port=80)  # type: ignore[list-item]
    assert e.value.field == "networkpolicies[0]"


def test_world_refuses_inconsistent_input() -> None:
    with pytest.raises(ConfigError) as e:
        policy.World(namespaces={}, endpoints=[policy.Endpoint(XA, "x")])
    assert e.value.field == "endpoints[0].namespace"
    with pytest.raises(ConfigError) as e:
        policy.World(
            namespaces={"x": {}}, endpoints=[policy.Endpoint(XA, "x"), policy.Endpoint(XA, "x")]
        )
    assert e.value.field == "endpoints[1].ip"
    with pytest.raises(ConfigError) as e:
        policy.World(
            namespaces={"x": {}},
            endpoints=[policy.Endpoint(XA, "x", named_ports={"http": (80, "tcp")})],
        )
    assert e.value.field == "endpoints[0].named_ports['http'][1]"
    with pytest.raises(ConfigError) as e:
        policy.World(
            namespaces={"x": {}}, endpoints=[policy.Endpoint(NODE, "x")], node_addresses={NODE}
        )
    assert e.value.field == "endpoints[0].ip"
