"""Pod attach/detach latency through the real CNI plugin, against Debian's ``bridge`` plugin.

What a container runtime waits for when it starts or removes a pod: the wall
time of one plugin process, from exec to exit, for ADD and for DEL.

* ``overlay`` — the real ``overlay-cni`` as ``overlay install-cni`` writes it
  (the interpreter's start is included, as a runtime would pay it) talking to a
  real ``overlayd`` on a one-node cluster (``overlayd_cluster(n_nodes=1)``),
  addresses from the daemon's own IPAM. Its ``VERSION`` is also timed as the
  pip console script starts it (``version_console_p50``: a full interpreter
  start, with ``site``), to show what the launcher saves.
* ``bridge`` — the baseline: Debian's ``bridge`` plugin (``/usr/lib/cni``) with
  ``host-local`` IPAM (10.244.0.0/24, ``dataDir`` under ``tmp_path``), bridge
  ``cni0`` with the gateway address, run inside a node namespace of its own
  (the plugin makes the bridge in the namespace it runs in) via ``Netns.call``.

Both speak CNI 1.0.0, use the same pod namespaces (the overlay side first,
each pod back to only ``lo`` before the bridge side starts) and are timed the
same way (``time.perf_counter`` around the plugin's ``subprocess.run``). One
warm-up ADD+DEL per side (which also makes ``cni0``) is not counted.

* ``test_sequential_add_then_del``: ``PODS`` pods ADDed one by one, then DELeted
  one by one; p50/p90/max ms per verb (nearest rank), and each plugin's
  ``VERSION`` time as the floor of a process that does nothing.
* ``test_concurrent_adds_then_dels``: ``CONCURRENT`` ADDs started at once (a
  barrier), then as many DELs; ``all`` is the wall time from the first start to
  the last exit, plus p50/p90/max of the single processes.

``extra_info["cni_latency"]`` holds ``{side: {verb: {n, p50, p90, max[, all]}}}``
in ms, ``ratios`` overlay ms / bridge ms (> 1: overlay is slower) and ``raw``
every time; ``bench/report.py`` prints them. The timed part runs once
(``benchmark.pedantic(rounds=1)``). Timing is never asserted; correctness is
(every verb succeeds, ``eth0`` appears in the pod and goes again, nothing stays
attached or leased).
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overlay.testing.daemon import CNI_DIR, MODULE_CNI, DaemonCluster, Run, cni
from overlay.testing.netns import Netns, Topology

pytestmark = [pytest.mark.root, pytest.mark.slow]

BRIDGE = os.path.join(CNI_DIR, "bridge")
HOST_LOCAL = os.path.join(CNI_DIR, "host-local")
pytestmark.append(
    pytest.mark.skipif(
        not (os.access(BRIDGE, os.X_OK) and os.access(HOST_LOCAL, os.X_OK)),
        reason=f"{BRIDGE} or {HOST_LOCAL} is missing: apt-get install containernetworking-plugins",
    )
)

PODS = 20
CONCURRENT = 8
CNI_VERSION = "1.0.0"
OVERLAY_CIDR = "10.244.0.0/16"
BRIDGE_SUBNET = "10.244.0.0/24"
BLUE: dict[str, Any] = {"vni": 100, "tenant": "blue", "cidr": OVERLAY_CIDR}
RATIO_MEANING = "overlay ms / bridge ms, same figure; > 1: overlay is slower"


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else float("nan")


def _stats(values: list[float], wall: float | None = None) -> dict[str, float]:
    out = {"n": len(values), "p50": _pct(values, 0.5), "p90": _pct(values, 0.9), "max": max(values)}
    if wall is not None:
        out["all"] = wall
    return out


@dataclass
class Side:
    """One plugin set-up: how to invoke it, and how to check its pods."""

    name: str
    conf: dict[str, Any]
    plugin: tuple[str, ...] | None  # None: overlay-cni (the helper's default)
    runs_in: Netns | None  # the namespace the plugin process starts in; None: here
    check_added: Callable[[Netns, dict[str, Any]], None]
    check_clean: Callable[[], None]

    def invoke(self, verb: str, pod: Netns, cid: str) -> tuple[Run, float]:
        """Run ``verb`` for ``pod``; return the run and its wall time in ms."""
        kw: dict[str, Any] = {
            "cid": cid,
            "netns": pod.path,
            "cni_args": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid}",
        }
        if self.plugin is not None:
            kw["plugin"] = self.plugin
        conf = self.conf

        def timed() -> tuple[Run, float]:
            t0 = time.perf_counter()
            run = cni(verb, conf, **kw)
            return run, (time.perf_counter() - t0) * 1e3

        return timed() if self.runs_in is None else self.runs_in.call(timed)

    def version_ms(self, plugin: tuple[str, ...] | None = None) -> float:
        """Wall time of ``VERSION``: a process start that asks nobody anything."""
        kw: dict[str, Any] = {"unset": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")}
        if (plugin or self.plugin) is not None:
            kw["plugin"] = plugin or self.plugin

        def timed() -> float:
            t0 = time.perf_counter()
            cni("VERSION", {"cniVersion": CNI_VERSION}, **kw).success()
            return (time.perf_counter() - t0) * 1e3

        return timed() if self.runs_in is None else self.runs_in.call(timed)

    def add(self, pod: Netns, cid: str) -> float:
        run, ms = self.invoke("ADD", pod, cid)
        self.check_added(pod, run.success())
        return ms

    def delete(self, pod: Netns, cid: str) -> float:
        run, ms = self.invoke("DEL", pod, cid)
        assert run.success() is None, (self.name, cid)
        assert pod.links() == ["lo"], (self.name, cid, pod.links())
        return ms


def _console_script() -> tuple[str, ...]:
    """overlay-cni as pip installs it next to this interpreter, else ``python -m``."""
    found = shutil.which("overlay-cni", path=os.path.dirname(sys.executable))
    return (found,) if found else MODULE_CNI


def _addr_in(result: dict[str, Any], net: str) -> str:
    assert result["cniVersion"] == CNI_VERSION, result
    addr = result["ips"][0]["address"]
    assert ipaddress.ip_interface(addr).ip in ipaddress.ip_network(net), result
    return str(addr)


def _overlay_side(overlay_daemons: Callable[..., DaemonCluster]) -> Side:
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE], extra={"log": {"level": "info"}})
    cluster.start()
    daemon = cluster.daemons[0]
    conf: dict[str, Any] = {
        "cniVersion": CNI_VERSION,
        "name": "blue",
        "type": "overlay-cni",
        "vni": BLUE["vni"],
        "socket": daemon.socket,
    }

    def check_added(pod: Netns, result: dict[str, Any]) -> None:
        addr = _addr_in(result, OVERLAY_CIDR)
        info = pod.link_info("eth0")
        assert info.mac == result["interfaces"][0]["mac"], (info, result)
        assert addr in info.addresses, (info, result)

    def check_clean() -> None:
        assert daemon.client.attachments() == []

    return Side("overlay", conf, None, None, check_added, check_clean)


def _bridge_side(overlay_topology: Topology, tmp_path: Path) -> Side:
    node = overlay_topology.add_netns("brnode")
    data_dir = tmp_path / "host-local"
    name = "bench-bridge"
    conf: dict[str, Any] = {
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipam": {"type": "host-local", "subnet": BRIDGE_SUBNET, "dataDir": str(data_dir)},
    }

    def check_added(pod: Netns, result: dict[str, Any]) -> None:
        addr = _addr_in(result, BRIDGE_SUBNET)
        assert addr in pod.link_info("eth0").addresses, result

    def check_clean() -> None:
        leases = data_dir / name  # host-local: one file per address in <dataDir>/<name>
        left = [p.name for p in leases.iterdir() if p.name[0].isdigit()] if leases.exists() else []
        assert left == [], left
        assert sorted(node.links()) == ["cni0", "lo"], node.links()  # every host veth gone

    return Side("bridge", conf, (BRIDGE,), node, check_added, check_clean)


@pytest.fixture
def sides(
    overlay_topology: Topology, overlay_daemons: Callable[..., DaemonCluster], tmp_path: Path
) -> list[Side]:
    return [_overlay_side(overlay_daemons), _bridge_side(overlay_topology, tmp_path)]


def _warm_up(side: Side, pod: Netns) -> dict[str, float]:
    return {"add": side.add(pod, "warmup"), "del": side.delete(pod, "warmup")}


def _record(benchmark: Any, test: str, figures: dict[str, Any], raw: dict[str, Any]) -> None:
    over, base = figures["overlay"], figures["bridge"]
    ratios = {
        f"{verb}_{key}": over[verb][key] / base[verb][key]
        for verb in over
        if isinstance(over[verb], dict)
        for key in ("p50", "p90", "max", "all")
        if key in over[verb]
    }
    benchmark.extra_info.update(
        {
            "cni_latency": figures,
            "test": test,
            "unit": "ms",
            "primary": "overlay",
            "baseline": "bridge",
            "ratios": ratios,
            "ratio_meaning": RATIO_MEANING,
            "cni_version": CNI_VERSION,
            "raw": raw,
        }
    )


def test_sequential_add_then_del(
    benchmark: Any, sides: list[Side], overlay_topology: Topology
) -> None:
    pods = [overlay_topology.add_netns(f"p{i}") for i in range(PODS)]
    warm = overlay_topology.add_netns("pw")

    def measure() -> tuple[dict[str, Any], dict[str, Any]]:
        figures: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        for side in sides:
            warmup = _warm_up(side, warm)
            floor = [side.version_ms() for _ in range(3)]
            adds = [side.add(pod, f"p{i}") for i, pod in enumerate(pods)]
            dels = [side.delete(pod, f"p{i}") for i, pod in enumerate(pods)]
            side.check_clean()
            figures[side.name] = {
                "add": _stats(adds),
                "del": _stats(dels),
                "version_p50": _pct(floor, 0.5),
                "warmup": warmup,
            }
            raw[side.name] = {"add": adds, "del": dels, "version": floor}
            if side.name == "overlay":
                console = [side.version_ms(_console_script()) for _ in range(3)]
                figures[side.name]["version_console_p50"] = _pct(console, 0.5)
                raw[side.name]["version_console"] = console
        return figures, raw

    figures, raw = benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    _record(benchmark, "sequential", figures, raw)
    benchmark.extra_info["pods"] = PODS


def _at_once(side: Side, verb: str, pods: list[Netns]) -> tuple[list[float], float]:
    """Start ``verb`` for every pod at once; per-process ms and first start to last exit."""
    barrier = threading.Barrier(len(pods))
    starts = [0.0] * len(pods)
    ends = [0.0] * len(pods)
    runs: list[Run | None] = [None] * len(pods)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            starts[i] = time.perf_counter()
            runs[i], _ = side.invoke(verb, pods[i], f"c{i}")
            ends[i] = time.perf_counter()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(pods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(r is not None for r in runs), runs
    for i, run in enumerate(runs):
        assert run is not None
        out = run.success()
        if verb == "ADD":
            side.check_added(pods[i], out)
        else:
            assert out is None and pods[i].links() == ["lo"], (side.name, i, pods[i].links())
    per_process = [(e - s) * 1e3 for s, e in zip(starts, ends, strict=True)]
    return per_process, (max(ends) - min(starts)) * 1e3


def test_concurrent_adds_then_dels(
    benchmark: Any, sides: list[Side], overlay_topology: Topology
) -> None:
    pods = [overlay_topology.add_netns(f"c{i}") for i in range(CONCURRENT)]
    warm = overlay_topology.add_netns("cw")

    def measure() -> tuple[dict[str, Any], dict[str, Any]]:
        figures: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        for side in sides:
            warmup = _warm_up(side, warm)
            adds, add_all = _at_once(side, "ADD", pods)
            dels, del_all = _at_once(side, "DEL", pods)
            side.check_clean()
            figures[side.name] = {
                "add": _stats(adds, add_all),
                "del": _stats(dels, del_all),
                "warmup": warmup,
            }
            raw[side.name] = {"add": adds, "del": dels}
        return figures, raw

    figures, raw = benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    _record(benchmark, "concurrent", figures, raw)
    benchmark.extra_info["pods"] = CONCURRENT
