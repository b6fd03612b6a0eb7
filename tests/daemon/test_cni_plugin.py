"""overlay-cni as the runtime runs it: an executable, CNI_* variables, a configuration on
stdin, a result or an error JSON on stdout (``overlay.testing.daemon.cni`` runs it).

Three groups of tests:

* no daemon at all (the socket path does not exist): the environment and
  configuration errors, STATUS 50, ADD/DEL/CHECK/GC 11, and the delegated
  IPAM lease released after a failed ADD but kept by a DEL that could not
  reach the daemon;
* ``cni_daemon``: a real overlayd (one node in a namespace, vni 100,
  10.244.0.0/16) and real pod namespaces. Everything a real daemon can be made
  to do is tested this way: the attachment and its result in every
  cniVersion, chaining with prevResult, the pod's name and labels, delegated
  addresses from Debian's host-local given to overlayd and released by DEL,
  GC and a refused ADD, refusals (a vni it does not host, a namespace that
  does not exist, a duplicate attachment, a full subnet), DEL of an unknown
  attachment, CHECK of an unknown, changed, unattached or vanished
  attachment, STATUS ready / not ready (waiting for its store) / vni not
  hosted;
* ``ApiStub``: overlayd's local API answered from a script on a real Unix
  socket, kept only for answers a real overlayd cannot be made to give: an
  internal error (500), not_found on ADD, an attachment record the plugin
  cannot read, and a not-ready status carrying a ``reason``.

The end-to-end runs (two nodes, traffic, every verb, concurrency, GC after a
crash) are in ``test_cni_e2e.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlay.cni.plugin import ATTACHMENT_CONFLICT, CHECK_MISMATCH, DAEMON_INTERNAL, NO_CAPACITY
from overlay.cni.spec import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    PLUGIN_NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
)
from overlay.control.ipam import mac_of
from overlay.daemon.client import Client, DaemonUnavailable
from overlay.testing.daemon import (
    CNI_DIR,
    MODULE_CNI,
    PACKAGE_PARENT,
    DaemonCluster,
    Overlayd,
    cni,
    overlay_cni,
)
from overlay.testing.netns import Netns, Topology

REPO = Path(__file__).resolve().parents[2]
HOST_LOCAL = os.path.join(CNI_DIR, "host-local")
needs_host_local = pytest.mark.skipif(
    not os.access(HOST_LOCAL, os.X_OK),
    reason=f"{HOST_LOCAL} is missing: apt-get install containernetworking-plugins",
)
MAC = "02:42:0a:f4:01:02"
NO_CONTAINER = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")  # STATUS and GC name none


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="ovcni-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pod_netns() -> Iterator[str]:
    """The path of a network namespace that is not this process's: ADD checks
    CNI_NETNS before anything else happens, also in tests that never reach a
    daemon. Held by a ``sleep`` in a user and network namespace of its own (no
    root needed), stopped by PID."""
    proc = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "600"])
    try:
        path = f"/proc/{proc.pid}/ns/net"
        own = os.stat("/proc/self/ns/net")
        while True:  # unshare(1) enters its namespaces, then becomes sleep
            if proc.poll() is not None:
                pytest.skip("unshare cannot make a network namespace here")
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino != own.st_ino:
                    break
            time.sleep(0.01)
        yield path
    finally:
        proc.kill()
        proc.wait()


def config(sock: Path | str, version: str = "1.1.0", /, **keys: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "blue",
        "type": "overlay-cni",
        "vni": 100,
        "socket": str(sock),
        **keys,
    }


def host_local_ipam(tmp_path: Path, last: int = 5) -> dict[str, Any]:
    """host-local handing out 10.244.7.5 to 10.244.7.<last>, its data under tmp_path."""
    return {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.7.0/24", "rangeStart": "10.244.7.5",
                     "rangeEnd": f"10.244.7.{last}", "gateway": "10.244.7.1"}]],
        "dataDir": str(tmp_path / "ipam"),
    }  # fmt: skip


def leases(tmp_path: Path) -> list[str]:
    d = tmp_path / "ipam" / "blue"
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []


def host_local(tmp_path: Path, command: str, cid: str = "ctr1") -> None:
    """Run host-local itself (as if an earlier ADD had taken the lease)."""
    conf = {**config("/unused", "1.0.0"), "ipam": host_local_ipam(tmp_path)}
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": str(tmp_path),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": CNI_DIR,
    }
    done = subprocess.run(
        [HOST_LOCAL], input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stdout


# -- VERSION and the console script ------------------------------------------------


def test_version_lists_every_supported_version_in_the_callers_version() -> None:
    run = cni("VERSION", None, unset=NO_CONTAINER)
    assert run.rc == 0
    assert run.out == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    assert cni("VERSION", {"cniVersion": "0.4.0"}).out["cniVersion"] == "0.4.0"


def test_the_console_script_overlay_cni_is_declared() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts.get("overlay-cni") == "overlay.cni.plugin:main"
    assert importlib.util.find_spec("overlay.cni.__main__") is not None


def test_the_console_script_and_python_m_answer_like_the_installed_launcher() -> None:
    for plugin in (MODULE_CNI, overlay_cni()):
        run = cni("VERSION", None, unset=NO_CONTAINER, plugin=plugin)
        assert run.rc == 0 and run.out["supportedVersions"][-1] == "1.1.0", plugin


def _install_cni(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlay.cli", "install-cni", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": PACKAGE_PARENT},
        check=False,
    )


def test_install_cni_writes_an_isolated_launcher_and_replaces_it_whole(tmp_path: Path) -> None:
    done = _install_cni("--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    plugin = tmp_path / "overlay-cni"
    assert done.stdout.strip() == str(plugin)
    assert plugin.stat().st_mode & 0o777 == 0o755
    assert plugin.read_text().splitlines()[0] == f"#!{sys.executable} -IS"
    # -I: a PYTHONPATH whose `overlay` would break the plugin is not read.
    trap = tmp_path / "trap" / "overlay"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise SystemExit('the trap was imported')\n")
    run = cni(
        "VERSION", None, unset=NO_CONTAINER, plugin=[str(plugin)], PYTHONPATH=str(trap.parent)
    )
    assert run.success()["cniVersion"] == "1.1.0"
    run = cni("ADD", {"cniVersion": "1.0.0", "name": "x", "type": "overlay-cni"},
              plugin=[str(plugin)])  # fmt: skip
    assert "vni" in run.error(INVALID_CONFIG)  # the plugin's own answer
    again = _install_cni("--dir", str(tmp_path), "--name", "ovl")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay-cni", "ovl", "trap"]
    plugin.write_text("#!/bin/false\n")  # an old or broken copy is replaced whole
    assert _install_cni("--dir", str(tmp_path)).returncode == 0
    assert plugin.read_text().startswith(f"#!{sys.executable} -IS\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay-cni", "ovl", "trap"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--dir", "/nonexistent/cni/bin"], "--dir /nonexistent/cni/bin: no such directory"),
        (["--name", "a/b"], "must be a plain file name"),
    ],
)
def test_install_cni_refuses_a_missing_directory_or_a_path_as_name(
    tmp_path: Path, args: list[str], says: str
) -> None:
    if "--dir" not in args:
        args = ["--dir", str(tmp_path), *args]
    done = _install_cni(*args)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


# -- environment errors: code 4 naming the variable ------------------------------


@pytest.mark.parametrize(
    "command,change,names",
    [
        ("", {"unset": ("CNI_COMMAND",)}, "CNI_COMMAND"),
        ("CREATE", {}, "CNI_COMMAND"),
        ("ADD", {"unset": ("CNI_CONTAINERID",)}, "CNI_CONTAINERID"),
        ("ADD", {"unset": ("CNI_NETNS",)}, "CNI_NETNS"),
        ("ADD", {"unset": ("CNI_IFNAME",)}, "CNI_IFNAME"),
        ("CHECK", {"netns": ""}, "CNI_NETNS"),
        ("DEL", {"cid": "-x"}, "CNI_CONTAINERID"),
        ("ADD", {"ifname": "a-very-long-ifname"}, "CNI_IFNAME"),
        ("ADD", {"cni_args": "K8S_POD_NAME"}, "CNI_ARGS"),
        ("ADD", {"cni_args": "K8S_POD_NAME=web;COLOUR=blue"}, "IgnoreUnknown=1"),
    ],
)
def test_environment_errors_are_code_4_naming_the_variable(
    sockdir: Path, command: str, change: dict[str, Any], names: str
) -> None:
    run = cni(command, config(sockdir / "none.sock"), **change)
    assert names in run.error(INVALID_ENV)


def test_delegated_ipam_without_cni_path_is_code_4(tmp_path: Path, sockdir: Path) -> None:
    conf = config(sockdir / "none.sock", ipam=host_local_ipam(tmp_path))
    msg = cni("ADD", conf, CNI_PATH="").error(INVALID_ENV)
    assert "CNI_PATH" in msg and "/usr/lib/cni" in msg


# -- configuration errors: codes 1, 2, 6, 7 naming the key and the fix -------------


@pytest.mark.parametrize(
    "command,conf,code,names",
    [
        ("ADD", "{not json", DECODE_FAILURE, "JSON"),
        ("ADD", "", DECODE_FAILURE, "JSON"),
        ("ADD", {"cniVersion": "9.9.9"}, INCOMPATIBLE_VERSION, "9.9.9"),
        ("STATUS", {"cniVersion": "1.0.0"}, INCOMPATIBLE_VERSION, "STATUS needs cniVersion 1.1.0"),
        ("GC", {"cniVersion": "0.4.0"}, INCOMPATIBLE_VERSION, "GC needs cniVersion 1.1.0"),
        ("CHECK", {"cniVersion": "0.3.1"}, INCOMPATIBLE_VERSION, "CHECK needs cniVersion 0.4.0"),
        ("ADD", {"ipMasq": "yes"}, INVALID_CONFIG, "ipMasq='yes'"),
        ("ADD", {"vni": None}, INVALID_CONFIG, "vni"),
        ("ADD", {"vni": "100"}, INVALID_CONFIG, "vni='100'"),
        ("ADD", {"vni": True}, INVALID_CONFIG, "vni=True"),
        ("ADD", {"vni": 1 << 24}, INVALID_CONFIG, "0-16777215"),
        ("ADD", {"vnid": 100}, INVALID_CONFIG, "'vnid'"),
        ("DEL", {"socket": "overlayd.sock"}, INVALID_CONFIG, "socket='overlayd.sock'"),
        ("ADD", {"mtu": 10}, INVALID_CONFIG, "mtu=10"),
        ("ADD", {"mtu": True}, INVALID_CONFIG, "mtu=True"),
        ("ADD", {"routes": {"dst": "0.0.0.0/0"}}, INVALID_CONFIG, "routes must be a list"),
        ("ADD", {"routes": [{"gw": "10.244.0.1"}]}, INVALID_CONFIG, "routes[0]"),
        ("ADD", {"routes": [{"dst": "10.96.0.0/33"}]}, INVALID_CONFIG, "routes[0].dst"),
        ("ADD", {"routes": [{"dst": "::/0", "gw": "10.244.0.1"}]}, INVALID_CONFIG, "family"),
        ("ADD", {"routes": [{"dst": "::/0", "via": "x"}]}, INVALID_CONFIG, "routes[0].via"),
        ("ADD", {"ipam": {"subnet": "10.244.0.0/16"}}, INVALID_CONFIG, "ipam.type"),
        ("ADD", {"ipam": {"type": "no-such-ipam"}}, INVALID_CONFIG, "CNI_PATH=/usr/lib/cni"),
        ("ADD", {"runtimeConfig": []}, INVALID_CONFIG, "runtimeConfig"),
        ("CHECK", {}, INVALID_CONFIG, "prevResult"),
        ("GC", {}, INVALID_CONFIG, "cni.dev/valid-attachments"),
        ("GC", {"cni.dev/valid-attachments": [{"ifname": "eth0"}]}, INVALID_CONFIG, "[0]"),
    ],
)
def test_configuration_errors_name_the_key_and_the_fix(
    sockdir: Path, command: str, conf: dict[str, Any] | str, code: int, names: str
) -> None:
    if isinstance(conf, dict):
        conf = {k: v for k, v in {**config(sockdir / "none.sock"), **conf}.items() if v is not None}
    run = cni(command, conf)
    assert names in run.error(code)
    # The error speaks the configuration's version when the plugin speaks it too.
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    assert run.out["cniVersion"] == (version if version in SUPPORTED_VERSIONS else "1.1.0")


def test_an_unknown_key_error_lists_the_keys_the_plugin_accepts(sockdir: Path) -> None:
    msg = cni("ADD", config(sockdir / "none.sock", vnid=100)).error(INVALID_CONFIG)
    assert all(key in msg for key in ("vni", "socket", "mtu", "routes"))
    assert "did you mean 'vni'?" in msg


@pytest.mark.parametrize(
    "command,change,env,code,fix",
    [
        ("ADD", {"cniVersion": "9.9.9"}, {}, INCOMPATIBLE_VERSION, "use one of 0.3.0"),
        ("GC", {"cniVersion": "1.0.0"}, {}, INCOMPATIBLE_VERSION, "raise cniVersion"),
        ("ADD", {"ipMasq": 1}, {}, INVALID_CONFIG, "true (overlayd must masquerade"),
        ("ADD", {}, {"unset": ("CNI_NETNS",)}, INVALID_ENV, "set it"),
        ("ADD", {}, {"cni_args": "COLOUR=blue"}, INVALID_ENV, "add IgnoreUnknown=1"),
        ("ADD", {"vni": 1 << 24}, {}, INVALID_CONFIG, "an integer 0-16777215"),
        ("ADD", {"ipam": {"type": "nope"}}, {}, INVALID_CONFIG, "install the plugin there"),
        ("CHECK", {}, {}, INVALID_CONFIG, "the runtime must pass it"),
    ],
)
def test_each_input_error_code_names_the_fix(
    sockdir: Path,
    command: str,
    change: dict[str, Any],
    env: dict[str, Any],
    code: int,
    fix: str,
) -> None:
    assert fix in cni(command, config(sockdir / "none.sock", **change), **env).error(code)


# -- CNI abuse: values outside the spec's rules (overlay.cni.validate) -------------


@pytest.mark.parametrize(
    "env,names",
    [
        ({"cid": "abc\n"}, "CNI_CONTAINERID"),
        ({"cid": "a" * 10_000}, "CNI_CONTAINERID"),
        ({"cid": "_abc"}, "CNI_CONTAINERID"),
        ({"ifname": ".."}, "CNI_IFNAME"),
        ({"ifname": "."}, "CNI_IFNAME"),
        ({"ifname": "eth0\n"}, "CNI_IFNAME"),
        ({"ifname": "eth:0"}, "CNI_IFNAME"),
        ({"ifname": "é" * 8}, "CNI_IFNAME"),  # 8 characters, 16 bytes
        ({"netns": "/proc/self/ns/net"}, "CNI_NETNS"),  # the plugin's own: the host's
        ({"netns": "/nonexistent/netns"}, "CNI_NETNS"),
        ({"netns": "var/run/netns/pod"}, "CNI_NETNS"),
        ({"netns": "/etc/hostname"}, "CNI_NETNS"),
        ({"netns": "/proc/self/ns/uts"}, "CNI_NETNS"),  # a namespace, not a network one
        ({"netns": "/dev/null"}, "CNI_NETNS"),
        ({"cni_args": "IgnoreUnknown=1;K8S_POD_NAME=" + "p" * 10_000}, "K8S_POD_NAME"),
        ({"cni_args": "K8S_POD_NAMESPACE=Shop"}, "CNI_ARGS K8S_POD_NAMESPACE='Shop'"),
    ],
)
def test_cni_variables_outside_the_spec_rules_are_code_4_naming_them(
    sockdir: Path, env: dict[str, str], names: str
) -> None:
    msg = cni("ADD", config(sockdir / "none.sock"), **env).error(INVALID_ENV)
    assert names in msg and len(msg) < 1000, msg  # named, and a long value not echoed


@pytest.mark.parametrize(
    "stdin,code,says",
    [
        ('{"cniVersion": "1.1.0", "args": ' + "[" * 5000 + "]" * 5000 + "}", DECODE_FAILURE,
         "nested at most 64 levels"),
        ({"name": "n" * 200_000}, INVALID_CONFIG, "name="),
        ({"name": "blue\n"}, INVALID_CONFIG, "name="),
        ({"args": {"cni": {"labels": [{"key": "k", "value": "v" * 2000}]}}}, INVALID_CONFIG,
         "args.cni.labels[0]"),
        # The pod's identity: cni() passes K8S_POD_NAMESPACE=default.
        ({"args": {"cni": {"namespace": "shop"}}}, INVALID_CONFIG,
         "args.cni.namespace='shop' and CNI_ARGS K8S_POD_NAMESPACE='default' name different"),
        ({"runtimeConfig": {"labels": {"app": "a"}},
          "args": {"cni": {"labels": [{"key": "app", "value": "b"}]}}}, INVALID_CONFIG,
         "runtimeConfig.labels gives label app='a' and args.cni.labels[0] gives app='b'"),
        ({"runtimeConfig": {"labels": {"app": ["a"]}}}, INVALID_CONFIG,
         "runtimeConfig.labels (key 'app') has ['a']: a string value"),
        ({"runtimeConfig": {"namedPorts": [{"name": "http", "port": 80}]},
          "args": {"cni": {"namedPorts": [{"name": "http", "port": 81}]}}}, INVALID_CONFIG,
         "runtimeConfig.namedPorts[0] gives named port http=80/TCP and "
         "args.cni.namedPorts[0] gives http=81/TCP"),
        ({"args": {"cni": {"namedPorts": [{"name": "Web", "port": 80}]}}}, INVALID_CONFIG,
         "args.cni.namedPorts[0].name='Web': a port name"),
    ],
)  # fmt: skip
def test_a_configuration_outside_the_rules_is_refused_with_its_code(
    sockdir: Path, pod_netns: str, stdin: dict[str, Any] | str, code: int, says: str
) -> None:
    conf = {**config(sockdir / "none.sock"), **stdin} if isinstance(stdin, dict) else stdin
    msg = cni("ADD", conf, netns=pod_netns).error(code)
    assert says in msg and len(msg) < 1000, msg


def test_the_plugin_and_the_api_apply_the_same_rules(pod_netns: str) -> None:
    from overlay.cni.spec import CniEnv, CniError
    from overlay.daemon.pods import AttachRequest
    from overlay.errors import ConfigError

    values = ["abc", "abc\n", "a.b-c_d", "-a", "a" * 255, "a" * 256, "", ".", "..",
              "eth0", "eth 0", "eth0:1", "a/b", "é" * 7, "é" * 8, "x" * 15, "x" * 16]  # fmt: skip
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": pod_netns,
           "CNI_IFNAME": "eth0"}  # fmt: skip
    body = {"container_id": "c1", "ifname": "eth0", "netns": pod_netns, "vni": 100}
    for variable, field in (("CNI_CONTAINERID", "container_id"), ("CNI_IFNAME", "ifname")):
        for value in values:
            try:
                CniEnv.from_environ({**env, variable: value})
                plugin_ok = True
            except CniError as exc:
                plugin_ok = False
                assert variable in exc.msg
            try:
                AttachRequest.parse({**body, field: value})
                api_ok = True
            except ConfigError as exc:
                api_ok = False
                assert exc.field == field
            assert plugin_ok == api_ok, (variable, value, plugin_ok, api_ok)


def test_the_attach_api_takes_the_pods_namespace_and_name(pod_netns: str) -> None:
    """``namespace`` and ``pod`` become the labels the policy layer reads, and name
    the endpoint when the request does not."""
    from overlay.daemon.pods import AttachRequest
    from overlay.model import NAMESPACE_LABEL, POD_LABEL

    body = {"container_id": "c1", "ifname": "eth0", "netns": pod_netns, "vni": 100}
    req = AttachRequest.parse({**body, "namespace": "shop", "pod": "web-0", "labels": {"a": "b"}})
    assert (req.namespace, req.pod, req.name) == ("shop", "web-0", "shop/web-0")
    assert req.labels == {"a": "b", NAMESPACE_LABEL: "shop", POD_LABEL: "web-0"}
    # A name given is kept; the same value as a label is no conflict.
    req = AttachRequest.parse(
        {**body, "namespace": "shop", "name": "mine", "labels": {NAMESPACE_LABEL: "shop"}}
    )
    assert req.name == "mine" and req.labels == {NAMESPACE_LABEL: "shop"}
    assert AttachRequest.parse({**body, "pod": "web"}).name == "web"
    assert AttachRequest.parse(body).labels == {}  # no pod: no namespace claimed


def test_the_attach_api_takes_named_ports(pod_netns: str) -> None:
    """``named_ports`` as JSON gives them (pairs as lists), normalised; none by default."""
    from overlay.daemon.pods import AttachRequest

    body = {"container_id": "c1", "ifname": "eth0", "netns": pod_netns, "vni": 100}
    req = AttachRequest.parse(
        {**body, "named_ports": {"serve-80-tcp": [80, "TCP"], "dns": [53, "udp"]}}
    )
    assert req.named_ports == {"serve-80-tcp": (80, "TCP"), "dns": (53, "UDP")}
    assert AttachRequest.parse(body).named_ports == {}


@pytest.mark.parametrize(
    "named_ports, field, says",
    [
        ([["http", 80, "TCP"]], "named_ports", 'a mapping like {"serve-80-tcp": [80, "TCP"]}'),
        ({"Http": [80, "TCP"]}, "named_ports['Http']", "a port name"),
        ({"x" * 200: [80, "TCP"]}, "named_ports['" + "x" * 40, "a port name"),
        ({"http": [80]}, "named_ports['http']", "a (number, protocol) pair"),
        ({"http": [0, "TCP"]}, "named_ports['http'][0]", "a port number 1-65535"),
        ({"http": [80, "ICMP"]}, "named_ports['http'][1]", "TCP, UDP or SCTP"),
        ({f"p{i}": [i + 1, "TCP"] for i in range(65)}, "named_ports", "at most 64"),
    ],
)  # fmt: skip
def test_the_attach_api_refuses_bad_named_ports_naming_them(
    pod_netns: str, named_ports: Any, field: str, says: str
) -> None:
    from overlay.daemon.pods import AttachRequest
    from overlay.errors import ConfigError

    body = {"container_id": "c1", "ifname": "eth0", "netns": pod_netns, "vni": 100}
    with pytest.raises(ConfigError) as err:
        AttachRequest.parse({**body, "named_ports": named_ports})
    assert err.value.field.startswith(field) and says in err.value.expected, err.value
    assert len(str(err.value)) < 600  # a long name is not echoed whole


@pytest.mark.parametrize(
    "change, field, says",
    [
        ({"namespace": "Shop"}, "namespace", "a namespace name: 1-63 lowercase"),
        ({"namespace": "n" * 64}, "namespace", "a namespace name"),
        ({"namespace": "a.b"}, "namespace", "a namespace name"),
        ({"namespace": 5}, "namespace", "the pod's Kubernetes namespace"),
        ({"pod": "web_0"}, "pod", "a pod name: 1-253"),
        ({"pod": "p" * 254}, "pod", "a pod name"),
        ({"pod": ["web"]}, "pod", "the pod's Kubernetes name"),
        ({"namespace": "shop", "labels": {"io.kubernetes.pod.namespace": "other"}}, "namespace",
         "the value of label io.kubernetes.pod.namespace in labels ('other')"),
        ({"pod": "web", "labels": {"io.kubernetes.pod.name": "db"}}, "pod",
         "the value of label io.kubernetes.pod.name in labels ('db')"),
        ({"pod": "web", "labels": {f"k{i}": "v" for i in range(64)}}, "labels",
         "at most 64 labels"),
        # The label alone is the policy namespace: held to the namespace rule.
        ({"labels": {"io.kubernetes.pod.namespace": "Shop"}}, "labels",
         "label io.kubernetes.pod.namespace: a namespace name"),
    ],
)  # fmt: skip
def test_the_attach_api_refuses_a_bad_or_contradicted_namespace_or_pod(
    pod_netns: str, change: dict[str, Any], field: str, says: str
) -> None:
    from overlay.daemon.pods import AttachRequest
    from overlay.errors import ConfigError

    body = {"container_id": "c1", "ifname": "eth0", "netns": pod_netns, "vni": 100}
    with pytest.raises(ConfigError) as err:
        AttachRequest.parse({**body, **change})
    assert err.value.field == field and says in err.value.expected, err.value


# -- no daemon -------------------------------------------------------------------


def test_status_without_a_daemon_is_50_naming_the_socket_and_the_fix(sockdir: Path) -> None:
    sock = sockdir / "none.sock"
    msg = cni("STATUS", config(sock), unset=NO_CONTAINER).error(PLUGIN_NOT_AVAILABLE)
    assert str(sock) in msg and "start overlayd" in msg and '"socket" key' in msg
    assert "--socket" not in msg  # the CLI's option means nothing to a CNI configuration


def test_a_stale_socket_is_a_daemon_that_is_not_running(sockdir: Path, pod_netns: str) -> None:
    import socket

    sock = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()  # the file stays, nobody listens
    run = cni("ADD", config(sock), netns=pod_netns)
    assert "refuses connections" in run.error(TRY_AGAIN_LATER)


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_container_verbs_without_a_daemon_are_try_again_later(
    sockdir: Path, pod_netns: str, command: str
) -> None:
    conf = config(sockdir / "none.sock")
    if command == "CHECK":
        conf["prevResult"] = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0"}]}
    msg = cni(command, conf, netns=pod_netns).error(TRY_AGAIN_LATER)
    assert msg.startswith(f"{command}: overlayd is not running") and "none.sock" in msg
    assert "--socket" not in msg and '"socket" key' in msg


def test_del_without_a_daemon_says_what_is_held_as_far_as_it_is_known(sockdir: Path) -> None:
    """After a failed ADD the runtime's cleanup DEL has no prevResult: nothing was
    attached, and the message must not say an attachment stays reserved. A DEL
    with the result of a successful ADD says what overlayd keeps, and until when;
    neither promises that the runtime will send DEL again."""
    conf = config(sockdir / "none.sock")
    after_failed_add = cni("DEL", conf, cid="ctr1").error(TRY_AGAIN_LATER)
    assert "nothing was attached and nothing is held" in after_failed_add
    assert "stay reserved" not in after_failed_add
    prev = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": MAC, "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.244.1.2/16", "interface": 0}],
    }
    after_add = cni("DEL", {**conf, "prevResult": prev}, cid="ctr1").error(TRY_AGAIN_LATER)
    assert "keeps attachment ctr1/eth0 and its address 10.244.1.2/16" in after_add
    assert "namespace gone" in after_add
    for msg in (after_failed_add, after_add):
        assert "retr" not in msg and "the runtime sends" not in msg


def test_gc_without_a_daemon_is_try_again_later(sockdir: Path) -> None:
    conf = config(sockdir / "none.sock", **{"cni.dev/valid-attachments": []})
    assert "GC" in cni("GC", conf, unset=("CNI_CONTAINERID",)).error(TRY_AGAIN_LATER)


@needs_host_local
def test_a_failed_add_releases_the_delegated_address(
    tmp_path: Path, sockdir: Path, pod_netns: str
) -> None:
    conf = config(sockdir / "none.sock", ipam=host_local_ipam(tmp_path))
    msg = cni("ADD", conf, netns=pod_netns).error(TRY_AGAIN_LATER)
    assert "overlayd is not running" in msg
    assert (tmp_path / "ipam" / "blue").is_dir()  # host-local did allocate...
    assert leases(tmp_path) == []  # ...and the address was given back


@needs_host_local
def test_del_without_a_daemon_keeps_the_lease_until_the_daemon_has_detached(
    tmp_path: Path, sockdir: Path
) -> None:
    host_local(tmp_path, "ADD", "ctr1")
    conf = config(sockdir / "none.sock", ipam=host_local_ipam(tmp_path))
    msg = cni("DEL", conf, cid="ctr1").error(TRY_AGAIN_LATER)
    assert "ctr1/eth0" in msg and "DEL" in msg
    assert leases(tmp_path) == ["10.244.7.5"]
    host_local(tmp_path, "DEL", "ctr1")


# -- a running overlayd ------------------------------------------------------------


@dataclasses.dataclass
class CniDaemon:
    """What the ``cni_daemon`` fixture gives: a running one-node overlayd hosting one
    network, and pod namespaces on request (removed after the test)."""

    daemon: Overlayd
    topology: Topology
    vni: int = 100
    cidr: str = "10.244.0.0/16"

    @property
    def socket(self) -> str:
        return self.daemon.socket

    @property
    def client(self) -> Client:
        return self.daemon.client

    def pod(self, name: str) -> Netns:
        return self.topology.add_netns(name)

    def pod_netns(self, name: str) -> str:
        """A new network namespace for a pod; its path."""
        return self.pod(name).path

    def conf(self, version: str = "1.1.0", /, **keys: Any) -> dict[str, Any]:
        """The plugin's configuration for this daemon and network."""
        return config(self.socket, version, **{"vni": self.vni, **keys})


