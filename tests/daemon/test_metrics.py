"""overlayd's Prometheus metrics: exposition from a snapshot, a real node's counters, serving.

Expositions are parsed back with prometheus-client's own parser, so the tests
check what a Prometheus server would read, not strings. Endpoints listen on
127.0.0.1 only, on ports the kernel picked for this run.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from overlay import bindings as engine
from overlay.daemon.health import HealthProber
from overlay.daemon.metrics import Metrics, parse_address
from overlay.errors import ConfigError
from overlay.node import Node
from overlay.testing.aio import LOOPS, run
from overlay.testing.fakes import FakePort, free_udp_port

Labels = frozenset[tuple[str, str]]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exposition:
    """A parsed exposition: samples by (name, labels), and each family's type and help."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, Labels], float] = {}
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            self.help[fam.name] = fam.documentation
            for s in fam.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"duplicate series {key}"
                self.samples[key] = s.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def parse(metrics: Metrics) -> Exposition:
    return Exposition(metrics.render().decode())


SNAPSHOT: dict[str, Any] = {
    "node": "node-a",
    "counters": {
        "offloads": {"udp_gso": True, "tap_tso": False},
        "node": {"udp_tx_packets": 5, "udp_tx_bytes": 640, "local_switched": 2},
        "drops": {"hairpin": 3, "vtep_not_member": 0},
        "networks": {
            100: {
                "rx_packets": 4,
                "rx_bytes": 400,
                "tx_packets": 6,
                "encap_packets": 1,
                "decap_packets": 2,
                "drops": 1,
            },
            200: {"rx_packets": 0, "drops": 0},
        },
        "ports": {
            3: {
                "vni": 100,
                "ifname": "eth0",
                "netns": "/run/netns/a",
                "mac": "02:00:00:00:01:02",
                "rx_packets": 4,
                "tx_packets": 6,
                "tx_bytes": 600,
                "drops": 1,
            },
            4: {
                "vni": 100,
                "ifname": "eth0",
                "netns": "/run/netns/b",
                "mac": "02:00:00:00:01:03",
                "rx_packets": 0,
                "drops": 0,
            },
        },
    },
    "networks": [{"vni": 100, "tenant": "blue"}, {"vni": 200, "tenant": "red"}],
    "endpoints": [{"vni": 100, "local": 2, "remote": 5}, {"vni": 200, "local": 0, "remote": 1}],
    "peers": [
        {"name": "node-b", "underlay": "198.18.0.2", "reachable": True, "rtt_ms": 0.25},
        {"name": "node-c", "underlay": "198.18.0.3", "reachable": False, "rtt_ms": 1.5},
        {"name": "node-d", "underlay": "198.18.0.4", "reachable": None, "rtt_ms": None},
    ],
    "store": {"kind": "etcd", "connected": True},
}


