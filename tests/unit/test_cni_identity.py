"""Who a pod is, as overlay-cni gathers it (``overlay.cni.plugin.endpoint_identity``):
labels from ``args.cni.labels`` and ``runtimeConfig.labels``, the namespace and
name from ``CNI_ARGS``, ``args.cni`` or those labels, named ports from
``args.cni.namedPorts`` and ``runtimeConfig.namedPorts``, each refusal naming its
source. The same values through the real plugin and a real overlayd are in
``tests/daemon/test_cni_plugin.py``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from overlay.cni import validate
from overlay.cni.plugin import UID_LABEL, PodIdentity, endpoint_identity
from overlay.cni.spec import INVALID_CONFIG, INVALID_ENV, CniEnv, CniError, NetConf
from overlay.errors import ConfigError
from overlay.model import NAMESPACE_LABEL, POD_LABEL
from overlay.policy.model import check_namespace_name


def identity(cni_args: str = "", **conf: Any) -> PodIdentity:
    env = CniEnv.from_environ(
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "ctr1",
            "CNI_NETNS": "/var/run/netns/ctr1",
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": cni_args,
        }
    )
    base = {"cniVersion": "1.1.0", "name": "blue", "type": "overlay-cni", "vni": 100}
    return endpoint_identity(env, NetConf.parse(json.dumps({**base, **conf})))


def refused(cni_args: str = "", **conf: Any) -> CniError:
    with pytest.raises(CniError) as err:
        identity(cni_args, **conf)
    return err.value


def test_the_kubernetes_cni_args_name_the_pod_and_become_its_labels() -> None:
    who = identity("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop;K8S_POD_UID=u-1")
    assert who == PodIdentity(
        "shop/web",
        {NAMESPACE_LABEL: "shop", POD_LABEL: "web", UID_LABEL: "u-1"},
        namespace="shop",
        pod="web",
    )
    # No pod: the container ID names the endpoint, and no namespace is claimed.
    assert identity() == PodIdentity("ctr1", {})


def test_runtime_config_labels_and_args_cni_labels_are_merged() -> None:
    who = identity(
        "K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop",
        capabilities={"labels": True},
        runtimeConfig={"labels": {"app": "web", "tier": "front"}},
        args={"cni": {"labels": [{"key": "team", "value": "a"}, {"key": "app", "value": "web"}]}},
    )
    assert who.labels == {
        "team": "a",
        "app": "web",
        "tier": "front",
        NAMESPACE_LABEL: "shop",
        POD_LABEL: "web",
    }


def test_args_cni_namespace_and_pod_name_name_the_pod() -> None:
    who = identity(args={"cni": {"namespace": "shop", "podName": "web-0.a"}})
    assert (who.name, who.namespace, who.pod) == ("shop/web-0.a", "shop", "web-0.a")
    assert who.labels == {NAMESPACE_LABEL: "shop", POD_LABEL: "web-0.a"}
    # The same value twice is no conflict.
    assert identity("K8S_POD_NAMESPACE=shop", args={"cni": {"namespace": "shop"}}).namespace == (
        "shop"
    )


def test_precedence_cni_args_then_args_cni_then_the_labels() -> None:
    labels = {NAMESPACE_LABEL: "from-label", POD_LABEL: "label-pod"}
    # The labels alone name the pod...
    who = identity(runtimeConfig={"labels": labels})
    assert (who.name, who.namespace, who.pod) == ("from-label/label-pod", "from-label", "label-pod")
    # ...args.cni outranks them...
    who = identity(runtimeConfig={"labels": labels}, args={"cni": {"namespace": "from-args"}})
    assert who.namespace == "from-args" and who.labels[NAMESPACE_LABEL] == "from-args"
    assert who.pod == "label-pod"
    # ...and CNI_ARGS outranks both (args.cni agreeing with it).
    who = identity(
        "K8S_POD_NAMESPACE=from-env;K8S_POD_NAME=env-pod",
        runtimeConfig={"labels": labels},
        args={"cni": {"labels": [{"key": NAMESPACE_LABEL, "value": "from-label"}]}},
    )
    assert who.labels[NAMESPACE_LABEL] == "from-env" and who.labels[POD_LABEL] == "env-pod"
    assert who.name == "from-env/env-pod"


@pytest.mark.parametrize(
    "cni_args, conf, code, says",
    [
        # Conflicts: both sources named.
        ("K8S_POD_NAMESPACE=shop", {"args": {"cni": {"namespace": "other"}}}, INVALID_CONFIG,
         "args.cni.namespace='other' and CNI_ARGS K8S_POD_NAMESPACE='shop' name different pods"),
        ("K8S_POD_NAME=web", {"args": {"cni": {"podName": "db"}}}, INVALID_CONFIG,
         "args.cni.podName='db' and CNI_ARGS K8S_POD_NAME='web'"),
        ("", {"args": {"cni": {"labels": [{"key": "app", "value": "a"}]}},
              "runtimeConfig": {"labels": {"app": "b"}}}, INVALID_CONFIG,
         "runtimeConfig.labels gives label app='b' and args.cni.labels[0] gives app='a'"),
        ("", {"args": {"cni": {"labels": [{"key": "app", "value": "a"},
                                          {"key": "app", "value": "b"}]}}}, INVALID_CONFIG,
         "args.cni.labels[1] gives label app='b' and args.cni.labels[0] gives app='a'"),
        # Bad values: the field named, with what is accepted.
        ("K8S_POD_NAMESPACE=Shop", {}, INVALID_ENV,
         "CNI_ARGS K8S_POD_NAMESPACE='Shop': a namespace"),
        ("K8S_POD_NAMESPACE=" + "n" * 64, {}, INVALID_ENV, "1-63 lowercase"),
        ("K8S_POD_NAME=web_0", {}, INVALID_ENV, "CNI_ARGS K8S_POD_NAME='web_0': a pod name"),
        ("", {"args": {"cni": {"namespace": "a.b"}}}, INVALID_CONFIG,
         "args.cni.namespace='a.b': a namespace name"),
        ("", {"args": {"cni": {"namespace": 7}}}, INVALID_CONFIG,
         "args.cni.namespace=7: the pod's namespace, a string"),
        ("", {"args": {"cni": {"podName": "-web"}}}, INVALID_CONFIG,
         "args.cni.podName='-web': a pod name"),
        ("", {"runtimeConfig": {"labels": ["app=web"]}}, INVALID_CONFIG,
         "runtimeConfig.labels=['app=web']: a JSON object"),
        ("", {"runtimeConfig": {"labels": {"app": 1}}}, INVALID_CONFIG,
         "runtimeConfig.labels (key 'app') has 1: a string value"),
        ("", {"runtimeConfig": {"labels": {"bad key": "v"}}}, INVALID_CONFIG,
         "runtimeConfig.labels (key 'bad key')"),
        ("", {"runtimeConfig": {"labels": {NAMESPACE_LABEL: "Upper"}}}, INVALID_CONFIG,
         f"runtimeConfig.labels (key {NAMESPACE_LABEL})='Upper': a namespace name"),
        ("", {"runtimeConfig": {"labels": {NAMESPACE_LABEL: ""}}}, INVALID_CONFIG,
         f"runtimeConfig.labels (key {NAMESPACE_LABEL})='': a namespace name"),
        ("K8S_POD_NAME=a", {"runtimeConfig": {"labels": {f"k{i}": "v" for i in range(64)}}},
         INVALID_CONFIG, "at most 64 labels"),
    ],
)  # fmt: skip
def test_conflicts_and_bad_values_are_refused_naming_the_field(
    cni_args: str, conf: dict[str, Any], code: int, says: str
) -> None:
    err = refused(cni_args, **conf)
    assert err.code == code and says in err.msg, err.msg


def test_a_label_the_pods_own_field_overrides_is_not_checked_as_a_namespace() -> None:
    """Only the value that names the pod is held to the namespace rule; a label it
    overrides need only be a valid label."""
    who = identity("K8S_POD_NAMESPACE=shop", runtimeConfig={"labels": {NAMESPACE_LABEL: "Old"}})
    assert who.labels[NAMESPACE_LABEL] == "shop"


def test_named_ports_of_args_cni_and_runtime_config_are_merged() -> None:
    who = identity(
        capabilities={"namedPorts": True},
        runtimeConfig={
            "namedPorts": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "udp"},
            ]
        },
        args={"cni": {"namedPorts": [{"name": "http", "port": 8080}, {"name": "m", "port": 9}]}},
    )
    assert who.named_ports == {"http": (8080, "TCP"), "dns": (53, "UDP"), "m": (9, "TCP")}
    assert identity().named_ports == {}  # none given: none


@pytest.mark.parametrize(
    "conf, says",
    [
        # The same name with two values: both sources named.
        ({"args": {"cni": {"namedPorts": [{"name": "http", "port": 80}]}},
          "runtimeConfig": {"namedPorts": [{"name": "http", "port": 8080}]}},
         "runtimeConfig.namedPorts[0] gives named port http=8080/TCP and "
         "args.cni.namedPorts[0] gives http=80/TCP"),
        ({"runtimeConfig": {"namedPorts": [{"name": "http", "port": 80},
                                           {"name": "http", "port": 80, "protocol": "UDP"}]}},
         "runtimeConfig.namedPorts[1] gives named port http=80/UDP and "
         "runtimeConfig.namedPorts[0] gives http=80/TCP"),
        # Bad entries, in either source: the field named.
        ({"args": {"cni": {"namedPorts": {"http": 80}}}},
         "args.cni.namedPorts={'http': 80}: a list like"),
        ({"runtimeConfig": {"namedPorts": ["http"]}},
         "runtimeConfig.namedPorts[0]='http': an object like"),
        ({"runtimeConfig": {"namedPorts": [{"name": "HTTP", "port": 80}]}},
         "runtimeConfig.namedPorts[0].name='HTTP': a port name"),
        ({"args": {"cni": {"namedPorts": [{"name": "a" * 16, "port": 80}]}}},
         "args.cni.namedPorts[0].name='aaaaaaaaaaaaaaaa': a port name"),
        ({"args": {"cni": {"namedPorts": [{"name": "123", "port": 80}]}}},
         "args.cni.namedPorts[0].name='123': a port name"),
        ({"args": {"cni": {"namedPorts": [{"port": 80}]}}},
         "args.cni.namedPorts[0].name=None: a port name"),
        ({"args": {"cni": {"namedPorts": [{"name": "http", "port": 0}]}}},
         "args.cni.namedPorts[0].port=0: a port number 1-65535"),
        ({"args": {"cni": {"namedPorts": [{"name": "http", "port": "80"}]}}},
         "args.cni.namedPorts[0].port='80': a port number"),
        ({"args": {"cni": {"namedPorts": [{"name": "http"}]}}},
         "args.cni.namedPorts[0].port=None: a port number"),
        ({"runtimeConfig": {"namedPorts": [{"name": "http", "port": 80, "protocol": "ICMP"}]}},
         "runtimeConfig.namedPorts[0].protocol='ICMP': TCP, UDP or SCTP"),
        ({"runtimeConfig": {"namedPorts": [{"name": "http", "port": 80, "proto": "TCP"}]}},
         "runtimeConfig.namedPorts[0].'proto': unknown"),
        ({"runtimeConfig": {"namedPorts": [{"name": f"p{i}", "port": i + 1}
                                           for i in range(65)]}},
         "name 65 ports: at most 64"),
    ],
)  # fmt: skip
def test_bad_or_conflicting_named_ports_are_code_7_naming_the_field(
    conf: dict[str, Any], says: str
) -> None:
    err = refused("", **conf)
    assert err.code == INVALID_CONFIG and says in err.msg, err.msg


@pytest.mark.parametrize(
    "value",
    ["default", "kube-system", "a", "a" * 63, "a" * 64, "Shop", "a.b", "-a", "a-", "a_b", "",
     "1abc", "é"],
)  # fmt: skip
def test_the_namespace_rule_is_the_policy_layers(value: str) -> None:
    """A namespace the plugin lets through is one the policy layer accepts."""
    try:
        validate.namespace_name(value)
        plugin_ok = True
    except validate.Invalid:
        plugin_ok = False
    try:
        check_namespace_name("namespace", value)
        policy_ok = True
    except ConfigError:
        policy_ok = False
    assert plugin_ok == policy_ok


@pytest.mark.parametrize(
    "value, ok",
    [("web", True), ("web-0.a.b", True), ("a" * 253, True), ("a" * 254, False), ("Web", False),
     ("web..a", False), ("web.", False), (".web", False), ("web_0", False), ("", False)],
)  # fmt: skip
def test_a_pod_name_is_a_dns_subdomain(value: str, ok: bool) -> None:
    if ok:
        validate.pod_name(value)
    else:
        with pytest.raises(validate.Invalid):
            validate.pod_name(value)