BLUE = {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"}


@pytest.fixture
def cni_daemon(
    overlay_topology: Topology, overlay_daemons: Callable[..., DaemonCluster]
) -> CniDaemon:
    """A real overlayd on one namespaced node, hosting vni 100 (10.244.0.0/16), started
    and ready; stopped by PID after the test (skips where namespaces cannot be made)."""
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE])
    cluster.start()
    return CniDaemon(cluster.daemons[0], overlay_topology)


def _in_cidr(address: str, cidr: str) -> bool:
    return ipaddress.ip_interface(address).ip in ipaddress.ip_network(cidr)


def _closed_port() -> int:
    """A loopback TCP port nobody listens on (an etcd that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_api(daemon: Overlayd, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the daemon's API answers (ready or not); its status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return daemon.client.status()
        except DaemonUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ADD


@pytest.mark.root
def test_add_attaches_the_pod_as_asked_and_prints_the_result(cni_daemon: CniDaemon) -> None:
    pod = cni_daemon.pod("web")
    conf = cni_daemon.conf(mtu=1400, routes=[{"dst": "10.245.0.0/16"}])
    args = "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop;K8S_POD_UID=u-1"
    out = cni("ADD", conf, cid="ctr1", netns=pod.path, cni_args=args).success()
    rec = cni_daemon.client.attachment("ctr1", "eth0")
    assert rec["name"] == "shop/web"
    assert rec["labels"] == {
        "io.kubernetes.pod.name": "web",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": "u-1",
    }
    assert rec["ipam"] == "node"  # no addresses sent: overlayd allocated
    assert rec["mtu"] == 1400 and rec["routes"] == [{"dst": "10.245.0.0/16"}]
    [address] = rec["ips"]
    assert _in_cidr(address, cni_daemon.cidr)
    [net] = cni_daemon.client.networks()
    gateway = net["gateway"]["address"].split("/")[0]
    assert rec["gateway"] == gateway
    assert out == {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": rec["mac"], "mtu": 1400, "sandbox": pod.path}],
        "ips": [{"address": address, "interface": 0, "gateway": gateway}],
        "routes": [{"dst": "10.245.0.0/16"}],
    }
    # ...and that is what the pod has: its default route is its node's gateway.
    eth0 = pod.link_info("eth0")
    assert eth0.mac == rec["mac"] and eth0.mtu == 1400 and address in eth0.addresses
    routes = pod.run(["ip", "-4", "route"]).stdout
    assert "10.245.0.0/16 dev eth0" in routes and f"default via {gateway} dev eth0" in routes


@pytest.mark.root
def test_the_pods_identity_reaches_the_endpoint_overlayd_lists(cni_daemon: CniDaemon) -> None:
    """What the policy layer reads: the endpoint ``GET /v1/endpoints`` lists carries
    the namespace of CNI_ARGS and the labels of runtimeConfig and args.cni merged;
    args.cni can name the pod itself; overlayd refuses a request that names two."""
    from overlay.daemon.client import ApiError
    from overlay.model import NAMESPACE_LABEL, POD_LABEL

    conf = cni_daemon.conf(
        capabilities={"labels": True, "namedPorts": True},
        runtimeConfig={
            "labels": {"app": "web"},
            "namedPorts": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
        args={
            "cni": {
                "labels": [{"key": "tier", "value": "front"}],
                "namedPorts": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            }
        },
    )
    args = "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop"
    out = cni("ADD", conf, cid="c1", netns=cni_daemon.pod_netns("web"), cni_args=args).success()
    [ep] = [e for e in cni_daemon.client.endpoints() if e["mac"] == out["interfaces"][0]["mac"]]
    assert ep["name"] == "shop/web" and ep["local"] and ep["container_id"] == "c1"
    assert ep["labels"] == {NAMESPACE_LABEL: "shop", POD_LABEL: "web", "app": "web",
                            "tier": "front"}  # fmt: skip
    assert ep["ports"] == {"http": [8080, "TCP"], "dns": [53, "UDP"]}
    assert cni_daemon.client.attachment("c1", "eth0")["named_ports"] == ep["ports"]
    conf = cni_daemon.conf(args={"cni": {"namespace": "shop", "podName": "db"}})
    out = cni("ADD", conf, cid="c2", netns=cni_daemon.pod_netns("db"), cni_args="").success()
    [ep] = [e for e in cni_daemon.client.endpoints() if e["mac"] == out["interfaces"][0]["mac"]]
    assert ep["name"] == "shop/db" and ep["labels"] == {NAMESPACE_LABEL: "shop", POD_LABEL: "db"}
    assert ep["ports"] == {}  # none given: the record carries none
    body = {
        "container_id": "c3",
        "ifname": "eth0",
        "netns": cni_daemon.pod_netns("x"),
        "vni": cni_daemon.vni,
        "namespace": "shop",
        "labels": {NAMESPACE_LABEL: "other"},
    }
    with pytest.raises(ApiError) as err:
        cni_daemon.client.attach(body)
    assert err.value.status == 400 and err.value.field == "namespace"
    assert {a["container_id"] for a in cni_daemon.client.attachments()} == {"c1", "c2"}


# ADD: what the runtime asks for (podman's --ip and --mac-address, the capabilities)


def _subnet(cni_daemon: CniDaemon) -> ipaddress.IPv4Network:
    """The node's subnet lease of vni 100 (leased by the first ADD)."""
    [net] = [n for n in cni_daemon.client.networks() if n["vni"] == cni_daemon.vni]
    return ipaddress.IPv4Network(net["subnet"])


