"""overlayd in tests: daemons on namespaced nodes, and the CNI plugin run as the runtime runs it.

``DaemonCluster`` builds N node namespaces on one underlay (as ``Cluster``
does) and runs a real ``overlayd`` process per node, with its node bound in
its namespace (``node.netns``), its API on a Unix socket in the test's
scratch directory and its state there too. Peers are static (memory store)
or found through a real etcd. ``cni()`` executes the real ``overlay-cni``
plugin with the spec's environment variables and the config on stdin.
Processes are stopped by PID, namespaces removed by the Topology.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlay.daemon.client import ApiError, Client, DaemonUnavailable
from overlay.testing.cluster import underlay_ip
from overlay.testing.netns import Netns, Topology


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


def to_toml(config: dict[str, Any]) -> str:
    """Enough TOML for overlayd's file: tables of scalars/lists, arrays of tables."""
    out: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{section}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
            continue
        out.append(f"[{section}]")
        tables = {
            k: v for k, v in body.items() if isinstance(v, list) and v and isinstance(v[0], dict)
        }
        out += [f"{k} = {_toml_value(v)}" for k, v in body.items() if k not in tables]
        for k, items in tables.items():
            for item in items:
                out.append(f"[[{section}.{k}]]")
                out += [f"{kk} = {_toml_value(vv)}" for kk, vv in item.items()]
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
        cidrs = [f"{underlay_ip(i)}/24" for i in range(self.n_nodes)]
        if self.n_nodes == 2:
            self.topo.veth(self.node_ns[0], self.node_ns[1], cidrs[0], cidrs[1])
        elif self.n_nodes > 2:
            self.topo.lan(self.node_ns, cidrs)
        else:  # one node: its underlay is one end of a veth inside it
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
        for d in self.daemons:
            d.stop()


def cni(
    verb: str,
    conf: dict[str, Any],
    *,
    container_id: str = "",
    netns: str = "",
    ifname: str = "eth0",
    args: str = "",
    path: str = "/usr/lib/cni",
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """Run the real ``overlay-cni`` as a runtime does: CNI_* variables, config on
    stdin. Returns (exit status, decoded stdout or None when empty)."""
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": path,
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
        **(env or {}),
    }
    environ = {k: v for k, v in environ.items() if v != "" or k == "CNI_COMMAND"}
    proc = subprocess.run(
        [sys.executable, "-m", "overlay.cni.plugin"],
        input=json.dumps(conf).encode(),
        capture_output=True,
        env=environ,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.decode().strip()
    return proc.returncode, json.loads(out) if out else None
