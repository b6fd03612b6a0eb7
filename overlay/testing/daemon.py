"""overlayd in tests: daemons on namespaced nodes, and the CNI plugin run as the runtime runs it.

``DaemonCluster`` builds N node namespaces on one underlay (as ``Cluster``
does) and runs a real ``overlayd`` process per node, with its node bound in
its namespace (``node.netns``), its API on a Unix socket in the test's
scratch directory and its state there too. Peers are static (memory store)
or found through a real etcd. ``cni()`` executes the real ``overlay-cni``
plugin (or any CNI plugin) with the spec's environment variables and the
configuration on stdin, and returns a ``Run`` to assert on; the plugin tests
and the end-to-end tests all use this one runner.
Processes are stopped by PID, namespaces removed by the Topology.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import overlay
from overlay.daemon.client import ApiError, Client, DaemonUnavailable
from overlay.nsenter import NETNS_RUN_DIR, remove_netns
from overlay.testing.netns import Netns, Topology, underlay_ip


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def _table_array(name: str, items: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for item in items:
        out.append(f"[[{name}]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return out


def to_toml(config: dict[str, Any]) -> str:
    """Enough TOML for overlayd's file: tables of scalars/lists, arrays of tables."""
    out: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            out += _table_array(section, body)
            continue
        out.append(f"[{section}]")
        tables = {
            k: v for k, v in body.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        out += [f"{k} = {_toml_value(v)}" for k, v in body.items() if k not in tables]
        for k, items in tables.items():
            out += _table_array(f"{section}.{k}", items)
    return "\n".join(out) + "\n"


class Overlayd:
    """One overlayd process: ``start()``, ``wait_ready()``, ``stop()`` (SIGTERM),
    ``kill()`` (SIGKILL: a crash), ``reload()`` (SIGHUP)."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.dir / "overlayd.toml"
        self.socket = config["api"]["socket"]
        self.log_path = self.dir / "overlayd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=10.0)

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(to_toml(self.config))

    def start(self, *, wait: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("overlayd is running already")
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept by the child
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "overlay.daemon.main", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"overlayd exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                status = self.client.status()
                if status["ready"]:
                    return status
            except (DaemonUnavailable, ApiError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"overlayd not ready in {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def reload(self) -> None:
        self._signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID and wait; SIGKILL if it does not go. Returns the exit status."""
        if self.proc is None:
            return None
        self._signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class DaemonCluster:
    """``n`` nodes in namespaces, each running overlayd; ``store`` is "memory"
    (static peers) or an etcd URL."""

    topo: Topology
    directory: Path
    n_nodes: int = 2
    networks: Sequence[dict[str, Any]] = ({"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"},)
    store: str = "memory"
    encap: str = "vxlan"
    health_interval: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)
    node_ns: list[Netns] = field(default_factory=list)
    daemons: list[Overlayd] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.node_ns = [self.topo.add_netns(f"n{i}") for i in range(self.n_nodes)]
        cidrs = self.topo.underlay(self.node_ns)
        if self.n_nodes == 1:  # its underlay is one end of a veth inside it
            ns = self.node_ns[0]
            self.topo.veth(ns, ns, cidrs[0], None, name_a="ul0", name_b="ul1")
        for i in range(self.n_nodes):
            self.daemons.append(Overlayd(self.directory / f"node{i}", self.config(i)))

    def config(self, i: int) -> dict[str, Any]:
        d = self.directory / f"node{i}"
        store: dict[str, Any] = {"ttl": 3}
        if self.store == "memory":
            store["kind"] = "memory"
            store["peers"] = [
                {
                    "name": f"node{j}",
                    "underlay": underlay_ip(j),
                    "networks": [n["vni"] for n in self.networks],
                }
                for j in range(self.n_nodes)
                if j != i
            ]
        else:
            store.update(kind="etcd", endpoints=[self.store])
        cfg: dict[str, Any] = {
            "node": {
                "name": f"node{i}",
                "underlay": underlay_ip(i),
                "encap": self.encap,
                "netns": self.node_ns[i].path,
                "state_dir": str(d / "state"),
            },
            "store": store,
            "api": {"socket": str(d / "overlayd.sock")},
            "metrics": {"address": ""},
            "log": {"level": "debug"},
            "health": {"interval": self.health_interval},
            "networks": [dict(n) for n in self.networks],
        }
        for section, values in self.extra.items():
            cfg.setdefault(section, {}).update(values)
        return cfg

    def start(self) -> None:
        for d in self.daemons:
            d.start(wait=False)
        for d in self.daemons:
            d.wait_ready()

    def close(self) -> None:
        """Stop the daemons; remove what they leave behind on purpose (isolated
        gateways' router namespaces, ``<node ns>-r<vni>``: overlay.gateway)."""
        for d in self.daemons:
            d.stop()
        for ns in self.node_ns:
            prefix = os.path.basename(ns.path) + "-r"
            for name in os.listdir(NETNS_RUN_DIR) if os.path.isdir(NETNS_RUN_DIR) else []:
                if name.startswith(prefix) and name[len(prefix) :].isdigit():
                    remove_netns(name)