@pytest.mark.root
def test_add_gives_the_address_and_the_mac_asked_for_in_cni_args(cni_daemon: CniDaemon) -> None:
    """podman passes --ip and --mac-address as CNI_ARGS IP= and MAC= (with
    IgnoreUnknown=1); without them the MAC is the one the address derives."""
    first = cni_daemon.pod("first")
    out = cni("ADD", cni_daemon.conf(), cid="c0", netns=first.path).success()
    [ip] = out["ips"]
    assert out["interfaces"][0]["mac"] == mac_of(ip["address"]) == first.link_info("eth0").mac
    want = _subnet(cni_daemon).network_address + 9
    pod = cni_daemon.pod("asked")
    args = f"IgnoreUnknown=1;K8S_POD_NAME=asked;MAC=02:00:00:00:aa:01;IP={want}"
    out = cni("ADD", cni_daemon.conf("1.0.0"), cid="c1", netns=pod.path, cni_args=args).success()
    gw = str(_subnet(cni_daemon).network_address + 1)  # the node's gateway
    assert out["ips"] == [{"address": f"{want}/16", "interface": 0, "gateway": gw}]
    assert out["interfaces"][0]["mac"] == "02:00:00:00:aa:01"
    eth0 = pod.link_info("eth0")
    assert eth0.mac == "02:00:00:00:aa:01" and f"{want}/16" in eth0.addresses
    rec = cni_daemon.client.attachment("c1", "eth0")
    assert rec["ipam"] == "node"  # reserved in the node's lease: never handed out again
    later = cni("ADD", cni_daemon.conf(), cid="c2", netns=cni_daemon.pod_netns("later")).success()
    assert later["ips"][0]["address"] != f"{want}/16"
    # The same address again, or the same MAC, is a conflict naming what was asked.
    again = cni_daemon.pod_netns("again")
    msg = cni("ADD", cni_daemon.conf(), cid="c3", netns=again, cni_args=f"IP={want}").error(
        ATTACHMENT_CONFLICT
    )
    assert f"{want} is taken" in msg and f"CNI_ARGS IP={want}" in msg
    args = "MAC=02:00:00:00:aa:01"
    msg = cni("ADD", cni_daemon.conf(), cid="c3", netns=again, cni_args=args).error(
        ATTACHMENT_CONFLICT
    )
    assert "02:00:00:00:aa:01 is in use" in msg and "CNI_ARGS MAC=02:00:00:00:aa:01" in msg
    assert cni("DEL", cni_daemon.conf(), cid="c1").success() is None  # gives the address back
    out = cni("ADD", cni_daemon.conf(), cid="c4", netns=cni_daemon.pod_netns("reuse"),
              cni_args=f"IgnoreUnknown=1;IP={want}").success()  # fmt: skip
    assert out["interfaces"][0]["mac"] == mac_of(str(want))


