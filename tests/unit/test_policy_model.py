"""The policy objects and the manifest loader: strict parsing, defaulting,
errors that name the field path and the fix, all-or-nothing loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overlay import policy
from overlay.errors import ConfigError
from overlay.policy.model import LabelSelector


def np_dict(spec: dict[str, Any], name: str = "p", namespace: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def refused(d: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        policy.NetworkPolicy.from_dict(d)
    assert e.value.field == field
    assert words in e.value.expected


# -- defaulting --------------------------------------------------------------


def test_policy_types_default_to_ingress_only_without_egress_rules() -> None:
    p = policy.NetworkPolicy.from_dict(np_dict({"podSelector": {}}))
    assert p.policy_types == {"Ingress"}


def test_policy_types_default_adds_egress_when_egress_rules_are_present() -> None:
    # types.go: "policies that contain an egress section are assumed to affect egress,
    # and all policies (whether or not they contain an ingress section) are assumed
    # to affect ingress".
    p = policy.NetworkPolicy.from_dict(np_dict({"podSelector": {}, "egress": [{}]}))
    assert p.policy_types == {"Ingress", "Egress"}


def test_empty_egress_list_without_policy_types_does_not_select_egress() -> None:
    p = policy.NetworkPolicy.from_dict(np_dict({"podSelector": {}, "egress": []}))
    assert p.policy_types == {"Ingress"}


def test_explicit_policy_types_are_kept_as_given() -> None:
    p = policy.NetworkPolicy.from_dict(
        np_dict({"podSelector": {}, "ingress": [{}], "policyTypes": ["Egress"]})
    )
    assert p.policy_types == {"Egress"}


def test_protocol_defaults_to_tcp_and_namespace_to_the_given_default() -> None:
    d = np_dict({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    del d["metadata"]["namespace"]
    p = policy.NetworkPolicy.from_dict(d, namespace="y")
    assert p.namespace == "y"
    assert p.ingress[0].ports[0].protocol == "TCP"


def test_host_bits_in_a_cidr_are_normalised_not_refused() -> None:
    # Kubernetes accepts 10.10.1.12/24; an engine that refused it would silently
    # drop the rule (antrea#1764).
    p = policy.NetworkPolicy.from_dict(
        np_dict({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.10.1.12/24"}}]}]})
    )
    block = p.egress[0].peers[0].ip_block
    assert block is not None and str(block.cidr) == "10.10.1.0/24"


# -- strictness: each refusal names the path ----------------------------------


def test_unknown_field_is_refused_with_its_path() -> None:
    refused(
        np_dict({"podSelector": {}, "ingress": [{"from": [{"podSelecter": {}}]}]}),
        "spec.ingress[0].from[0].podSelecter",
        "unknown field",
    )


def test_unknown_top_level_and_metadata_fields_are_refused() -> None:
    d = np_dict({"podSelector": {}})
    d["specs"] = {}
    refused(d, "specs", "unknown field")
    d = np_dict({"podSelector": {}})
    d["metadata"]["lables"] = {}
    refused(d, "metadata.lables", "unknown field")


def test_except_outside_cidr_is_refused() -> None:
    # API: "Except values will be rejected if they are outside the cidr range".
    block = {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.1.0.0/24"]}
    refused(
        np_dict({"podSelector": {}, "ingress": [{"from": [{}, {"ipBlock": block}]}]}),
        "spec.ingress[0].from[0]",
        "none was set",
    )
    refused(
        np_dict({"podSelector": {}, "ingress": [{"from": [{"ipBlock": block}]}]}),
        "spec.ingress[0].from[0].ipBlock.except[1]",
        "strictly inside",
    )


def test_except_equal_to_cidr_or_other_family_is_refused() -> None:
    for bad in ("10.0.0.0/16", "2001:2::/64"):
        refused(
            np_dict(
                {
                    "podSelector": {},
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": [bad]}}]}],
                }
            ),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "strictly inside",
        )


def test_bad_cidr_is_refused() -> None:
    for bad in ("10.0.0.0/33", "10.0.0.0", "nonsense", 10):
        refused(
            np_dict({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": bad}}]}]}),
            "spec.egress[0].to[0].ipBlock.cidr",
            "",
        )


def test_ipblock_with_a_selector_is_refused() -> None:
    peer = {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}
    refused(
        np_dict({"podSelector": {}, "ingress": [{"from": [peer]}]}),
        "spec.ingress[0].from[0]",
        "ipBlock alone",
    )


def test_end_port_without_numeric_port_is_refused() -> None:
    refused(
        np_dict({"podSelector": {}, "ingress": [{"ports": [{"endPort": 90}]}]}),
        "spec.ingress[0].ports[0].endPort",
        "numeric 'port'",
    )
    refused(
        np_dict({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
        "spec.ingress[0].ports[0].endPort",
        "numeric 'port'",
    )


def test_end_port_below_port_is_refused() -> None:
    refused(
        np_dict({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
        "spec.ingress[0].ports[0].endPort",
        "at least port (90)",
    )


@pytest.mark.parametrize("proto", ["tcp", "ICMP", "", None])
def test_bad_protocol_is_refused(proto: object) -> None:
    refused(
        np_dict({"podSelector": {}, "ingress": [{"ports": [{"protocol": proto}]}]}),
        "spec.ingress[0].ports[0].protocol",
        "TCP, UDP or SCTP",
    )


@pytest.mark.parametrize("port", [0, 65536, True, "80", "Http", "a-", "toolongportname1", "a--b"])
def test_bad_port_is_refused(port: object) -> None:
    refused(
        np_dict({"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}),
        "spec.ingress[0].ports[0].port",
        "",
    )


def test_bad_selectors_are_refused() -> None:
    def sel(s: object) -> dict[str, Any]:
        return np_dict({"podSelector": s})

    refused(sel({"matchLabels": {"a": 1}}), "spec.podSelector.matchLabels.a", "string")
    refused(sel({"matchLabels": {"-bad": "x"}}), "spec.podSelector.matchLabels.-bad", "label key")
    refused(
        sel({"matchLabels": {"Bad.Prefix/a": "x"}}), "spec.podSelector.matchLabels.Bad.Prefix/a", ""
    )
    refused(sel({"matchLabels": {"a": "b c"}}), "spec.podSelector.matchLabels.a", "label value")
    refused(
        sel({"matchExpressions": [{"key": "a", "operator": "in", "values": ["b"]}]}),
        "spec.podSelector.matchExpressions[0].operator",
        "In, NotIn, Exists, DoesNotExist",
    )
    refused(
        sel({"matchExpressions": [{"key": "a", "operator": "In"}]}),
        "spec.podSelector.matchExpressions[0].values",
        "non-empty",
    )
    refused(
        sel({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}),
        "spec.podSelector.matchExpressions[0].values",
        "absent or empty",
    )


def test_bad_policy_types_are_refused() -> None:
    refused(np_dict({"policyTypes": ["ingress"]}), "spec.policyTypes[0]", "Ingress or Egress")
    refused(np_dict({"policyTypes": ["Ingress", "Ingress"]}), "spec.policyTypes", "each once")


def test_missing_name_and_wrong_kind_are_refused() -> None:
    d = np_dict({})
    del d["metadata"]["name"]
    refused(d, "metadata.name", "required")
    d = np_dict({})
    d["apiVersion"] = "networking.k8s.io/v1beta1"
    refused(d, "apiVersion", "networking.k8s.io/v1")


def test_error_message_names_field_and_fix() -> None:
    with pytest.raises(ConfigError) as e:
        policy.NetworkPolicy.from_dict(
            np_dict(
                {
                    "ingress": [
                        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}
                    ]
                }
            )
        )
    assert str(e.value).startswith("spec.ingress[0].from[0].ipBlock.except[0]='11.0.0.0/8': ")
    assert "10.0.0.0/8" in str(e.value)


# -- selectors ---------------------------------------------------------------


def _sel(d: dict[str, Any]) -> LabelSelector:
    return LabelSelector.from_dict(d, "s")


def test_selector_operators() -> None:
    def expr(op: str, *values: str) -> LabelSelector:
        return _sel({"matchExpressions": [{"key": "k", "operator": op, "values": list(values)}]})

    assert expr("In", "a", "b").matches({"k": "b"})
    assert not expr("In", "a").matches({})
    assert expr("NotIn", "a").matches({})  # an absent key is "not in"
    assert expr("NotIn", "a").matches({"k": "b"})
    assert not expr("NotIn", "a").matches({"k": "a"})
    assert expr("Exists").matches({"k": ""})
    assert not expr("Exists").matches({"j": "k"})
    assert expr("DoesNotExist").matches({"j": "k"})
    assert not expr("DoesNotExist").matches({"k": ""})


def test_empty_selector_selects_everything_and_parts_are_anded() -> None:
    assert _sel({}).matches({}) and _sel({}).empty
    both = _sel(
        {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}
    )
    assert both.matches({"a": "1", "b": "x"})
    assert not both.matches({"a": "1"})
    assert not both.matches({"b": "x"})


# -- admin kinds ---------------------------------------------------------------


def anp_dict(spec: dict[str, Any], name: str = "a") -> dict[str, Any]:
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def anp_refused(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        policy.AdminNetworkPolicy.from_dict(anp_dict(spec))
    assert e.value.field == field
    assert words in e.value.expected


SUBJ = {"namespaces": {}}


def test_anp_parses_rules_in_order() -> None:
    a = policy.AdminNetworkPolicy.from_dict(
        anp_dict(
            {
                "priority": 5,
                "subject": {
                    "pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}
                },
                "egress": [
                    {"name": "x", "action": "Deny", "to": [{"networks": ["198.19.0.0/16"]}]},
                    {
                        "action": "Allow",
                        "to": [{"namespaces": {}}],
                        "ports": [
                            {"portNumber": {"port": 53, "protocol": "UDP"}},
                            {"portRange": {"start": 80, "end": 90}},
                            {"namedPort": "dns"},
                        ],
                    },
                ],
            }
        )
    )
    assert a.priority == 5 and [r.action for r in a.egress] == ["Deny", "Allow"]
    ports = a.egress[1].ports
    assert ports is not None
    assert [(p.protocol, p.start, p.end, p.name) for p in ports] == [
        ("UDP", 53, 53, None),
        ("TCP", 80, 90, None),
        ("TCP", 0, 0, "dns"),
    ]


def test_anp_refusals_name_the_field() -> None:
    anp_refused({"subject": SUBJ}, "spec.priority", "required")
    anp_refused({"priority": 1001, "subject": SUBJ}, "spec.priority", "0-1000")
    anp_refused({"priority": 1}, "spec.subject", "required")
    anp_refused(
        {"priority": 1, "subject": {"namespaces": {}, "pods": {}}}, "spec.subject", "exactly one"
    )
    anp_refused(
        {
            "priority": 1,
            "subject": SUBJ,
            "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}],
        },
        "spec.ingress[0].action",
        "Allow or Deny or Pass",
    )
    anp_refused(
        {"priority": 1, "subject": SUBJ, "ingress": [{"action": "Allow", "from": []}]},
        "spec.ingress[0].from",
        "at least 1",
    )
    anp_refused(
        {
            "priority": 1,
            "subject": SUBJ,
            "ingress": [{"action": "Allow", "from": [{"networks": ["10.0.0.0/8"]}]}],
        },
        "spec.ingress[0].from[0].networks",
        "unknown field",
    )
    anp_refused(
        {"priority": 1, "subject": SUBJ, "egress": [{"action": "Allow", "to": [{"nodes": {}}]}]},
        "spec.egress[0].to[0].nodes",
        "networks",
    )
    anp_refused(
        {
            "priority": 1,
            "subject": SUBJ,
            "egress": [{"action": "Allow", "to": [{"namespaces": {}}], "ports": []}],
        },
        "spec.egress[0].ports",
        "omit 'ports'",
    )
    anp_refused(
        {
            "priority": 1,
            "subject": SUBJ,
            "egress": [
                {
                    "action": "Allow",
                    "to": [{"namespaces": {}}],
                    "ports": [{"portRange": {"start": 90, "end": 90}}],
                }
            ],
        },
        "spec.egress[0].ports[0].portRange.end",
        "greater than start",
    )


def test_banp_must_be_named_default_and_has_no_pass() -> None:
    d = anp_dict({"subject": SUBJ}, name="other")
    d["kind"] = "BaselineAdminNetworkPolicy"
    with pytest.raises(ConfigError) as e:
        policy.BaselineAdminNetworkPolicy.from_dict(d)
    assert e.value.field == "metadata.name"
    d["metadata"]["name"] = "default"
    d["spec"]["ingress"] = [{"action": "Pass", "from": [{"namespaces": {}}]}]
    with pytest.raises(ConfigError) as e:
        policy.BaselineAdminNetworkPolicy.from_dict(d)
    assert e.value.field == "spec.ingress[0].action"


# -- the loader ---------------------------------------------------------------

MANIFEST = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
---
# a comment-only document is skipped
---
apiVersion: v1
kind: List
items:
- apiVersion: policy.networking.k8s.io/v1alpha1
  kind: AdminNetworkPolicy
  metadata: {name: first}
  spec:
    priority: 1
    subject: {namespaces: {}}
- apiVersion: policy.networking.k8s.io/v1alpha1
  kind: BaselineAdminNetworkPolicy
  metadata: {name: default}
  spec:
    subject: {namespaces: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-namespace}
spec: {podSelector: {}}
"""


