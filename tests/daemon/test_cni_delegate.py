"""Delegated IPAM: Debian's real host-local (CNI <= 1.0.0), the example static-ipam
plugin (1.1.0) and small recording plugins, run as the executables they are."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from overlay.cni.delegate import Delegate, find_plugin
from overlay.cni.spec import (
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    PLUGIN_INTERNAL,
    CniError,
    Result,
)
from overlay.testing.daemon import CNI_DIR, EXAMPLES_DIR, PACKAGE_PARENT

HOST_LOCAL = os.path.join(CNI_DIR, "host-local")
needs_host_local = pytest.mark.skipif(
    not os.access(HOST_LOCAL, os.X_OK),
    reason=f"{HOST_LOCAL} is missing: apt-get install containernetworking-plugins",
)
EXAMPLE = Path(EXAMPLES_DIR) / "cni_static_plugin.py"


def netconf(tmp_path: Path, version: str = "1.1.0", **ipam: Any) -> dict[str, Any]:
    """overlay-cni's configuration delegating to host-local, one address by default."""
    return {
        "cniVersion": version,
        "name": "blue",
        "type": "overlay-cni",
        "vni": 100,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.7.0/24", "rangeStart": "10.244.7.5",
                         "rangeEnd": "10.244.7.5", "gateway": "10.244.7.1"}]],
            "dataDir": str(tmp_path / "ipam"),
            **ipam,
        },
    }  # fmt: skip


def environ(tmp_path: Path, cid: str = "ctr1", **extra: str) -> dict[str, str]:
    # host-local only needs CNI_NETNS to be set (it never opens it); give it a
    # path that exists all the same.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": str(tmp_path),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": CNI_DIR,
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default",
        **extra,
    }


def host_local(tmp_path: Path, cid: str = "ctr1", version: str = "1.1.0", **ipam: Any) -> Delegate:
    conf = netconf(tmp_path, version, **ipam)
    return Delegate("host-local", conf, [CNI_DIR], environ(tmp_path, cid))


def leases(tmp_path: Path) -> list[str]:
    """host-local's reservations: one file per address in dataDir/<network name>."""
    d = tmp_path / "ipam" / "blue"
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []


@needs_host_local
def test_add_allocates_in_range_and_del_releases_for_the_next_container(tmp_path: Path) -> None:
    result = host_local(tmp_path, "ctr1").add()
    assert [ip.address for ip in result.ips] == ["10.244.7.5/24"]
    assert result.ips[0].gateway == "10.244.7.1"
    assert leases(tmp_path) == ["10.244.7.5"]
    # The range holds one address: a second container gets host-local's own error.
    with pytest.raises(CniError) as info:
        host_local(tmp_path, "ctr2").add()
    assert info.value.code == PLUGIN_INTERNAL
    assert (
        info.value.msg.startswith("host-local: ") and "no IP addresses available" in info.value.msg
    )
    host_local(tmp_path, "ctr1").delete()
    assert leases(tmp_path) == []
    assert host_local(tmp_path, "ctr2").add().ips[0].address == "10.244.7.5/24"
    host_local(tmp_path, "ctr1").delete()  # DEL of what is not held: still fine
    assert leases(tmp_path) == ["10.244.7.5"]


@needs_host_local
def test_a_1_1_0_configuration_is_handed_to_host_local_as_1_0_0(tmp_path: Path) -> None:
    d = host_local(tmp_path, version="1.1.0")
    assert "1.1.0" not in d.supported_versions() and "1.0.0" in d.supported_versions()
    assert d.version() == "1.0.0"
    assert d.speaks("CHECK") and not d.speaks("GC") and not d.speaks("STATUS")
    result = d.add()
    assert result.cni_version == "1.0.0" and result.ips[0].address == "10.244.7.5/24"
    # Versions host-local speaks are used as they are.
    assert host_local(tmp_path, version="0.4.0").version() == "0.4.0"
    assert not host_local(tmp_path, version="0.3.1").speaks("CHECK")


