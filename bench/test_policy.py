"""What network policy costs the data plane, and what compiling it costs the control plane.

Two overlay nodes in namespaces (real TAPs, real underlay), one client pod on
node 0 and one server pod per case on node 1, measured side by side with
:func:`overlay.testing.throughput.compare` (sides alternate within rounds):

* ``none``        the server pod has no policy (the baseline of every ratio);
* ``rules_10``, ``rules_1000``, ``rules_10000``  its ingress is isolated by
  that many NetworkPolicy rules, all but the last not matching the test
  flows (other /32 peers on any port, or the client's /16 on ports the
  flows never use), the last allowing the client: each new connection is
  classified against the whole table;
* ``flows_100k``  ``rules_10``'s table on a second pair of nodes whose
  connection tracking holds the sessions of 100,000 distinct UDP flows sent
  just before each measurement, on nodes whose tables hold 262,144 sessions
  per worker (``Node(conntrack_sessions=...)``; what the table keeps of them
  is reported: ``sessions_held``).

Figures: small UDP datagrams per second, one TCP stream (Gbit/s), new TCP
connections per second (each one's SYN meets the classifier), and the time
to compile and apply 1,000 NetworkPolicies over 1,000 endpoints (what
``Network.apply_policies`` does: ``overlay.policy.engine.NetworkPolicies``
compiles every port and direction at once, then ``Engine.port_policy_set``
on an engine with 1,000 ports), in seconds.
Ratios are ``<case>_vs_none``; figures are never asserted.

Environment: ``OVERLAY_BENCH_ROUNDS`` (default 5), ``OVERLAY_BENCH_SECONDS``
(TCP seconds, default 3), ``OVERLAY_BENCH_NODE_OPTIONS``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from overlay import policy
from overlay.bindings import DROP_REASONS, ENCAP_VXLAN, PolicyRule, PortRange
from overlay.policy.engine import Identity, Member, NetworkPolicies, PolicySet
from overlay.testing.fakes import FakePort, fake_transport_engine
from overlay.testing.throughput import (
    SMALL_UDP_PPS,
    TCP_CONNECTS_PER_S,
    TCP_GBPS,
    Metric,
    OverlayNet,
    Side,
    bench_node_options,
    bench_rounds,
    bench_seconds,
    compare,
)

pytestmark = pytest.mark.root

ROUNDS = bench_rounds(5)
SECONDS = bench_seconds(3)
NODE_OPTIONS = bench_node_options()
RULE_COUNTS = (10, 1_000, 10_000)
FLOWS = 100_000
FLOW_SESSIONS = 262_144  # conntrack_sessions of the flows_100k nodes: 8-way buckets fill unevenly
ALLOW_ID = 1_000_000  # the id of the one rule that allows the test flows


def ingress_rules(n: int, client_ip: str) -> list[PolicyRule]:
    """n NetworkPolicy rules of which only the last matches the client's flows."""
    client = ipaddress.ip_network(f"{client_ip}/16", strict=False)
    rules = []
    for i in range(n - 1):
        if i % 2:  # the client's whole /16, on ports its flows never use (ephemeral: >= 32768)
            peers: tuple[str, ...] = (str(client),)
            port = 1 + i % 20_000
            ports: tuple[PortRange, ...] = (PortRange("tcp" if i % 4 == 1 else "udp", port, port),)
        else:  # someone else, any port
            peers = (f"10.245.{i // 250 % 256}.{i % 250 + 1}/32",)
            ports = ()
        rules.append(PolicyRule(id=i + 1, peers=peers, ports=ports))
    rules.append(PolicyRule(id=ALLOW_ID, peers=(f"{client_ip}/32",)))
    return rules


@dataclasses.dataclass
class Bed:
    sides: dict[str, Side]
    hooks: dict[str, Callable[[], None]]
    allow_hits: Callable[[], dict[str, int]]
    held: dict[str, int]
    drops: Callable[[], dict[str, dict[str, int]]]