def test_a_synthetic_snapshot_becomes_the_documented_metrics() -> None:
    m = parse(Metrics(lambda: SNAPSHOT))
    assert m.get("overlay_node_info", node="node-a") == 1
    assert m.get("overlay_offload_active", offload="udp_gso") == 1
    assert m.get("overlay_offload_active", offload="tap_tso") == 0
    # Engine totals: one counter family each, with the engine's help text.
    assert m.get("overlay_node_udp_tx_packets_total") == 5
    assert m.get("overlay_node_udp_tx_bytes_total") == 640
    assert m.types["overlay_node_udp_tx_packets"] == "counter"
    assert m.help["overlay_node_udp_tx_packets"] == engine.COUNTER_HELP["udp_tx_packets"]
    # Drops by reason, zeros included (so rate() has a series from the start).
    assert m.get("overlay_drops_total", reason="hairpin") == 3
    assert m.get("overlay_drops_total", reason="vtep_not_member") == 0
    # Networks: packets and bytes by direction, labelled with the tenant.
    net = {"vni": "100", "tenant": "blue"}
    assert m.get("overlay_network_packets_total", direction="rx", **net) == 4
    assert m.get("overlay_network_packets_total", direction="tx", **net) == 6
    assert m.get("overlay_network_packets_total", direction="encap", **net) == 1
    assert m.get("overlay_network_packets_total", direction="decap", **net) == 2
    assert m.get("overlay_network_bytes_total", direction="rx", **net) == 400
    assert m.get("overlay_network_drops_total", **net) == 1
    assert m.get("overlay_network_drops_total", vni="200", tenant="red") == 0
    assert m.get("overlay_networks") == 2
    # Ports: vni, ifname and the port id (two pods' eth0 stay apart); no MAC, no netns.
    assert (
        m.get("overlay_port_packets_total", vni="100", ifname="eth0", port="3", direction="tx") == 6
    )
    assert (
        m.get("overlay_port_bytes_total", vni="100", ifname="eth0", port="3", direction="tx") == 600
    )
    assert m.get("overlay_port_drops_total", vni="100", ifname="eth0", port="4") == 0
    port_labels = {k for labels in m.series("overlay_port_packets_total") for k, _ in labels}
    assert port_labels == {"vni", "ifname", "port", "direction"}
    # Endpoints, peers, store.
    assert m.get("overlay_endpoints", vni="100", location="local") == 2
    assert m.get("overlay_endpoints", vni="100", location="remote") == 5
    assert m.get("overlay_endpoints", vni="200", location="remote") == 1
    assert m.get("overlay_peers") == 3
    assert m.get("overlay_peer_up", peer="node-b", underlay="198.18.0.2") == 1
    assert m.get("overlay_peer_up", peer="node-c", underlay="198.18.0.3") == 0
    assert not m.series("overlay_peer_up").keys() & {
        frozenset({("peer", "node-d"), ("underlay", "198.18.0.4")})
    }  # unknown: no series rather than a guess
    assert m.get("overlay_peer_rtt_seconds", peer="node-b") == pytest.approx(0.00025)
    assert m.get("overlay_peer_rtt_seconds", peer="node-c") == pytest.approx(0.0015)
    assert not m.has("overlay_peer_rtt_seconds", peer="node-d")
    assert m.get("overlay_store_connected", kind="etcd") == 1
    assert m.get("overlay_snapshot_errors_total") == 0


def test_the_snapshot_is_read_at_every_scrape() -> None:
    state = {"connected": True}
    metrics = Metrics(lambda: {"store": {"kind": "memory", "connected": state["connected"]}})
    assert parse(metrics).get("overlay_store_connected", kind="memory") == 1
    state["connected"] = False
    assert parse(metrics).get("overlay_store_connected", kind="memory") == 0


def test_reconcile_latency_is_a_histogram() -> None:
    metrics = Metrics(lambda: {})
    for seconds in (0.0007, 0.003, 0.2):
        metrics.observe_reconcile(seconds)
    m = parse(metrics)
    assert m.types["overlay_reconcile_seconds"] == "histogram"
    assert m.get("overlay_reconcile_seconds_count") == 3
    assert m.get("overlay_reconcile_seconds_sum") == pytest.approx(0.2037)
    assert m.get("overlay_reconcile_seconds_bucket", le="0.001") == 1
    assert m.get("overlay_reconcile_seconds_bucket", le="0.005") == 2
    assert m.get("overlay_reconcile_seconds_bucket", le="+Inf") == 3


def test_policy_hits_drops_conntrack_and_the_sets_in_force_are_metrics() -> None:
    rule = {"vni": "100", "tenant": "blue", "direction": "ingress", "tier": "networkpolicy"}
    snap = {
        "policy": {
            "hits": [
                {**rule, "policy": "x/web", "rule": "0", "value": 7},
                {**rule, "tier": "default", "policy": "", "rule": "", "value": 2},
            ],
            "drops": [
                {
                    **rule,
                    "tier": "isolation",
                    "policy": "x/web",
                    "rule": "",
                    "verdict": "deny",
                    "value": 3,
                },
            ],  # fmt: skip
            "conntrack_sessions": 12,
            "realised": [{"tenant": "blue", "hash": "0123abcd", "revision": 42}],
        }
    }
    metrics = Metrics(lambda: snap)
    metrics.observe_policy_apply(0.002)
    m = parse(metrics)
    assert m.get("overlay_policy_rule_hits_total", **rule, policy="x/web", rule="0") == 7
    assert m.get("overlay_policy_rule_hits_total", **{**rule, "tier": "default"}, policy="",
                 rule="") == 2  # fmt: skip
    deny = {**rule, "tier": "isolation", "policy": "x/web", "rule": "", "verdict": "deny"}
    assert m.get("overlay_policy_drops_total", **deny) == 3
    assert m.types["overlay_policy_drops"] == "counter"
    assert m.get("overlay_conntrack_sessions") == 12
    assert m.get("overlay_policy_realised_revision", tenant="blue") == 42
    assert m.get("overlay_policy_in_force", tenant="blue", hash="0123abcd") == 1
    assert m.types["overlay_policy_apply_seconds"] == "histogram"
    assert m.get("overlay_policy_apply_seconds_bucket", le="0.0025") == 1