@pytest.mark.root
def test_add_refuses_an_address_outside_the_nodes_range_naming_where_it_was_asked(
    cni_daemon: CniDaemon,
) -> None:
    cni("ADD", cni_daemon.conf(), cid="c0", netns=cni_daemon.pod_netns("first")).success()
    subnet = _subnet(cni_daemon)
    outside = ipaddress.ip_network(cni_daemon.cidr).network_address + 0xFF00 + 9
    assert outside not in subnet
    pod = cni_daemon.pod_netns("p")
    msg = cni("ADD", cni_daemon.conf(), cid="c1", netns=pod,
              cni_args=f"IgnoreUnknown=1;IP={outside}").error(INVALID_ENV)  # fmt: skip
    assert msg.startswith(f"ADD: CNI_ARGS IP={outside} refused by overlayd") and str(subnet) in msg
    conf = cni_daemon.conf(runtimeConfig={"ips": [f"{outside}/16"]})
    msg = cni("ADD", conf, cid="c1", netns=pod).error(INVALID_CONFIG)
    assert f"runtimeConfig.ips={outside}/16 refused" in msg and str(subnet) in msg
    gateway = subnet.network_address + 1  # kept for the node's gateway
    msg = cni("ADD", cni_daemon.conf(), cid="c1", netns=pod,
              cni_args=f"IgnoreUnknown=1;IP={gateway}").error(INVALID_ENV)  # fmt: skip
    assert f"CNI_ARGS IP={gateway}" in msg
    # Nothing was attached or reserved by the refusals.
    assert {a["container_id"] for a in cni_daemon.client.attachments()} == {"c0"}


