"""CNI 1.1.0 types: environment, configuration, results, errors (with their codes)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.cni.spec import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    CniEnv,
    CniError,
    Interface,
    IPConfig,
    NetConf,
    Result,
    Route,
    version_result,
)

ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/var/run/netns/pod",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_NAMESPACE=default",
    "CNI_PATH": "/usr/lib/cni:/opt/cni/bin",
}


def test_environment_is_parsed() -> None:
    env = CniEnv.from_environ(ADD_ENV)
    assert env.command == "ADD" and env.container_id == "abc123" and env.ifname == "eth0"
    assert env.args == {"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "default"}
    assert env.path == ("/usr/lib/cni", "/opt/cni/bin")


@pytest.mark.parametrize(
    "change,names",
    [
        ({"CNI_COMMAND": "CREATE"}, "CNI_COMMAND"),
        ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
        ({"CNI_NETNS": ""}, "CNI_NETNS"),
        ({"CNI_IFNAME": ""}, "CNI_IFNAME"),
        ({"CNI_CONTAINERID": "-bad"}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "a-very-long-interface"}, "CNI_IFNAME"),
        ({"CNI_ARGS": "novalue"}, "CNI_ARGS"),
        ({"CNI_CONTAINERID": "abc\n"}, "CNI_CONTAINERID"),  # "$" matched before a "\n"
        ({"CNI_CONTAINERID": "a" * 256}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "a b"}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "."}, "CNI_IFNAME"),
        ({"CNI_IFNAME": ".."}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "eth0\n"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "eth\t0"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "é" * 8}, "CNI_IFNAME"),  # 16 bytes
    ],
)
def test_bad_environment_is_code_4_naming_the_variable(change: dict[str, str], names: str) -> None:
    with pytest.raises(CniError) as info:
        CniEnv.from_environ({**ADD_ENV, **change})
    assert info.value.code == INVALID_ENV and names in info.value.msg


@pytest.mark.parametrize("cid", ["a", "A1", "0abc", "a.b-c_d", "a" * 255, "f" * 64])
@pytest.mark.parametrize("ifname", ["eth0", "e", "net1.100", "x" * 15, "é" * 7, "pod@1"])
def test_values_within_the_spec_rules_are_taken(cid: str, ifname: str) -> None:
    env = CniEnv.from_environ({**ADD_ENV, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname})
    assert (env.container_id, env.ifname) == (cid, ifname)


# Characters near the rules' edges: allowed ones, separators, line breaks, non-ASCII.
_EDGY = st.sampled_from("aZ09_.-\n\t /:é\x00")


@settings(max_examples=300)
@given(
    cid=st.just("c1") | st.text(_EDGY, max_size=300) | st.text(max_size=20),
    ifname=st.just("eth0") | st.text(_EDGY, max_size=20) | st.text(max_size=20),
)
def test_any_container_id_and_ifname_is_taken_by_the_rules_or_is_code_4(
    cid: str, ifname: str
) -> None:
    environ = {**ADD_ENV, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname}
    try:
        env = CniEnv.from_environ(environ)
    except CniError as exc:
        assert exc.code == INVALID_ENV and ("CNI_CONTAINERID" in exc.msg or "CNI_IFNAME" in exc.msg)
        return
    # What is taken can name a file and an interface: no separator, no space or
    # line break anywhere (a trailing one included), and bounded.
    assert env.container_id.isascii() and len(env.container_id) <= 255
    assert not any(c.isspace() or c in "/:\0" for c in env.container_id + env.ifname)
    assert 1 <= len(env.ifname.encode()) <= 15 and env.ifname not in (".", "..")


def test_the_netns_check_refuses_what_is_not_a_pods_network_namespace(tmp_path: Path) -> None:
    env = CniEnv.from_environ(ADD_ENV)
    for path, says in [
        ("/proc/self/ns/net", "not the namespace the CNI plugin runs in"),
        (f"/proc/{os.getpid()}/ns/net", "not the namespace the CNI plugin runs in"),
        ("/proc/self/ns/uts", "not a network namespace"),
        (str(tmp_path), "not a namespace file"),
        ("/nonexistent", "nothing is there"),
        ("relative", "an absolute path"),
        ("/dev/null", "not a namespace file"),
    ]:
        with pytest.raises(CniError) as info:
            dataclasses.replace(env, netns=path).check_netns()
        assert info.value.code == INVALID_ENV and "CNI_NETNS" in info.value.msg, path
        assert says in info.value.msg, (path, info.value.msg)
    # CHECK leaves a vanished namespace to its comparison (a difference, not bad input).
    dataclasses.replace(env, netns="/nonexistent").check_netns(missing_ok=True)


def test_del_needs_no_netns_and_version_needs_nothing() -> None:
    env = {k: v for k, v in ADD_ENV.items() if k != "CNI_NETNS"}
    assert CniEnv.from_environ({**env, "CNI_COMMAND": "DEL"}).netns == ""
    assert CniEnv.from_environ({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert json.loads(version_result())["supportedVersions"][-1] == "1.1.0"


@pytest.mark.parametrize(
    "data,code,text",
    [
        (b"{not json", DECODE_FAILURE, "JSON"),
        (b"[]", DECODE_FAILURE, "object"),
        (b'{"name": "n", "type": "overlay"}', INVALID_CONFIG, "cniVersion"),
        (b'{"cniVersion": "9.9.9", "name": "n", "type": "overlay"}', INCOMPATIBLE_VERSION, "9.9.9"),
        (b'{"cniVersion": "1.1.0", "name": "bad name", "type": "overlay"}', INVALID_CONFIG, "name"),
        (b'{"cniVersion": "1.1.0", "name": "n"}', INVALID_CONFIG, "type"),
        (b'{"cniVersion": "1.1.0", "name": "n", "type": "o", "ipam": 3}', INVALID_CONFIG, "ipam"),
        (
            b'{"cniVersion": "1.1.0", "name": "n", "type": "o", "prevResult": []}',
            INVALID_CONFIG,
            "prevResult",
        ),
        (b'{"cniVersion": "1.1.0", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
         DECODE_FAILURE, "nested at most 64"),
        (b'{"a": ' + b"[" * 65 + b"]" * 65 + b"}", DECODE_FAILURE, "nested at most 64"),
        (b'{"cniVersion": "1.1.0", "name": "\xff"}', DECODE_FAILURE, "JSON"),
        (b'{"cniVersion": "1.1.0", "name": "blue\\n", "type": "o"}', INVALID_CONFIG, "name="),
        (b'{"cniVersion": "1.1.0", "name": "' + b"n" * 256 + b'", "type": "o"}', INVALID_CONFIG,
         "1-255 characters"),
    ],
)  # fmt: skip
def test_bad_configuration_gets_the_right_code(data: bytes, code: int, text: str) -> None:
    with pytest.raises(CniError) as info:
        NetConf.parse(data)
    assert info.value.code == code and text in info.value.msg
    body = json.loads(info.value.to_json())
    assert body["code"] == code and body["msg"] == info.value.msg


def test_configuration_keeps_its_fields() -> None:
    conf = NetConf.parse(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "blue",
                "type": "overlay-cni",
                "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"},
                "vni": 100,
            }
        )
    )
    assert conf.cni_version == "1.0.0" and conf.ipam["type"] == "host-local"
    assert conf.raw["vni"] == 100


@given(st.binary(max_size=200))
def test_any_stdin_is_a_config_or_a_cni_error(data: bytes) -> None:
    try:
        NetConf.parse(data)
    except CniError as exc:
        assert exc.code in (DECODE_FAILURE, INVALID_CONFIG, INCOMPATIBLE_VERSION)


def test_result_round_trips_and_old_versions_get_ip_version() -> None:
    r = Result(
        cni_version="1.1.0",
        interfaces=[Interface("eth0", "02:00:00:00:01:02", 1450, "/var/run/netns/pod")],
        ips=[IPConfig("10.244.1.2/16", "10.244.1.1", 0)],
        routes=[Route("0.0.0.0/0", "10.244.1.1")],
    )
    again = Result.from_dict(json.loads(r.to_json()))
    assert again == r
    old = Result(cni_version="0.3.1", ips=[IPConfig("10.244.1.2/16")]).to_dict()
    assert old["ips"][0]["version"] == "4"
    with pytest.raises(CniError):
        IPConfig("10.244.1.999/16")
    with pytest.raises(CniError) as info:
        Result.from_dict({"ips": [{"gateway": "10.244.1.1"}]})
    assert info.value.code == DECODE_FAILURE


HOST_LOCAL = "/usr/lib/cni/host-local"


@pytest.mark.skipif(not os.path.exists(HOST_LOCAL), reason="containernetworking-plugins missing")
def test_result_reads_what_debians_host_local_returns(tmp_path: Path) -> None:
    """Chaining: host-local (spec <= 1.0.0) answers; our Result reads it and our DEL frees it."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "blue",
        "type": "overlay-cni",
        "ipam": {
            "type": "host-local",
            "subnet": "10.244.7.0/24",
            "dataDir": str(tmp_path / "ipam"),
        },
    }
    env = {
        **ADD_ENV,
        "CNI_PATH": "/usr/lib/cni",
        "CNI_CONTAINERID": "ctr1",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
    }
    done = subprocess.run(
        [HOST_LOCAL], input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=10
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = Result.from_dict(json.loads(done.stdout))
    assert result.ips[0].address.startswith("10.244.7.")
    assert result.ips[0].gateway == "10.244.7.1"
    done = subprocess.run(
        [HOST_LOCAL],
        input=json.dumps(conf),
        capture_output=True,
        text=True,
        env={**env, "CNI_COMMAND": "DEL"},
        timeout=10,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # And a 1.1.0 configuration is refused by host-local with the spec's code 1.
    done = subprocess.run(
        [HOST_LOCAL],
        input=json.dumps({**conf, "cniVersion": "1.1.0"}),
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
    )
    assert done.returncode != 0 and json.loads(done.stdout)["code"] == INCOMPATIBLE_VERSION