def test_a_failing_snapshot_is_counted_and_the_scrape_still_answers() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("the node is gone")

    metrics = Metrics(broken)
    metrics.observe_reconcile(0.01)
    m = parse(metrics)
    assert m.get("overlay_snapshot_errors_total") == 1
    assert m.get("overlay_reconcile_seconds_count") == 1
    assert not m.series("overlay_peers")
    # A malformed section fails the same way, not half-way through the families.
    metrics = Metrics(lambda: {"node": "a", "endpoints": [{"local": 1}]})
    m = parse(metrics)
    assert m.get("overlay_snapshot_errors_total") == 1
    assert not m.series("overlay_node_info")
    # Every key is optional.
    assert parse(Metrics(lambda: {})).get("overlay_snapshot_errors_total") == 0


def test_each_registry_is_its_own() -> None:
    a = Metrics(lambda: {"node": "a"})
    b = Metrics(lambda: {"node": "b"})
    a.observe_reconcile(1.0)
    assert parse(b).get("overlay_reconcile_seconds_count") == 0
    assert parse(a).has("overlay_node_info", node="a")
    assert not parse(a).has("overlay_node_info", node="b")
    assert "process_cpu_seconds_total" not in a.render().decode()


# -- a real node's counters --------------------------------------------------------


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node("127.0.0.1", port=free_udp_port())
    try:
        yield n
    finally:
        n.close()


def eth(dst: str, src: str, ethertype: int = 0x88B6) -> bytes:
    raw = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", ""))
    return (raw + ethertype.to_bytes(2, "big")).ljust(60, b"\0")


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        done.wait(0.02)
    raise AssertionError("condition not reached in time")


def test_a_real_nodes_counters_become_metrics(node: Node) -> None:
    node.add_network(100, "blue")
    p1 = FakePort(node.engine, 100, "02:00:00:00:01:01")
    p2 = FakePort(node.engine, 100, "02:00:00:00:01:02")
    node.start()
    try:
        p1.send(eth(p2.mac, p1.mac))  # switched locally to p2
        p1.send(eth(p2.mac, "02:00:00:00:09:09"))  # not p1's MAC: a spoofing drop
        p2.recv()
        wait_for(lambda: node.counters()["drops"]["spoofed_source_mac"] == 1)

        def snapshot() -> dict[str, Any]:
            return {
                "node": "node-a",
                "counters": node.counters(),
                "networks": [{"vni": vni, "tenant": n.tenant} for vni, n in node.networks.items()],
            }

        m = parse(Metrics(snapshot))
    finally:
        p1.close()
        p2.close()
    assert m.get("overlay_node_local_switched_total") == 1
    assert m.get("overlay_node_tap_rx_frames_total") == 2
    assert m.get("overlay_drops_total", reason="spoofed_source_mac") == 1
    net = {"vni": "100", "tenant": "blue"}
    assert m.get("overlay_network_packets_total", direction="rx", **net) == 2
    assert m.get("overlay_network_packets_total", direction="tx", **net) == 1
    assert m.get("overlay_network_bytes_total", direction="tx", **net) == 60
    assert m.get("overlay_network_drops_total", **net) == 1
    # Every drop reason and every engine total of this build is exported.
    reasons = {dict(labels)["reason"] for labels in m.series("overlay_drops_total")}
    assert reasons == set(engine.DROP_REASONS)
    for name in engine.COUNTER_NAMES:
        if name not in engine.DROP_REASONS:
            assert m.types[f"overlay_node_{name}"] == "counter"
            assert m.help[f"overlay_node_{name}"] == engine.COUNTER_HELP[name]
    assert set(m.series("overlay_offload_active")) == {
        frozenset({("offload", name)}) for name in engine.OFFLOADS
    }


# -- serving -----------------------------------------------------------------------