@pytest.mark.root
def test_the_capabilities_ips_and_mac_are_honoured_and_mac_wins_over_cni_args(
    cni_daemon: CniDaemon,
) -> None:
    cni("ADD", cni_daemon.conf(), cid="c0", netns=cni_daemon.pod_netns("first")).success()
    want = _subnet(cni_daemon).network_address + 20
    conf = cni_daemon.conf(
        capabilities={"ips": True, "mac": True},
        runtimeConfig={"ips": [f"{want}/16"], "mac": "02:00:00:00:bb:01"},
    )
    args = "IgnoreUnknown=1;MAC=02:00:00:00:bb:02"
    out = cni("ADD", conf, cid="c1", netns=cni_daemon.pod_netns("p"), cni_args=args).success()
    assert out["ips"][0]["address"] == f"{want}/16"
    assert out["interfaces"][0]["mac"] == "02:00:00:00:bb:01"


def test_bad_asked_addresses_and_macs_name_their_variable_or_field(
    sockdir: Path, pod_netns: str
) -> None:
    """Checked before the daemon is asked (there is none here): code 4 for CNI_ARGS,
    7 for the configuration, each naming where it was asked and what is accepted."""
    conf = config(sockdir / "none.sock")
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("IgnoreUnknown=1;IP=10.244.1.300", conf, INVALID_ENV, "CNI_ARGS IP has '10.244.1.300'"),
        ("IgnoreUnknown=1;IP=10.244.1.2,10.244.1.3", conf, INVALID_ENV,
         "CNI_ARGS IP=10.244.1.2,10.244.1.3: overlayd gives a pod one address"),
        ("IgnoreUnknown=1;MAC=02:00:00:00:00", conf, INVALID_ENV, "CNI_ARGS MAC='02:00:00:00:00'"),
        ("IgnoreUnknown=1;MAC=01:00:00:00:00:01", conf, INVALID_ENV, "a unicast MAC"),
        ("", {**conf, "runtimeConfig": {"ips": "10.244.1.2"}}, INVALID_CONFIG,
         "runtimeConfig.ips='10.244.1.2': a list of addresses"),
        ("", {**conf, "runtimeConfig": {"mac": 5}}, INVALID_CONFIG, "runtimeConfig.mac=5"),
        ("", {**conf, "args": {"cni": {"ips": ["x"]}}}, INVALID_CONFIG, "args.cni.ips has 'x'"),
    ]  # fmt: skip
    for cni_args, c, code, text in cases:
        msg = cni("ADD", c, netns=pod_netns, cni_args=cni_args).error(code)
        assert text in msg, (cni_args, c, msg)


def test_ip_and_mac_in_cni_args_need_no_ignore_unknown(sockdir: Path, pod_netns: str) -> None:
    """IP and MAC are the plugin's own CNI_ARGS keys now; anything else still needs
    IgnoreUnknown=1."""
    conf = config(sockdir / "none.sock")
    run = cni("ADD", conf, netns=pod_netns, cni_args="IP=10.244.1.9;MAC=02:00:00:00:00:09")
    run.error(TRY_AGAIN_LATER)  # got as far as the (missing) daemon
    msg = cni("ADD", conf, netns=pod_netns, cni_args="IP=10.244.1.9;FOO=1").error(INVALID_ENV)
    assert "FOO" in msg