def open_udp_flows(side: Side, count: int) -> None:
    """count distinct UDP flows from a to b (two source ports, one datagram each
    to every destination port from 1 up), paced so no queue on the way overflows."""

    def send() -> None:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for n in range(count):
                s = socks[n % 2]
                try:
                    s.sendto(b"f", (side.b_ip, 1 + n // 2))
                except OSError:  # ENOBUFS: let the path drain
                    time.sleep(0.005)
                if n % 256 == 255:
                    time.sleep(0.002)
        finally:
            for s in socks:
                s.close()

    side.a.call(send)


@pytest.fixture
def bed(overlay_net: Callable[..., OverlayNet]) -> Iterator[Bed]:
    main = overlay_net(pods_per_node=1 + len(RULE_COUNTS), node_options=NODE_OPTIONS)
    # room for every flow: 100,000 sessions in 262,144 slots per worker
    flows = overlay_net(
        node_options={"conntrack_sessions": FLOW_SESSIONS, **NODE_OPTIONS}, cidr="10.244.2.0/24"
    )
    client = main.pods[0]
    servers = [p for p in main.pods if p.node == 1]
    sides = {"none": Side("none", client.netns, servers[0].netns, client.ip, servers[0].ip)}
    engine = main.cluster.nodes[1].engine
    tables: dict[str, tuple[Any, int]] = {}
    for n, server in zip(RULE_COUNTS, servers[1:], strict=True):
        name = f"rules_{n}"
        engine.port_policy_set(
            server.port.id, "ingress", ingress_rules(n, client.ip), isolated=True
        )
        tables[name] = (engine, server.port.id)
        sides[name] = Side(name, client.netns, server.netns, client.ip, server.ip)
    fc, fs = flows.pair()
    feng = flows.cluster.nodes[1].engine
    feng.port_policy_set(fs.port.id, "ingress", ingress_rules(10, fc.ip), isolated=True)
    tables["flows_100k"] = (feng, fs.port.id)
    sides["flows_100k"] = Side("flows_100k", fc.netns, fs.netns, fc.ip, fs.ip)
    held: dict[str, int] = {}

    def refill() -> None:
        open_udp_flows(sides["flows_100k"], FLOWS)
        held.setdefault("sessions_held", 0)
        held["sessions_held"] = max(held["sessions_held"], feng.conntrack_sessions())

    def allow_hits() -> dict[str, int]:
        return {
            name: eng.port_policy_hits(pid, "ingress").get(ALLOW_ID, 0)
            for name, (eng, pid) in tables.items()
        }

    def drops() -> dict[str, dict[str, int]]:
        """The receiving nodes' drop counters that are not zero."""
        out = {}
        for name, eng in (("main", engine), ("flows", feng)):
            c = eng.counters()
            out[name] = {k: c[k] for k in DROP_REASONS if c[k]}
        return out

    yield Bed(sides, {"flows_100k": refill}, allow_hits, held, drops)


def _run(benchmark: Any, bed: Bed, metric: Metric) -> None:
    hooks = bed.hooks

    def measure(side: Side, **options: Any) -> float:
        if side.name in hooks:
            hooks[side.name]()  # before the figure's own clock starts
        return metric.measure(side, **options)

    prepared = dataclasses.replace(metric, measure=measure)
    benchmark.extra_info["node_options"] = NODE_OPTIONS
    compare(benchmark, bed.sides, prepared, ROUNDS, baseline="none", primary="rules_10000")
    # the test flows were decided by the last rule of every table
    benchmark.extra_info["allow_rule_hits"] = bed.allow_hits()
    benchmark.extra_info["flows_sent"] = FLOWS
    benchmark.extra_info.update(bed.held)
    benchmark.extra_info["receiving_node_drops"] = bed.drops()


def test_policy_small_udp_packets(benchmark: Any, bed: Bed) -> None:
    _run(benchmark, bed, SMALL_UDP_PPS)


def test_policy_tcp_one_stream(benchmark: Any, bed: Bed) -> None:
    _run(benchmark, bed, TCP_GBPS.with_options(seconds=SECONDS))


def test_policy_new_connections(benchmark: Any, bed: Bed) -> None:
    _run(benchmark, bed, TCP_CONNECTS_PER_S)


# -- compile and apply ------------------------------------------------------------

ENDPOINTS = 1_000
POLICIES = 1_000
NAMESPACES = 10


def policy_world() -> tuple[policy.World, list[policy.NetworkPolicy]]:
    """1,000 pods in 10 namespaces (100 apps, 10 roles), 1,000 NetworkPolicies:
    each selects an app's pods, lets in a role of its namespace and an app of
    the namespaces of one team on a port and a named port, and lets out DNS
    to an outside block less one /24."""
    nss = {f"ns{i}": {"team": f"t{i % 3}"} for i in range(NAMESPACES)}
    eps = [
        policy.Endpoint(
            ip=f"10.244.{i // 250 + 1}.{i % 250 + 2}",
            namespace=f"ns{i % NAMESPACES}",
            labels={"app": f"a{i % 100}", "role": f"r{i % 10}"},
            named_ports={"http": (8080, "TCP")},
        )
        for i in range(ENDPOINTS)
    ]
    nps = []
    for i in range(POLICIES):
        spec = {
            "podSelector": {"matchLabels": {"app": f"a{i % 100}"}},
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"role": f"r{i % 10}"}}},
                        {
                            "namespaceSelector": {"matchLabels": {"team": f"t{i % 3}"}},
                            "podSelector": {"matchLabels": {"app": f"a{(i + 1) % 100}"}},
                        },
                    ],
                    "ports": [{"port": 80 + i % 50}, {"port": "http"}],
                }
            ],
            "egress": [
                {
                    "to": [
                        {"ipBlock": {"cidr": "198.19.0.0/16", "except": [f"198.19.{i % 200}.0/24"]}}
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}],
                }
            ],
            "policyTypes": ["Ingress", "Egress"],
        }
        meta = {"name": f"p{i}", "namespace": f"ns{i % NAMESPACES}"}
        nps.append(policy.NetworkPolicy.from_dict({"metadata": meta, "spec": spec}))
    w = policy.World(namespaces=nss, endpoints=eps, node_addresses={"10.244.0.1"})
    return w, nps