def fetch(url: str, method: str = "GET", accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, method=method)
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"] or "", err.read().decode()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_serve_answers_scrapes_from_the_loop_with_live_peer_health(
    loop_kind: str, node: Node
) -> None:
    """Two nodes probe each other; the metrics endpoint of one shows the other up."""

    async def main() -> None:
        other = Node("127.0.0.1", port=free_udp_port())
        node.start()
        other.start()
        pa = HealthProber(node, "node-a", interval=0.1)
        pb = HealthProber(other, "node-b", interval=0.1)
        scraped_on: list[int] = []

        def snapshot() -> dict[str, Any]:
            scraped_on.append(threading.get_ident())
            return {"node": "node-a", "counters": node.counters(), "peers": pa.results()}

        metrics = Metrics(snapshot)
        loop = asyncio.get_running_loop()
        port = free_tcp_port()
        try:
            await pa.start()
            await pb.start()
            pa.set_peers({"node-b": ("127.0.0.1", other.port)})
            pb.set_peers({"node-a": ("127.0.0.1", node.port)})
            await metrics.serve(f"127.0.0.1:{port}")
            assert metrics.bound == ("127.0.0.1", port)
            url = f"http://127.0.0.1:{port}/metrics"
            for _ in range(100):
                status, ctype, body = await loop.run_in_executor(None, fetch, url)
                assert status == 200 and ctype.startswith("text/plain")
                m = Exposition(body)
                if m.has("overlay_peer_up", peer="node-b", underlay="127.0.0.1") and m.get(
                    "overlay_peer_up", peer="node-b", underlay="127.0.0.1"
                ):
                    break
                await asyncio.sleep(0.05)
            assert m.get("overlay_peer_up", peer="node-b", underlay="127.0.0.1") == 1
            assert m.get("overlay_peer_rtt_seconds", peer="node-b") > 0
            assert m.get("overlay_peers") == 1
            assert (
                m.get("overlay_network_packets_total", vni="16777215", tenant="", direction="encap")
                > 0
            )
            assert set(scraped_on) == {threading.get_ident()}  # on the loop's thread
            # OpenMetrics when asked; 404 elsewhere; 405 for other methods; HEAD has no body.
            status, ctype, body = await loop.run_in_executor(
                None, fetch, url, "GET", "application/openmetrics-text; version=1.0.0"
            )
            assert status == 200 and ctype.startswith("application/openmetrics-text")
            assert body.endswith("# EOF\n")
            status, _, _ = await loop.run_in_executor(None, fetch, url + "x")
            assert status == 404
            status, _, _ = await loop.run_in_executor(None, fetch, url, "POST")
            assert status == 405
            status, _, body = await loop.run_in_executor(None, fetch, url, "HEAD")
            assert status == 200 and body == ""
            # Garbage instead of HTTP: the connection is answered and closed, the loop lives.
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"\x00\x01garbage\r\n\r\n")
            answer = await asyncio.wait_for(r.read(), 5)
            assert answer.startswith(b"HTTP/1.1 400")
            w.close()
            await w.wait_closed()
        finally:
            await metrics.close()
            await metrics.close()  # idempotent
            await pa.stop()
            await pb.stop()
            other.close()
        assert metrics.bound is None
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run(loop_kind, main)


def test_serve_on_port_0_binds_a_free_port_once_and_close_frees_it() -> None:
    metrics = Metrics(lambda: {"node": "node-a"})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await metrics.serve("127.0.0.1:0")  # the kernel picks the port
        try:
            assert metrics.bound is not None
            host, port = metrics.bound
            assert host == "127.0.0.1" and port > 0
            status, _, body = await loop.run_in_executor(
                None, fetch, f"http://127.0.0.1:{port}/metrics"
            )
            assert status == 200
            assert Exposition(body).get("overlay_node_info", node="node-a") == 1
            with pytest.raises(RuntimeError, match="already serving"):
                await metrics.serve("127.0.0.1:0")
        finally:
            await metrics.close()
        await metrics.close()  # idempotent
        assert metrics.bound is None
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))

    run("asyncio", main)


def test_a_taken_address_is_a_config_error_naming_metrics_address() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        metrics = Metrics(lambda: {})

        async def main() -> None:
            with pytest.raises(ConfigError, match=r"metrics\.address.*in use.*choose another port"):
                await metrics.serve(taken)
            assert metrics.bound is None

        run("asyncio", main)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "9469",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:http",
        "127.0.0.1:70000",
        "::1:9469",
        "[nonsense]:9469",
        ":9469",
    ],
)
def test_malformed_addresses_are_config_errors(address: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.address.*host:port"):
        parse_address(address)


def test_addresses_parse() -> None:
    assert parse_address("127.0.0.1:9469") == ("127.0.0.1", 9469)
    assert parse_address("[::1]:9469") == ("::1", 9469)
    assert parse_address("localhost:0") == ("localhost", 0)