@needs_host_local
@pytest.mark.root
def test_with_host_local_the_asked_address_is_host_locals_and_is_checked(
    tmp_path: Path, cni_daemon: CniDaemon
) -> None:
    """host-local reads CNI_ARGS IP itself; the plugin checks it did, and passes the
    MAC asked for to overlayd."""
    conf = cni_daemon.conf("1.0.0", ipam=host_local_ipam(tmp_path, last=9))
    args = "IgnoreUnknown=1;IP=10.244.7.8;MAC=02:00:00:00:cc:01"
    out = cni("ADD", conf, cid="c1", netns=cni_daemon.pod_netns("p"), cni_args=args).success()
    assert out["ips"][0]["address"] == "10.244.7.8/24"
    assert out["interfaces"][0]["mac"] == "02:00:00:00:cc:01"
    assert leases(tmp_path) == ["10.244.7.8"]
    assert cni_daemon.client.attachment("c1", "eth0")["ipam"] == "delegated"


@pytest.mark.root
def test_add_prints_the_result_in_the_configurations_version(cni_daemon: CniDaemon) -> None:
    """Each version's own format (a runtime parses only the one it asked for):
    "version" on IPs before 1.0.0, the interface's MTU only from 1.1.0 on."""
    for i, version in enumerate(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]):
        pod = cni_daemon.pod(f"v{i}")
        out = cni("ADD", cni_daemon.conf(version), cid=f"v{i}", netns=pod.path).success()
        rec = cni_daemon.client.attachment(f"v{i}", "eth0")
        assert out["cniVersion"] == version
        interface = {"name": "eth0", "mac": rec["mac"], "sandbox": pod.path}
        if version == "1.1.0":
            interface["mtu"] = rec["mtu"]
        assert out["interfaces"] == [interface], version
        [ip] = out["ips"]
        assert ip["address"] == rec["ips"][0] and ip["interface"] == 0
        assert ("version" in ip) == (version < "1.0.0"), (version, ip)
        if "version" in ip:
            assert ip["version"] == "4"


@pytest.mark.root
def test_add_without_a_pod_names_the_endpoint_by_container_and_reads_args_labels(
    cni_daemon: CniDaemon,
) -> None:
    labels = [{"key": "app", "value": "shop"}, {"key": 3}]  # the malformed one is ignored
    conf = cni_daemon.conf(args={"cni": {"labels": labels}})
    cni("ADD", conf, cid="lab1", netns=cni_daemon.pod_netns("lab"), cni_args="").success()
    rec = cni_daemon.client.attachment("lab1", "eth0")
    assert rec["name"] == "lab1" and rec["labels"] == {"app": "shop"}
    [endpoint] = [e for e in cni_daemon.client.endpoints() if e["local"]]
    assert endpoint["name"] == "lab1" and endpoint["labels"] == {"app": "shop"}


@pytest.mark.root
def test_add_in_a_chain_keeps_the_previous_result(cni_daemon: CniDaemon) -> None:
    pod = cni_daemon.pod("chain")
    prev = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "lo", "sandbox": pod.path}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
    }
    out = cni("ADD", cni_daemon.conf(prevResult=prev), cid="ch1", netns=pod.path).success()
    address = cni_daemon.client.attachment("ch1", "eth0")["ips"][0]
    assert [i["name"] for i in out["interfaces"]] == ["lo", "eth0"]
    assert [(ip["address"], ip["interface"]) for ip in out["ips"]] == [
        ("127.0.0.1/8", 0),
        (address, 1),
    ]


@needs_host_local
@pytest.mark.root
def test_add_with_host_local_gives_overlayd_its_addresses(
    cni_daemon: CniDaemon, tmp_path: Path
) -> None:
    pod = cni_daemon.pod("hl")
    ipam = {**host_local_ipam(tmp_path), "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.7.1"}]}
    conf = cni_daemon.conf(ipam=ipam, routes=[{"dst": "10.245.0.0/16"}])
    out = cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    rec = cni_daemon.client.attachment("ctr1", "eth0")
    assert rec["ips"] == ["10.244.7.5/24"] and rec["ipam"] == "delegated"
    assert rec["gateway"] == "10.244.7.1"
    # The IPAM plugin's routes first, then the configuration's.
    assert rec["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.7.1"}, {"dst": "10.245.0.0/16"}]
    assert out["ips"] == [{"address": "10.244.7.5/24", "gateway": "10.244.7.1", "interface": 0}]
    assert out["routes"] == rec["routes"]
    assert leases(tmp_path) == ["10.244.7.5"]
    assert "10.244.7.5/24" in pod.link_info("eth0").addresses
    assert "default via 10.244.7.1 dev eth0" in pod.run(["ip", "-4", "route"]).stdout


@needs_host_local
@pytest.mark.root
def test_a_refused_add_names_the_fix_and_releases_the_delegated_address(
    cni_daemon: CniDaemon, tmp_path: Path
) -> None:
    taken, empty = cni_daemon.pod("taken"), cni_daemon.pod("empty")
    first = cni("ADD", cni_daemon.conf(), cid="ctr1", netns=taken.path).success()
    conf = cni_daemon.conf(ipam=host_local_ipam(tmp_path))
    refusals = [
        # (container, netns, configuration change, code, what the message says)
        ("ctr1", empty.path, {}, ATTACHMENT_CONFLICT, "ctr1/eth0 exists already; DEL it first"),
        ("ctr2", taken.path, {}, ATTACHMENT_CONFLICT, "choose another ifname"),
        ("ctr3", empty.path, {"vni": 101}, INVALID_CONFIG, "a network this node hosts: [100]"),
    ]
    for cid, netns, change, code, fix in refusals:
        msg = cni("ADD", {**conf, **change}, cid=cid, netns=netns).error(code)
        assert fix in msg and msg.startswith("ADD: overlayd answered"), (cid, msg)
        assert (tmp_path / "ipam" / "blue").is_dir()  # host-local did allocate...
        assert leases(tmp_path) == [], cid  # ...and the address was given back
    # A namespace that is not there is the runtime's CNI_NETNS at fault (code 4),
    # found before an address is taken.
    msg = cni("ADD", conf, cid="ctr4", netns=f"{empty.path}-gone").error(INVALID_ENV)
    assert "CNI_NETNS" in msg and "nothing is there" in msg and leases(tmp_path) == []
    # Nothing changed in overlayd or in the pods.
    assert [a["container_id"] for a in cni_daemon.client.attachments()] == ["ctr1"]
    assert taken.link_info("eth0").mac == first["interfaces"][0]["mac"]
    assert empty.links() == ["lo"]


@pytest.mark.root
def test_a_full_subnet_is_code_101_naming_the_fix(
    overlay_topology: Topology, overlay_daemons: Callable[..., DaemonCluster]
) -> None:
    # A /30 node subnet has one pod address (not the network, gateway or broadcast).
    cluster = overlay_daemons(n_nodes=1, networks=[{**BLUE, "subnet_prefix": 30}])
    cluster.start()
    conf = config(cluster.daemons[0].socket)
    one, two = overlay_topology.add_netns("one"), overlay_topology.add_netns("two")
    cni("ADD", conf, cid="one", netns=one.path).success()
    msg = cni("ADD", conf, cid="two", netns=two.path).error(NO_CAPACITY)
    assert "no free address left" in msg and "shorter subnet_prefix" in msg
    assert two.links() == ["lo"]
    cni("DEL", conf, cid="one", netns=one.path).success()
    cni("ADD", conf, cid="two", netns=two.path).success()  # the address is free again


@pytest.mark.root
def test_while_overlayd_waits_for_its_store_container_verbs_are_11_and_status_50(
    overlay_topology: Topology, overlay_daemons: Callable[..., DaemonCluster]
) -> None:
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE])
    cluster.start()
    daemon = cluster.daemons[0]
    conf = config(daemon.socket)
    pod, other = overlay_topology.add_netns("pod"), overlay_topology.add_netns("other")
    added = cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    # Restart it with its store down: its API answers, but it has not yet
    # re-attached ctr1, so it must not claim to know that ctr1 is gone.
    assert daemon.stop() == 0
    waiting = cluster.config(0)
    waiting["store"] = {"kind": "etcd", "endpoints": [f"http://127.0.0.1:{_closed_port()}"]}
    daemon.write_config(waiting)
    daemon.start(wait=False)
    assert _wait_api(daemon)["ready"] is False
    msg = cni("ADD", conf, cid="ctr2", netns=other.path).error(TRY_AGAIN_LATER)
    assert "overlayd is starting" in msg and "try again" in msg
    assert other.links() == ["lo"]
    msg = cni("STATUS", conf, unset=NO_CONTAINER).error(PLUGIN_NOT_AVAILABLE)
    assert "running but not ready" in msg and "wait for it" in msg
    assert "try again" in cni("DEL", conf, cid="ctr1", netns=pod.path).error(TRY_AGAIN_LATER)
    check = {**conf, "prevResult": added}
    assert "try again" in cni("CHECK", check, cid="ctr1", netns=pod.path).error(TRY_AGAIN_LATER)
    gc = {**conf, "cni.dev/valid-attachments": []}
    assert "try again" in cni("GC", gc, unset=NO_CONTAINER).error(TRY_AGAIN_LATER)
    # With its store back it re-attaches ctr1, which the failed DEL left alone.
    assert daemon.stop() == 0
    daemon.write_config(cluster.config(0))
    daemon.start()
    assert cni("CHECK", check, cid="ctr1", netns=pod.path).success() is None
    cni("DEL", conf, cid="ctr1", netns=pod.path).success()
    assert pod.links() == ["lo"]