def test_policy_compile_and_apply(benchmark: Any) -> None:
    w, nps = policy_world()
    with fake_transport_engine(ENCAP_VXLAN) as eng:
        eng.network_add(100)
        ports = [
            FakePort(eng, 100, f"02:00:00:01:{i >> 8:02x}:{i & 0xFF:02x}", (ep.ip,))
            for i, ep in enumerate(w.endpoints)
        ]
        spent: dict[str, list[float]] = {"compile_s": [], "apply_s": []}
        counts = {"rules": 0, "tables": 0}
        members = [
            Member(p.id, (ep.ip,), Identity(ep.namespace, ep.labels, ep.named_ports), True)
            for p, ep in zip(ports, w.endpoints, strict=True)
        ]
        pset = PolicySet(tuple(nps))

        def one_round() -> None:
            # What Network.apply_policies does: the world from the members,
            # every port compiled at once, then each table set.
            pols = NetworkPolicies()
            pols.namespaces = {ns: dict(labels) for ns, labels in w.namespaces.items()}
            t0 = time.perf_counter()
            world = pols.world(members, {str(a) for a in w.node_addresses})
            compiled = pols.compile(world, members, pset, audit=False)
            t1 = time.perf_counter()
            for pid, dirs in compiled.items():
                for d, (table, lines) in dirs.items():
                    eng.port_policy_set(pid, d, lines, isolated=table.isolated)
            t2 = time.perf_counter()
            spent["compile_s"].append(t1 - t0)
            spent["apply_s"].append(t2 - t1)
            encoded = [lines for dirs in compiled.values() for _, lines in dirs.values()]
            counts["rules"] = sum(e.rules for e in encoded)
            counts["tables"] = len({id(e) for e in encoded})

        try:
            benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
        finally:
            for p in ports:
                p.close()
    total = [c + a for c, a in zip(spent["compile_s"], spent["apply_s"], strict=True)]
    benchmark.extra_info.update(
        {
            "metric": "policy_compile_apply_s",
            "unit": "s",
            "endpoints": ENDPOINTS,
            "policies": POLICIES,
            "rules_applied": counts["rules"],
            "distinct_tables": counts["tables"],
            "compile_s": min(spent["compile_s"]),
            "apply_s": min(spent["apply_s"]),
            "total_s": min(total),
            "per_endpoint_ms": 1000 * min(total) / ENDPOINTS,
            "raw": spent,
        }
    )