# -- the CNI plugin as the runtime runs it ---------------------------------------

CNI_DIR = "/usr/lib/cni"
"""Where Debian's containernetworking-plugins (host-local, tuning, ...) live."""

PACKAGE_PARENT = str(Path(overlay.__file__).resolve().parent.parent)
"""The directory holding the ``overlay`` package: the plugin's PYTHONPATH."""

EXAMPLES_DIR = os.path.join(PACKAGE_PARENT, "examples")
"""The repository's example plugins (present in a checkout, not when installed);
add it to ``cni_path`` to delegate to one (its files are executables)."""

MODULE_CNI = (sys.executable, "-m", "overlay.cni.plugin")
"""overlay-cni started as the console script starts it: a full interpreter, with site."""

_installed: list[str] = []


def overlay_cni() -> tuple[str]:
    """The argv of overlay-cni as ``overlay install-cni`` writes it, installed once
    per process into a scratch plugin directory that is removed at exit."""
    if not _installed:
        from overlay.cni import install

        bin_dir = tempfile.mkdtemp(prefix="overlay-cni-bin-")
        owner = os.getpid()  # a forked child that exits must not remove it

        def remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(bin_dir, ignore_errors=True)

        atexit.register(remove)
        _installed.append(str(install.install(bin_dir)))
    return (_installed[0],)


class Run:
    """One finished plugin invocation: exit status, stdout decoded (None when empty), stderr."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.rc = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr
        self.out: Any = json.loads(done.stdout) if done.stdout.strip() else None

    def __repr__(self) -> str:
        return f"Run(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr[-2000:]!r})"

    def success(self) -> Any:
        """Assert the invocation succeeded; return its decoded stdout (None when empty)."""
        assert self.rc == 0, self
        return self.out

    def error(self, code: int) -> str:
        """Assert this is the spec's error with ``code``; return its message."""
        assert self.rc == 1, self
        assert isinstance(self.out, dict) and self.out.get("code") == code, self
        msg = self.out["msg"]
        assert isinstance(msg, str) and msg, self
        return msg


def cni(
    command: str,
    conf: dict[str, Any] | str | None,
    *,
    cid: str = "ctr1",
    netns: str = "/var/run/netns/ctr1",
    ifname: str = "eth0",
    cni_args: str = "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default",
    cni_path: Sequence[str] = (CNI_DIR,),
    plugin: Sequence[str] | None = None,
    unset: Sequence[str] = (),
    timeout: float = 60.0,
    **env: str,
) -> Run:
    """Run a CNI plugin as a runtime does; by default the real ``overlay-cni``.

    The environment is only what the spec defines (``CNI_COMMAND=command``,
    ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``,
    ``CNI_PATH``) plus ``PATH`` and a ``PYTHONPATH`` that starts with the
    directory holding this ``overlay`` package, so a Python delegate the plugin
    runs imports the code under test, installed or not (overlay-cni itself is
    the launcher ``overlay_cni()`` installs, which ignores PYTHONPATH). ``unset``
    removes variables; keyword arguments (``CNI_PATH=""``) set or override them.
    ``conf`` goes to stdin as JSON (a string is sent as it is, None as nothing).
    The netns and container defaults are placeholders for tests that never reach
    a namespace. ``plugin`` is the argv of another plugin to run instead (e.g.
    ``[f"{CNI_DIR}/tuning"]``, for the next plugin in a chain).
    """
    pythonpath = [PACKAGE_PARENT]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": cni_args,
        "CNI_PATH": os.pathsep.join(cni_path),
        **env,
    }
    for name in unset:
        environ.pop(name, None)
    data = conf if isinstance(conf, str) else "" if conf is None else json.dumps(conf)
    done = subprocess.run(
        list(plugin or overlay_cni()),
        input=data,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
    )
    return Run(done)