# DEL


@pytest.mark.root
def test_del_detaches_and_an_unknown_attachment_is_success(cni_daemon: CniDaemon) -> None:
    pod = cni_daemon.pod("del")
    conf = cni_daemon.conf()
    assert cni("DEL", conf, cid="ctr1", netns=pod.path).success() is None  # nothing to do
    cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    run = cni("DEL", conf, cid="ctr1", unset=("CNI_NETNS",))  # the spec lets it be unset
    assert run.success() is None and run.stdout == ""
    assert pod.links() == ["lo"] and cni_daemon.client.attachments() == []


@needs_host_local
@pytest.mark.root
def test_del_releases_the_delegated_address_after_the_detach(
    cni_daemon: CniDaemon, tmp_path: Path
) -> None:
    pod = cni_daemon.pod("deld")
    conf = cni_daemon.conf(ipam=host_local_ipam(tmp_path))
    cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    assert leases(tmp_path) == ["10.244.7.5"]
    cni("DEL", conf, cid="ctr1", netns=pod.path).success()
    assert leases(tmp_path) == [] and pod.links() == ["lo"]
    assert cni_daemon.client.attachments() == []


# CHECK


def _modified(result: dict[str, Any], what: str) -> dict[str, Any]:
    """``result`` (an ADD's) with one thing changed."""
    prev = json.loads(json.dumps(result))
    if what == "interface":
        prev["interfaces"] = [{"name": "net1"}]
    elif what == "mac":
        prev["interfaces"][0]["mac"] = "02:00:00:00:00:99"
    elif what == "address":
        prev["ips"] = [{"address": "10.244.1.3/24", "interface": 0}]
    elif what == "route":
        prev["routes"] = []
    return prev


@pytest.mark.root
def test_check_of_an_unknown_attachment_is_code_3(cni_daemon: CniDaemon) -> None:
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0"}]}
    netns = cni_daemon.pod_netns("unk")
    msg = cni("CHECK", cni_daemon.conf(prevResult=prev), netns=netns).error(UNKNOWN_CONTAINER)
    assert "ctr1/eth0" in msg and "ADD it again" in msg


@pytest.mark.root
@pytest.mark.parametrize(
    "what,names",
    [
        ("interface", "prevResult has no interface eth0"),
        ("mac", "prevResult says 02:00:00:00:00:99"),
        ("address", "prevResult says 10.244.1.3/24"),
        ("route", "route 10.245.0.0/16 is not in prevResult"),
    ],
)
def test_check_names_what_differs_from_prev_result(
    cni_daemon: CniDaemon, what: str, names: str
) -> None:
    pod = cni_daemon.pod("chk")
    conf = cni_daemon.conf(routes=[{"dst": "10.245.0.0/16"}])
    added = cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    assert cni("CHECK", {**conf, "prevResult": added}, netns=pod.path).success() is None
    prev = _modified(added, what)
    msg = cni("CHECK", {**conf, "prevResult": prev}, netns=pod.path).error(CHECK_MISMATCH)
    assert names in msg and "DEL and ADD" in msg


@pytest.mark.root
def test_check_of_an_attachment_overlayd_could_not_reattach_fails(
    overlay_topology: Topology, overlay_daemons: Callable[..., DaemonCluster]
) -> None:
    green = {"vni": 200, "tenant": "green", "cidr": "10.245.0.0/16"}
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE, green])
    cluster.start()
    daemon = cluster.daemons[0]
    pod = overlay_topology.add_netns("orphan")
    conf = config(daemon.socket, vni=200)
    added = cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    # Restarted without network 200, overlayd keeps the attachment (for DEL) but
    # cannot attach it: the pod has its interface and no data path.
    assert daemon.stop() == 0
    without_green = cluster.config(0)
    without_green["networks"] = [BLUE]
    daemon.write_config(without_green)
    daemon.start()
    msg = cni("CHECK", {**conf, "prevResult": added}, netns=pod.path).error(CHECK_MISMATCH)
    assert "not attached (no data path)" in msg and "DEL and ADD" in msg
    cni("DEL", conf, cid="ctr1", netns=pod.path).success()
    assert pod.links() == ["lo"] and daemon.client.attachments() == []


@pytest.mark.root
def test_check_of_a_netns_that_is_gone_names_it(cni_daemon: CniDaemon) -> None:
    pod = cni_daemon.pod("gone")
    conf = cni_daemon.conf()
    added = cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    subprocess.run(["ip", "netns", "delete", pod.name], check=True)
    msg = cni("CHECK", {**conf, "prevResult": added}, netns=pod.path).error(CHECK_MISMATCH)
    assert f"network namespace {pod.path} does not exist" in msg
    # The runtime's DEL after it removed the namespace still cleans overlayd up.
    cni("DEL", conf, cid="ctr1", netns=pod.path).success()
    assert cni_daemon.client.attachments() == []


@pytest.mark.root
def test_check_looks_at_the_pods_interface_through_netlink(cni_daemon: CniDaemon) -> None:
    pod = cni_daemon.pod("nl")
    conf = cni_daemon.conf(routes=[{"dst": "10.245.0.0/16"}])
    added = cni("ADD", conf, cid="ctr1", netns=pod.path).success()
    check = {**conf, "prevResult": added}
    assert cni("CHECK", check, netns=pod.path).success() is None
    pod.link_set("eth0", mtu=1400)
    pod.run(["ip", "route", "del", "10.245.0.0/16", "dev", "eth0"])
    pod.link_set("eth0", state="down")
    msg = cni("CHECK", check, netns=pod.path).error(CHECK_MISMATCH)
    assert "eth0 has MTU 1400, overlayd has 1450" in msg and "eth0 is down" in msg
    assert "route 10.245.0.0/16 dev eth0 is missing" in msg and "DEL and ADD" in msg
    pod.link_del("eth0")
    assert "no interface eth0" in cni("CHECK", check, netns=pod.path).error(CHECK_MISMATCH)
    cni("DEL", conf, cid="ctr1", netns=pod.path).success()


# GC


@needs_host_local
@pytest.mark.root
def test_gc_removes_the_unlisted_and_releases_their_delegated_addresses(
    cni_daemon: CniDaemon, tmp_path: Path
) -> None:
    conf = cni_daemon.conf(ipam=host_local_ipam(tmp_path, last=7))
    pods = {cid: cni_daemon.pod(cid) for cid in ("keep1", "keep2", "gone1")}
    for cid, ifname in (("keep1", "eth0"), ("keep2", "net1"), ("gone1", "eth0")):
        cni("ADD", conf, cid=cid, netns=pods[cid].path, ifname=ifname).success()
    assert leases(tmp_path) == ["10.244.7.5", "10.244.7.6", "10.244.7.7"]
    valid = [{"containerID": "keep1", "ifname": "eth0"}, {"containerID": "keep2", "ifname": "net1"}]
    # Runtimes send the list under both names.
    gc = {**conf, "cni.dev/valid-attachments": valid, "cni.dev/attachments": valid}
    run = cni("GC", gc, unset=NO_CONTAINER)
    assert run.success() is None and run.stdout == ""
    kept = {(a["container_id"], a["ifname"]) for a in cni_daemon.client.attachments()}
    assert kept == {("keep1", "eth0"), ("keep2", "net1")}
    assert pods["gone1"].links() == ["lo"] and "net1" in pods["keep2"].links()
    assert leases(tmp_path) == ["10.244.7.5", "10.244.7.6"]  # gone1's was released


# -- overlayd's API, scripted ----------------------------------------------------
#
# Only for answers a real overlayd cannot be made to give; everything else is
# tested against the real daemon above.