@needs_host_local
def test_check_passes_for_the_holder_and_fails_with_host_locals_error_otherwise(
    tmp_path: Path,
) -> None:
    result = host_local(tmp_path, "ctr1").add()
    prev = {**result.to_dict(), "cniVersion": "1.1.0"}  # as the runtime keeps it
    conf = {**netconf(tmp_path), "prevResult": prev}
    Delegate("host-local", conf, [CNI_DIR], environ(tmp_path, "ctr1")).check()
    with pytest.raises(CniError) as info:
        Delegate("host-local", conf, [CNI_DIR], environ(tmp_path, "ctr9")).check()
    assert info.value.msg.startswith("host-local: ") and "ctr9" in info.value.msg


@needs_host_local
def test_a_delegate_error_keeps_its_code_and_gets_the_delegates_name(tmp_path: Path) -> None:
    env = environ(tmp_path)
    del env["CNI_NETNS"]  # host-local's ADD needs it: the spec's code 4
    with pytest.raises(CniError) as info:
        Delegate("host-local", netconf(tmp_path), [CNI_DIR], env).add()
    assert info.value.code == INVALID_ENV
    assert info.value.msg.startswith("host-local: ") and "CNI_NETNS" in info.value.msg
    with pytest.raises(CniError) as info:
        host_local(tmp_path, subnet="not-a-subnet", ranges=None).add()
    assert info.value.code == PLUGIN_INTERNAL and "not-a-subnet" in info.value.msg


def test_a_plugin_missing_from_cni_path_is_code_7_naming_cni_path(tmp_path: Path) -> None:
    with pytest.raises(CniError) as info:
        find_plugin("no-such-ipam", [str(tmp_path), CNI_DIR])
    assert info.value.code == INVALID_CONFIG
    assert f"CNI_PATH={tmp_path}:{CNI_DIR}" in info.value.msg and "no-such-ipam" in info.value.msg
    with pytest.raises(CniError) as info:
        find_plugin("host-local", [])
    assert info.value.code == INVALID_ENV and "CNI_PATH" in info.value.msg
    with pytest.raises(CniError) as info:
        find_plugin("../bin/sh", [CNI_DIR])
    assert info.value.code == INVALID_CONFIG and "ipam.type" in info.value.msg
    (tmp_path / "not-executable").write_text("")
    with pytest.raises(CniError):
        find_plugin("not-executable", [str(tmp_path)])


# -- plugins that speak 1.1.0 ----------------------------------------------------

RECORDER = """#!{python}
# A CNI plugin that speaks {versions}, logs each call and answers from its argv.
import json, os, sys
data = sys.stdin.read()
with open({log!r}, "a") as f:
    f.write(json.dumps({{"command": os.environ["CNI_COMMAND"],
                        "cid": os.environ.get("CNI_CONTAINERID"),
                        "conf": json.loads(data) if data.strip() else None}}) + "\\n")
if os.environ["CNI_COMMAND"] == "VERSION":
    print(json.dumps({{"cniVersion": "1.1.0", "supportedVersions": {versions!r}}}))
elif os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps({{"cniVersion": "1.1.0", "ips": [{{"address": "10.244.9.9/24"}}]}}))
{extra}
"""