def test_load_multi_document_yaml_with_lists() -> None:
    objs = policy.load(MANIFEST, namespace="y")
    assert [type(o).__name__ for o in objs] == [
        "NetworkPolicy",
        "AdminNetworkPolicy",
        "BaselineAdminNetworkPolicy",
        "NetworkPolicy",
    ]
    nps, admin, baseline = policy.split(objs)
    assert [p.key for p in nps] == ["x/deny", "y/no-namespace"]
    assert [a.name for a in admin] == ["first"] and baseline is not None


def test_load_json_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(
        json.dumps(
            {
                "kind": "NetworkPolicyList",
                "apiVersion": "networking.k8s.io/v1",
                "items": [
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "NetworkPolicy",
                        "metadata": {"name": "j", "namespace": "x"},
                        "spec": {},
                    }
                ],
            }
        )
    )
    (tmp_path / "a.yaml").write_text(MANIFEST)
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert len(policy.load(tmp_path / "b.json")) == 1
    objs = policy.load(tmp_path)
    assert len(objs) == 5 and isinstance(objs[-1], policy.NetworkPolicy) and objs[-1].name == "j"


def test_load_error_names_document_object_and_path() -> None:
    bad = (
        MANIFEST
        + """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}
"""
    )
    with pytest.raises(ConfigError) as e:
        policy.load(bad)
    assert (
        e.value.field
        == "<text> document 5 (NetworkPolicy x/web) spec.ingress[0].from[0].ipBlock.except[0]"
    )


def test_load_refuses_unknown_kinds_duplicates_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one of NetworkPolicy"):
        policy.load("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    with pytest.raises(ConfigError, match="networking.k8s.io/v1 for NetworkPolicy"):
        policy.load("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n")
    with pytest.raises(ConfigError, match="not already used"):
        policy.load(MANIFEST + "---\n" + MANIFEST)
    with pytest.raises(ConfigError, match="valid YAML or JSON"):
        policy.load("kind: [unclosed\n")
    with pytest.raises(ConfigError, match="existing file"):
        policy.load(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="quote it"):
        policy.load(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
            "spec: {podSelector: {matchLabels: {enabled: yes}}}\n"
        )