class ApiStub:
    """overlayd's local API answering from a script, on a real Unix socket.

    ``answer(method, path, status, body)`` sets the answer to a request (a path
    ending in ``*`` matches by prefix); unscripted requests get 404 not_found.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body = stub.lookup(self.command, self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        # A short poll interval: shutdown() waits for one.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def answer(self, method: str, path: str, status: int, body: Any) -> None:
        self.answers[(method, path)] = (status, body)

    def error(self, method: str, path: str, status: int, kind: str, message: str) -> None:
        self.answer(method, path, status, {"error": {"kind": kind, "message": message}})

    def lookup(self, method: str, path: str) -> tuple[int, Any]:
        if (method, path) in self.answers:
            return self.answers[(method, path)]
        for (m, p), answer in self.answers.items():
            if m == method and p.endswith("*") and path.startswith(p[:-1]):
                return answer
        return 404, {"error": {"kind": "not_found", "message": f"no {method} {path}"}}


@pytest.fixture
def api(sockdir: Path) -> Iterator[ApiStub]:
    stub = ApiStub(sockdir / "api.sock")
    stub.thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()


def record(**change: Any) -> dict[str, Any]:
    """An attachment record as overlayd returns it."""
    return {
        "container_id": "ctr1",
        "ifname": "eth0",
        "netns": "/var/run/netns/ctr1",
        "vni": 100,
        "tenant": "blue",
        "mac": MAC,
        "ips": ["10.244.1.2/24"],
        "gateway": "10.244.1.1",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "mtu": 1450,
        "ipam": "node",
        **change,
    }


@pytest.mark.parametrize(
    "status,kind,code",
    [
        (404, "not_found", INVALID_CONFIG),  # overlayd says 400 for a network it lacks
        (500, "internal", DAEMON_INTERNAL),
        (418, "teapot", DAEMON_INTERNAL),  # a kind from a newer overlayd
    ],
)
def test_add_maps_the_error_kinds_a_healthy_daemon_does_not_give(
    api: ApiStub, pod_netns: str, status: int, kind: str, code: int
) -> None:
    message = f"the daemon says {kind}: do the thing that fixes it"
    api.error("POST", "/v1/endpoints", status, kind, message)
    msg = cni("ADD", config(api.path), netns=pod_netns).error(code)
    assert message in msg and msg.startswith(f"ADD: overlayd answered {kind}")


def test_add_with_an_unreadable_record_is_a_daemon_error(api: ApiStub, pod_netns: str) -> None:
    api.answer("POST", "/v1/endpoints", 200, {"container_id": "ctr1"})
    msg = cni("ADD", config(api.path), netns=pod_netns).error(DAEMON_INTERNAL)
    assert "cannot read" in msg and "same release" in msg


@needs_host_local
def test_del_keeps_the_delegated_address_while_overlayd_fails_to_detach(
    api: ApiStub, tmp_path: Path
) -> None:
    host_local(tmp_path, "ADD", "ctr1")
    conf = config(api.path, ipam=host_local_ipam(tmp_path))
    api.error("DELETE", "/v1/attachments/ctr1/eth0", 500, "internal", "engine on fire")
    assert "engine on fire" in cni("DEL", conf).error(DAEMON_INTERNAL)
    assert leases(tmp_path) == ["10.244.7.5"]  # the daemon still holds the attachment
    api.answer("DELETE", "/v1/attachments/ctr1/eth0", 200, {})
    assert cni("DEL", conf).success() is None
    assert leases(tmp_path) == []


def test_status_names_the_reason_overlayd_gives_for_not_being_ready(api: ApiStub) -> None:
    # Today's overlayd sends no reason (see the real not-ready test above); the
    # plugin shows one when it does.
    api.answer("GET", "/v1/status", 200, {"ready": False, "reason": "store unreachable"})
    msg = cni("STATUS", config(api.path), unset=NO_CONTAINER).error(PLUGIN_NOT_AVAILABLE)
    assert "not ready (store unreachable)" in msg and "wait for it" in msg


# -- a running overlayd: the first round trips --------------------------------------


@pytest.mark.root
def test_daemon_add_check_del_round_trip(cni_daemon: CniDaemon) -> None:
    netns = cni_daemon.pod_netns("rt")
    conf = config(cni_daemon.socket, vni=cni_daemon.vni)
    add = cni("ADD", conf, cid="rt1", netns=netns)
    assert add.rc == 0, add.stdout + add.stderr
    [itf] = add.out["interfaces"]
    assert itf["name"] == "eth0" and itf["sandbox"] == netns and itf["mac"] and itf["mtu"]
    address = add.out["ips"][0]["address"]
    assert _in_cidr(address, cni_daemon.cidr) and add.out["ips"][0]["interface"] == 0
    from overlay.nsenter import iproute

    with iproute(netns) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)}
    assert address in have
    check = cni("CHECK", {**conf, "prevResult": add.out}, cid="rt1", netns=netns)
    assert check.rc == 0 and check.stdout == "", check.stdout
    again = cni("ADD", conf, cid="rt1", netns=netns)
    assert "DEL it first" in again.error(ATTACHMENT_CONFLICT)
    assert cni("DEL", conf, cid="rt1", netns=netns).rc == 0
    assert cni("DEL", conf, cid="rt1", netns=netns).rc == 0  # idempotent
    gone = cni("CHECK", {**conf, "prevResult": add.out}, cid="rt1", netns=netns)
    assert "ADD it again" in gone.error(UNKNOWN_CONTAINER)


@pytest.mark.root
def test_daemon_check_notices_a_removed_address(cni_daemon: CniDaemon) -> None:
    from overlay.nsenter import iproute

    netns = cni_daemon.pod_netns("chk")
    conf = config(cni_daemon.socket, vni=cni_daemon.vni)
    add = cni("ADD", conf, cid="chk1", netns=netns)
    assert add.rc == 0, add.stdout
    address = add.out["ips"][0]["address"]
    ip, prefixlen = address.split("/")
    with iproute(netns) as ipr:
        ipr.addr(
            "del", index=ipr.link_lookup(ifname="eth0")[0], address=ip, prefixlen=int(prefixlen)
        )
    msg = cni("CHECK", {**conf, "prevResult": add.out}, cid="chk1", netns=netns).error(
        CHECK_MISMATCH
    )
    assert f"eth0 lacks address {address}" in msg and "DEL and ADD" in msg
    assert cni("DEL", conf, cid="chk1", netns=netns).rc == 0


@needs_host_local
@pytest.mark.root
def test_daemon_add_with_host_local_uses_and_then_releases_its_address(
    cni_daemon: CniDaemon, tmp_path: Path
) -> None:
    netns = cni_daemon.pod_netns("hl")
    ipam = {"type": "host-local", "subnet": cni_daemon.cidr, "dataDir": str(tmp_path / "ipam")}
    conf = config(cni_daemon.socket, vni=cni_daemon.vni, ipam=ipam)
    add = cni("ADD", conf, cid="hl1", netns=netns)
    assert add.rc == 0, add.stdout + add.stderr
    [held] = leases(tmp_path)
    assert add.out["ips"][0]["address"].split("/")[0] == held
    assert cni("DEL", conf, cid="hl1", netns=netns).rc == 0
    assert leases(tmp_path) == []


@pytest.mark.root
def test_daemon_gc_removes_attachments_not_listed(cni_daemon: CniDaemon) -> None:
    conf = config(cni_daemon.socket, vni=cni_daemon.vni)
    keep, drop = cni_daemon.pod_netns("gck"), cni_daemon.pod_netns("gcd")
    assert cni("ADD", conf, cid="keep1", netns=keep).rc == 0
    add = cni("ADD", conf, cid="drop1", netns=drop)
    assert add.rc == 0
    valid = [{"containerID": "keep1", "ifname": "eth0"}]
    gc = cni("GC", {**conf, "cni.dev/valid-attachments": valid})
    assert gc.rc == 0 and gc.stdout == "", gc.stdout
    cni("CHECK", {**conf, "prevResult": add.out}, cid="drop1", netns=drop).error(UNKNOWN_CONTAINER)
    assert cni("DEL", conf, cid="keep1", netns=keep).rc == 0


@pytest.mark.root
def test_daemon_status_ready_and_an_unknown_vni(cni_daemon: CniDaemon) -> None:
    conf = config(cni_daemon.socket, vni=cni_daemon.vni)
    run = cni("STATUS", conf)
    assert run.rc == 0 and run.stdout == "", run.stdout
    unknown = (cni_daemon.vni + 1) & 0xFFFFFF
    msg = cni("STATUS", {**conf, "vni": unknown}).error(PLUGIN_NOT_AVAILABLE)
    assert f"does not host vni {unknown}" in msg and "[[networks]]" in msg


@pytest.mark.root
def test_daemon_add_to_a_vni_it_does_not_host_is_code_7(cni_daemon: CniDaemon) -> None:
    netns = cni_daemon.pod_netns("nv")
    unknown = (cni_daemon.vni + 1) & 0xFFFFFF
    conf = config(cni_daemon.socket, vni=unknown)
    assert str(unknown) in cni("ADD", conf, cid="nv1", netns=netns).error(INVALID_CONFIG)