def recorder(tmp_path: Path, name: str, versions: list[str], extra: str = "") -> Path:
    """An executable plugin ``name`` in tmp_path/bin; returns its call log."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    exe = bindir / name
    code = RECORDER.format(python=sys.executable, versions=versions, log=str(log), extra=extra)
    exe.write_text(code)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_1_1_0_delegate_gets_1_1_0_and_gc_status_with_the_valid_attachments(
    tmp_path: Path,
) -> None:
    log = recorder(tmp_path, "rec-ipam", ["1.0.0", "1.1.0"])
    valid = [{"containerID": "ctr1", "ifname": "eth0"}]
    conf = {**netconf(tmp_path), "ipam": {"type": "rec-ipam"}, "cni.dev/valid-attachments": valid}
    d = Delegate("rec-ipam", conf, [str(tmp_path / "bin")], environ(tmp_path))
    assert d.version() == "1.1.0" and d.speaks("GC") and d.speaks("STATUS")
    assert d.add().ips[0].address == "10.244.9.9/24"
    d.gc()
    d.status()
    d.delete("ctr7", "net1")
    by_verb = {c["command"]: c for c in calls(log)}
    assert [c["command"] for c in calls(log)] == ["VERSION", "ADD", "GC", "STATUS", "DEL"]
    assert by_verb["ADD"]["conf"]["cniVersion"] == "1.1.0"
    assert by_verb["GC"]["conf"]["cni.dev/valid-attachments"] == valid
    # Only GC carries the valid-attachments list; DEL is for the container it names.
    assert "cni.dev/valid-attachments" not in by_verb["DEL"]["conf"]
    assert by_verb["DEL"]["cid"] == "ctr7"


def test_a_delegate_that_cannot_serve_the_version_is_code_1(tmp_path: Path) -> None:
    recorder(tmp_path, "old-ipam", ["0.3.0", "0.3.1"])
    conf = {**netconf(tmp_path), "ipam": {"type": "old-ipam"}}
    d = Delegate("old-ipam", conf, [str(tmp_path / "bin")], environ(tmp_path))
    with pytest.raises(CniError) as info:
        d.add()
    assert info.value.code == INCOMPATIBLE_VERSION
    assert (
        "0.3.1" in info.value.msg and "1.1.0" in info.value.msg and "cniVersion" in info.value.msg
    )


def test_a_delegate_that_dies_without_an_error_json_is_code_999_with_its_stderr(
    tmp_path: Path,
) -> None:
    extra = 'if os.environ["CNI_COMMAND"] == "DEL":\n    sys.exit("disk on fire")'
    recorder(tmp_path, "bad-ipam", ["1.1.0"], extra)
    conf = {**netconf(tmp_path), "ipam": {"type": "bad-ipam"}}
    d = Delegate("bad-ipam", conf, [str(tmp_path / "bin")], environ(tmp_path))
    with pytest.raises(CniError) as info:
        d.delete()
    assert info.value.code == PLUGIN_INTERNAL
    assert "disk on fire" in info.value.msg and "bad-ipam" in info.value.msg


# -- the example plugin, as a delegate -------------------------------------------


def static_ipam(tmp_path: Path, ipam: dict[str, Any], **conf: Any) -> Delegate:
    """examples/cni_static_plugin.py installed as ``static-ipam`` in a CNI_PATH directory."""
    bindir = tmp_path / "cni-bin"
    bindir.mkdir(exist_ok=True)
    link = bindir / "static-ipam"
    if not link.exists():
        link.symlink_to(EXAMPLE)
    env = environ(tmp_path, CNI_PATH=str(bindir), PYTHONPATH=PACKAGE_PARENT)
    full = {**netconf(tmp_path), "ipam": {"type": "static-ipam", **ipam}, **conf}
    return Delegate("static-ipam", full, [str(bindir)], env)


def test_the_example_static_plugin_serves_add_check_and_the_1_1_0_verbs(tmp_path: Path) -> None:
    ipam = {
        "addresses": [{"address": "10.244.9.5/24", "gateway": "10.244.9.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    d = static_ipam(tmp_path, ipam)
    assert d.version() == "1.1.0" and d.speaks("GC")
    result = d.add()
    assert [(ip.address, ip.gateway) for ip in result.ips] == [("10.244.9.5/24", "10.244.9.1")]
    assert result.routes[0].dst == "0.0.0.0/0"
    d.status()
    d.gc()
    d.delete()
    static_ipam(tmp_path, ipam, prevResult=result.to_dict()).check()
    with pytest.raises(CniError) as info:
        static_ipam(tmp_path, ipam, prevResult=Result().to_dict()).check()
    assert info.value.code == 100 and "10.244.9.5/24" in info.value.msg


@pytest.mark.parametrize(
    "ipam,names",
    [
        ({}, "ipam.addresses"),
        ({"addresses": [{"address": "10.244.9.300/24"}]}, "ips"),
        ({"addresses": [{"addr": "10.244.9.5/24"}]}, "addresses"),
        ({"addresses": [{"address": "10.244.9.5/24"}], "gateway": "x"}, "ipam.gateway"),
    ],
)
def test_the_example_static_plugin_refuses_bad_config_with_code_7(
    tmp_path: Path, ipam: dict[str, Any], names: str
) -> None:
    with pytest.raises(CniError) as info:
        static_ipam(tmp_path, ipam).add()
    assert info.value.code == INVALID_CONFIG and names in info.value.msg
    assert info.value.msg.startswith("static-ipam: ")
