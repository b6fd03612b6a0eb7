"""The throughput-run product: test-bed fixtures, traffic figures, compare, the Python forwarder.

The fixtures are checked from the outside (a pytest run in a subprocess, via
``pytester``): they must remove every namespace they made even when the test
body raises, and ``compare`` must leave in the benchmark JSON what
``bench/report.py`` reads. The figures are checked for sanity on a tiny run,
never for speed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from overlay.testing.throughput import (
    PING_RTT_MS,
    KernelNet,
    Metric,
    OverlayNet,
    PyForwarderNet,
    Side,
    Testbeds,
    VethNet,
    bench_rounds,
    compare,
    cpu_s_per_gb,
    ping_rtt_ms,
    small_udp_pps,
    tcp_gbps,
)
from overlay.testing.traffic import ping, tcp_transfer

pytest_plugins = ["pytester"]

NETNS_DIR = "/var/run/netns"
REPO = Path(__file__).resolve().parents[2]


class FakeBenchmark:
    """The part of pytest-benchmark's fixture the helpers use."""

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}

    def pedantic(
        self, target: Callable[[], None], rounds: int, iterations: int, warmup_rounds: int
    ) -> None:
        for _ in range(rounds):
            target()


def _netns_with(prefix: str) -> set[str]:
    try:
        return {n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


def _plugin_args() -> list[str]:
    """``-p overlay.testing.plugin`` unless the installed entry point loads it already."""
    installed = any(ep.name == "overlay" for ep in metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "overlay.testing.plugin"]


_INNER = """
import json, os
import pytest
from overlay.testing.throughput import PING_RTT_MS, compare, sides_of

def test_body_raises(overlay_net, overlay_kernel_net, overlay_veth_net, overlay_pyforwarder_net):
    overlay_net()
    overlay_kernel_net()
    overlay_veth_net()
    overlay_pyforwarder_net()
    prefix = f"ovt{{os.getpid()}}-"
    seen = sorted(n for n in os.listdir("/var/run/netns") if n.startswith(prefix))
    with open({seen_path!r}, "w") as f:
        json.dump({{"prefix": prefix, "seen": seen}}, f)
    raise RuntimeError("the test body fails")

def test_compare_records(benchmark, overlay_net, overlay_veth_net):
    sides = sides_of({{"overlay": overlay_net(), "veth": overlay_veth_net()}})
    compare(benchmark, sides, PING_RTT_MS.with_options(count=3), rounds=2, baseline="veth")
"""


_OWN_FIXTURES = """
import pytest

@pytest.fixture
def topology():
    return "mine"

@pytest.fixture
def etcd():
    return "my etcd"

def test_my_fixtures_are_mine(topology, etcd):
    assert (topology, etcd) == ("mine", "my etcd")
"""


def test_the_plugins_fixtures_leave_generic_names_to_the_user(pytester: pytest.Pytester) -> None:
    """The plugin loads in every session where overlay is installed: each of its
    fixtures is named overlay_*, so a user's own ``topology`` or ``etcd`` is theirs."""
    pytester.makepyfile(test_own=_OWN_FIXTURES)
    listing = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", "--fixtures")
    ours = [
        line.split(" -- ")[0].split()[0]
        for line in listing.stdout.lines
        if " -- " in line and "overlay/testing/plugin.py" in line
    ]
    assert len(ours) >= 8 and all(name.startswith("overlay_") for name in ours), ours
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


@pytest.mark.root
def test_fixtures_remove_everything_even_when_the_test_fails(pytester: pytest.Pytester) -> None:
    seen_path = pytester.path / "seen.json"
    bench_json = pytester.path / "bench.json"
    pytester.makepyfile(test_inner=_INNER.format(seen_path=str(seen_path)))
    result = pytester.runpytest_subprocess(
        *_plugin_args(),
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={bench_json}",
        "-q",
        timeout=90,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: the test body fails*"])
    seen = json.loads(seen_path.read_text())
    # 2 nodes + 2 pods each for overlay, kernel and pyforwarder, 2 pods for veth
    assert len(seen["seen"]) == 14, seen
    assert _netns_with(seen["prefix"]) == set(), "namespaces left behind"

    info = json.loads(bench_json.read_text())["benchmarks"][0]["extra_info"]
    for key in ("unit", "rounds", "overlay", "ratio", "ratio_meaning", "sides", "ratios"):
        assert key in info, key
    assert info["rounds"] == 2 and info["unit"] == "ms" and info["baseline"] == "veth"
    assert set(info["sides"]) == {"overlay", "veth"}
    assert len(info["raw"]["overlay"]) == 2 and info["ratios"]["overlay_vs_veth"] > 0

    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    summary = report.summarise(json.loads(bench_json.read_text()))
    assert "veth" in report.table(summary)


@pytest.mark.root
def test_helpers_give_sane_figures_and_record_them(
    overlay_net: Callable[..., OverlayNet], overlay_veth_net: Callable[..., VethNet]
) -> None:
    net = overlay_net(node_options={"workers": 1})
    assert len(net.pods) == 2 and net.pair()[1].ip == "10.244.1.3"
    side, base = net.side(), overlay_veth_net().side()
    assert (side.name, base.name) == ("overlay", "veth")
    bench = FakeBenchmark()
    gbps = tcp_gbps(side, 1, benchmark=bench)
    cpu = cpu_s_per_gb(side, 1, benchmark=bench)
    pps = small_udp_pps(side, 0.5, warmup_s=0.2, benchmark=bench)
    rtt = ping_rtt_ms(side, count=5, benchmark=bench)
    veth_rtt = ping_rtt_ms(base, count=5, benchmark=bench)
    assert 0.01 < gbps < 1000
    assert 0 < cpu < 1000 and math.isfinite(cpu)
    assert 100 < pps < 1e9
    assert 0 < rtt < 100 and 0 < veth_rtt < 100
    info = bench.extra_info
    assert info["tcp_gbps"] == {"overlay": gbps}
    assert info["cpu_s_per_gb"] == {"overlay": cpu}
    assert info["small_udp_pps"] == {"overlay": pps}
    assert info["small_udp_offered_pps"]["overlay"] >= pps * 0.5
    assert info["ping_rtt_ms"] == {"overlay": rtt, "veth": veth_rtt}


@pytest.mark.root
def test_kernel_net_has_the_overlay_shape(overlay_kernel_net: Callable[..., KernelNet]) -> None:
    net = overlay_kernel_net(nodes=2, pods_per_node=2)
    assert [p.ip for p in net.pods] == ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"]
    a, b = net.pair()
    assert (a.node, b.node) == (0, 1)
    assert ping(a.netns, b.ip, count=2, interval=0.05).ok


@pytest.mark.root
def test_pyforwarder_carries_ping_and_a_verified_tcp_stream(
    overlay_pyforwarder_net: Callable[..., PyForwarderNet],
) -> None:
    net = overlay_pyforwarder_net()
    a, b = net.pair()
    assert ping(a.netns, b.ip, count=3, interval=0.05).ok
    result = tcp_transfer(a.netns, b.netns, b.ip, 1 << 20, timeout=15.0)
    assert result.ok, result.error
    assert all(f.counters["rx_frames"] > 0 and f.counters["tx_frames"] > 0 for f in net.forwarders)
    net.close()
    net.close()  # idempotent; the fixture closes it once more
    assert not [t for t in threading.enumerate() if t.name.startswith("pyforwarder-")]


def _fake_side(name: str) -> Side:
    return Side(name, None, None, "10.244.1.2", "10.244.1.3")  # type: ignore[arg-type]


def test_compare_rotates_sides_and_orients_ratios() -> None:
    order: list[str] = []
    figures = {"overlay": 2.0, "kernel": 4.0, "veth": 8.0}

    def measure(side: Side) -> float:
        order.append(side.name)
        return figures[side.name]

    sides = {n: _fake_side(n) for n in figures}
    bench = FakeBenchmark()
    lower = Metric("latency", "ms", measure, higher_is_better=False)
    result = compare(bench, sides, lower, rounds=3)
    assert order == [
        "overlay", "kernel", "veth",
        "kernel", "veth", "overlay",
        "veth", "overlay", "kernel",
    ]  # fmt: skip
    assert result.ratio == 2.0  # lower is better: kernel / overlay
    assert bench.extra_info["ratios"] == {
        "overlay_vs_kernel": 2.0,
        "overlay_vs_veth": 4.0,
        "veth_vs_kernel": 0.5,
    }
    assert bench.extra_info["overlay"] == {"min": 2.0, "median": 2.0, "max": 2.0}
    assert bench.extra_info["rounds"] == 3
    higher = compare(None, sides, Metric("rate", "x/s", measure), rounds=1)
    assert higher.ratio == 0.5
    with pytest.raises(ValueError, match="baseline='pyforwarder'"):
        compare(None, sides, higher.metric, baseline="pyforwarder")
    with pytest.raises(ValueError, match="reserved"):
        compare(None, {**sides, "ratio": _fake_side("ratio")}, higher.metric)


def test_rounds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVERLAY_BENCH_ROUNDS", raising=False)
    assert bench_rounds(5) == 5
    monkeypatch.setenv("OVERLAY_BENCH_ROUNDS", "1")
    assert bench_rounds(5) == 1
    monkeypatch.setenv("OVERLAY_BENCH_ROUNDS", "zero")
    with pytest.raises(ValueError, match="OVERLAY_BENCH_ROUNDS"):
        bench_rounds(5)


def test_testbeds_close_everything_and_then_report_failures() -> None:
    closed: list[str] = []

    class Fake:
        def __init__(self, name: str, fail: bool) -> None:
            self.name, self.fail = name, fail

        def close(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise OSError(f"{self.name} would not go")

    beds = Testbeds()
    beds.nets += [Fake("first", False), Fake("second", True), Fake("third", False)]  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="second would not go"):
        beds.close()
    assert closed == ["third", "second", "first"] and beds.nets == []
    PING_RTT_MS.with_options(count=1)  # options do not change the shared metric
    assert PING_RTT_MS.options == {}
