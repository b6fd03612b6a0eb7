"""The C policy engine against the reference evaluator, on random worlds.

Hypothesis draws a world (namespaces with labels, pods with labels and named
ports, IPv4 or IPv6), NetworkPolicies, AdminNetworkPolicies, a
BaselineAdminNetworkPolicy and a handful of connections. Every pod becomes a
port of one in-process engine (fake ports, fake transport), programmed with
the tables ``overlay.policy.compile_ports`` makes, turned into the engine's
rules by the product's converter (``overlay.policy.engine.to_rules``). Each
connection's first packet (a TCP SYN, a UDP datagram, an SCTP INIT or an
ICMP echo request) goes from its source port to its destination port, and
what the engine does with it must be what ``overlay.policy.evaluate`` says,
down to the deciding tier, policy and rule of each direction (read back
from the ports' hit counters). Then the other end answers: an allowed
connection's reply passes whatever the policies say of the reverse
direction; after a refused one, the same packet is unsolicited and passes
only where the reverse direction is allowed by itself.

Everything the test waits for is an event that must come (a frame delivered
or a drop counted), bounded at 10 s; no assertion depends on timing.
"""

from __future__ import annotations

import ipaddress
import itertools
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck
from scapy.packet import Packet, Raw

from overlay import policy
from overlay.bindings import (
    DROP_REASONS,
    ENCAP_VXLAN,
    RULE_DEFAULT,
    RULE_ISOLATION,
    PolicyRule,
)
from overlay.bindings.tools import FakeTransportEngine
from overlay.policy import PortTable
from overlay.policy.engine import RuleIds, to_rules
from overlay.testing.fakes import FakePort, fake_transport_engine

VNI = 300
NSS = ("x", "y", "z")
KEYS = ("app", "tier")
VALUES = ("a", "b")
PORT_NAMES = ("web", "dns")
RULE_PORTS = (53, 80, 81, 1000)
PACKET_PORTS = (53, 80, 81, 95, 1000, 1030, 40000)
PROTOS = ("TCP", "UDP", "SCTP")

# -- the engine's rules from a compiled table ---------------------------------

#: What decided, as the reference reports it: (tier, policy, rule index).
Meaning = tuple[str, str | None, int | None]

#: One id per (tier, policy, rule) for the whole run, as a network keeps them.
IDS = RuleIds()


@dataclass(frozen=True)
class EngineTable:
    """A PortTable as ``Engine.port_policy_set`` takes it (the product's
    converter, ``overlay.policy.engine.to_rules``), and the meaning of each
    rule id (the implicit ISOLATION and DEFAULT ids included)."""

    rules: tuple[PolicyRule, ...]
    isolated: bool
    meaning: dict[int, Meaning]

    @property
    def empty(self) -> bool:
        return not self.rules and not self.isolated


def engine_rules(table: PortTable) -> EngineTable:
    """The engine's rules of a compiled table and what each id stands for:
    the reference names the NetworkPolicy that isolates where the engine
    reports the implicit ISOLATION rule."""
    rules = to_rules(table, IDS)
    meaning: dict[int, Meaning] = {
        RULE_DEFAULT: ("default", None, None),
        RULE_ISOLATION: ("networkpolicy", table.isolated_by, None),
    }
    for r in rules:
        ref = IDS.ref(r.id)
        meaning[r.id] = (ref.tier, ref.policy, ref.rule)
    return EngineTable(tuple(rules), table.isolated, meaning)


# -- random worlds --------------------------------------------------------------


def address(family: int, subnet: int, host: int) -> str:
    """Pods live in 10.244.<subnet>.<host> or 2001:2:0:<subnet>::<host>."""
    return f"10.244.{subnet}.{host}" if family == 4 else f"2001:2:0:{subnet}::{host:x}"


NODE = {4: "10.244.0.1", 6: "2001:2::1"}
PREFIXES = {
    4: (0, 8, 16, 20, 23, 24, 26, 27, 28, 29, 30, 31, 32),
    6: (0, 32, 48, 56, 62, 64, 100, 120, 123, 124, 126, 127, 128),
}

label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)


@st.composite
def selectors(draw: st.DrawFn) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if draw(st.booleans()):
        sel["matchLabels"] = draw(label_sets)
    if draw(st.booleans()):
        op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
        req: dict[str, Any] = {"key": draw(st.sampled_from(KEYS)), "operator": op}
        if op in ("In", "NotIn"):
            req["values"] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2))
        sel["matchExpressions"] = [req]
    return sel


def ns_selectors() -> st.SearchStrategy[dict[str, Any]]:
    by_name = st.sampled_from(NSS).map(
        lambda n: {"matchLabels": {"kubernetes.io/metadata.name": n}}
    )
    return st.one_of(selectors(), by_name)


@dataclass(frozen=True)
class Space:
    """What random prefixes are drawn around: the family and the pods' addresses."""

    family: int
    anchors: tuple[str, ...]


@st.composite
def anchors(draw: st.DrawFn, space: Space) -> str:
    """An address to build a prefix on: a pod's, its neighbour's, or any in the range."""
    kind = draw(st.sampled_from(("pod", "pod", "near", "any")))
    if kind == "any":
        return address(space.family, draw(st.integers(0, 7)), draw(st.integers(1, 254)))
    a = ipaddress.ip_address(draw(st.sampled_from(space.anchors)))
    return str(a + 1) if kind == "near" else str(a)


@st.composite
def prefixes(draw: st.DrawFn, space: Space) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    plen = draw(st.sampled_from(PREFIXES[space.family]))
    return ipaddress.ip_network(f"{draw(anchors(space))}/{plen}", strict=False)


@st.composite
def ip_blocks(draw: st.DrawFn, space: Space) -> dict[str, Any]:
    """A cidr and 0-2 excepts strictly inside it (built on an address inside)."""
    cidr = draw(prefixes(space))
    excepts: list[str] = []
    longer = [p for p in PREFIXES[space.family] if p > cidr.prefixlen]
    for _ in range(draw(st.integers(0, 2)) if longer else 0):
        inside = ipaddress.ip_address(draw(anchors(space)))
        if inside not in cidr:
            inside = cidr.network_address + draw(st.integers(0, min(cidr.num_addresses - 1, 300)))
        e = ipaddress.ip_network(f"{inside}/{draw(st.sampled_from(longer))}", strict=False)
        if str(e) not in excepts:
            excepts.append(str(e))
    return {"cidr": str(cidr), "except": excepts}


@st.composite
def np_peers(draw: st.DrawFn, space: Space) -> dict[str, Any]:
    kind = draw(st.sampled_from(("pod", "ns", "both", "ip")))
    if kind == "ip":
        return {"ipBlock": draw(ip_blocks(space))}
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(selectors())
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(ns_selectors())
    return peer


@st.composite
def np_ports(draw: st.DrawFn) -> dict[str, Any]:
    port: dict[str, Any] = {}
    if draw(st.booleans()):
        port["protocol"] = draw(st.sampled_from(PROTOS))
    kind = draw(st.sampled_from(("none", "num", "range", "name")))
    if kind == "num":
        port["port"] = draw(st.sampled_from(RULE_PORTS))
    elif kind == "range":
        port["port"] = draw(st.sampled_from(RULE_PORTS))
        port["endPort"] = port["port"] + draw(st.integers(0, 40))
    elif kind == "name":
        port["port"] = draw(st.sampled_from(PORT_NAMES))
    return port


@st.composite
def np_rules(draw: st.DrawFn, peers_key: str, space: Space) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule[peers_key] = draw(st.lists(np_peers(space), max_size=2))
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(np_ports(), max_size=2))
    return rule


@st.composite
def network_policies(draw: st.DrawFn, i: int, space: Space) -> policy.NetworkPolicy:
    spec: dict[str, Any] = {"podSelector": draw(selectors())}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(np_rules("from", space), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(np_rules("to", space), max_size=2))
    if draw(st.booleans()):
        spec["policyTypes"] = draw(
            st.sampled_from((["Ingress"], ["Egress"], ["Ingress", "Egress"]))
        )
    meta = {"name": f"np{i}", "namespace": draw(st.sampled_from(NSS))}
    return policy.NetworkPolicy.from_dict({"metadata": meta, "spec": spec})


@st.composite
def admin_peers(draw: st.DrawFn, egress: bool, space: Space) -> dict[str, Any]:
    kinds = ("namespaces", "pods", "networks") if egress else ("namespaces", "pods")
    kind = draw(st.sampled_from(kinds))
    if kind == "namespaces":
        return {"namespaces": draw(ns_selectors())}
    if kind == "pods":
        return {
            "pods": {"namespaceSelector": draw(ns_selectors()), "podSelector": draw(selectors())}
        }
    nets = draw(st.lists(prefixes(space), min_size=1, max_size=2))
    return {"networks": [str(n) for n in nets]}


@st.composite
def admin_ports(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("portNumber", "portRange", "namedPort")))
    if kind == "namedPort":
        return {"namedPort": draw(st.sampled_from(PORT_NAMES))}
    proto = draw(st.sampled_from(PROTOS))
    start = draw(st.sampled_from(RULE_PORTS))
    if kind == "portNumber":
        return {"portNumber": {"protocol": proto, "port": start}}
    return {
        "portRange": {"protocol": proto, "start": start, "end": start + draw(st.integers(1, 40))}
    }


@st.composite
def admin_rules(
    draw: st.DrawFn, direction: str, actions: tuple[str, ...], space: Space
) -> dict[str, Any]:
    key = "from" if direction == "ingress" else "to"
    rule: dict[str, Any] = {
        "action": draw(st.sampled_from(actions)),
        key: draw(st.lists(admin_peers(direction == "egress", space), min_size=1, max_size=2)),
    }
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(admin_ports(), min_size=1, max_size=2))
    return rule


@st.composite
def subjects(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"namespaces": draw(ns_selectors())}
    return {"pods": {"namespaceSelector": draw(ns_selectors()), "podSelector": draw(selectors())}}


def admin_spec(draw: st.DrawFn, actions: tuple[str, ...], space: Space) -> dict[str, Any]:
    return {
        "subject": draw(subjects()),
        "ingress": draw(st.lists(admin_rules("ingress", actions, space), max_size=3)),
        "egress": draw(st.lists(admin_rules("egress", actions, space), max_size=3)),
    }


@st.composite
def admin_policies(draw: st.DrawFn, i: int, space: Space) -> policy.AdminNetworkPolicy:
    spec = {
        "priority": draw(st.integers(0, 3)),
        **admin_spec(draw, ("Allow", "Deny", "Pass"), space),
    }
    return policy.AdminNetworkPolicy.from_dict({"metadata": {"name": f"anp{i}"}, "spec": spec})


@st.composite
def baselines(draw: st.DrawFn, space: Space) -> policy.BaselineAdminNetworkPolicy:
    spec = admin_spec(draw, ("Allow", "Deny"), space)
    return policy.BaselineAdminNetworkPolicy.from_dict(
        {"metadata": {"name": "default"}, "spec": spec}
    )


@st.composite
def worlds(draw: st.DrawFn, family: int) -> policy.World:
    hosts = draw(
        st.lists(st.tuples(st.integers(1, 3), st.integers(2, 40)), min_size=2, max_size=5,
                 unique=True)
    )  # fmt: skip
    endpoints = []
    for subnet, host in hosts:
        named = draw(
            st.dictionaries(
                st.sampled_from(PORT_NAMES),
                st.tuples(st.sampled_from(RULE_PORTS), st.sampled_from(PROTOS)),
                max_size=2,
            )
        )
        endpoints.append(
            policy.Endpoint(
                ip=address(family, subnet, host),
                namespace=draw(st.sampled_from(NSS)),
                labels=draw(label_sets),
                named_ports=named,
            )
        )
    return policy.World(
        namespaces={n: draw(label_sets) for n in NSS},
        endpoints=endpoints,
        node_addresses={NODE[family]},
    )


@dataclass(frozen=True)
class Conn:
    """A connection: endpoint indexes, protocol, ports (ICMP: the echo id in sport)."""

    src: int
    dst: int
    proto: str
    sport: int
    dport: int


@dataclass(frozen=True)
class Scenario:
    world: policy.World
    nps: list[policy.NetworkPolicy]
    anps: list[policy.AdminNetworkPolicy]
    baseline: policy.BaselineAdminNetworkPolicy | None
    conns: list[Conn]


@st.composite
def conns(draw: st.DrawFn, n: int) -> Conn:
    src = draw(st.integers(0, n - 1))
    dst = draw(st.integers(0, n - 2))
    dst += dst >= src
    proto = draw(st.sampled_from(("TCP", "UDP", "SCTP", "ICMP")))
    if proto == "ICMP":
        return Conn(src, dst, proto, draw(st.integers(1, 65535)), 0)
    return Conn(
        src, dst, proto, draw(st.sampled_from(PACKET_PORTS)), draw(st.sampled_from(PACKET_PORTS))
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    family = draw(st.sampled_from((4, 4, 6)))
    w = draw(worlds(family))
    space = Space(family, tuple(ep.ip for ep in w.endpoints))
    nps = [draw(network_policies(i, space)) for i in range(draw(st.integers(0, 4)))]
    anps = [draw(admin_policies(i, space)) for i in range(draw(st.integers(0, 3)))]
    base = draw(st.one_of(st.none(), baselines(space)))
    cs = draw(st.lists(conns(len(w.endpoints)), min_size=1, max_size=8))
    return Scenario(w, nps, anps, base, cs)


# -- frames ---------------------------------------------------------------------


def frame(src: FakePort, dst: FakePort, sip: str, dip: str, c: Conn, *, reply: bool) -> bytes:
    """The connection's first packet (reply False) or the other end's answer
    (reply True: src/dst and ports already swapped by the caller)."""
    v6 = ":" in sip
    l3: Packet = IPv6(src=sip, dst=dip) if v6 else IP(src=sip, dst=dip)
    if c.proto == "TCP":
        l4: Packet = TCP(sport=c.sport, dport=c.dport, flags="SA" if reply else "S")
    elif c.proto == "UDP":
        l4 = UDP(sport=c.sport, dport=c.dport) / Raw(b"q" * 8)
    elif c.proto == "SCTP":
        chunk = SCTPChunkInitAck() if reply else SCTPChunkInit()
        l4 = SCTP(sport=c.sport, dport=c.dport) / chunk
    elif v6:
        l4 = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=c.sport, seq=1)
    else:
        l4 = ICMP(type=0 if reply else 8, id=c.sport, seq=1)
    return bytes(Ether(src=src.mac, dst=dst.mac) / l3 / l4)


def reverse(c: Conn) -> Conn:
    if c.proto == "ICMP":
        return Conn(c.dst, c.src, c.proto, c.sport, 0)
    return Conn(c.dst, c.src, c.proto, c.dport, c.sport)


# -- the engine -----------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[FakeTransportEngine]:
    with fake_transport_engine(ENCAP_VXLAN) as eng:
        eng.network_add(VNI)
        yield eng


_macs = itertools.count(1)


def _drops(eng: FakeTransportEngine) -> dict[str, int]:
    c = eng.counters()
    return {k: c[k] for k in DROP_REASONS}


def send_and_observe(
    eng: FakeTransportEngine, src: FakePort, dst: FakePort, f: bytes
) -> tuple[bool, dict[str, int]]:
    """Send f from src; wait (bounded) for it to be delivered to dst or for a
    drop to be counted. (delivered, drop reasons counted meanwhile)."""
    before = _drops(eng)
    src.send(f)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if select.select([dst.pod], [], [], 0.0005)[0]:
            got = dst.pod.recv(70000)
            assert got == f, "the frame was delivered altered"
            return True, {}
        now = _drops(eng)
        if now != before:
            return False, {k: now[k] - before[k] for k in now if now[k] != before[k]}
    raise AssertionError("the frame was neither delivered nor counted as a drop in 10 s")


def hits(eng: FakeTransportEngine, port: FakePort, direction: str) -> dict[int, int]:
    return eng.port_policy_hits(port.id, direction)


def decided(before: dict[int, int], after: dict[int, int], table: EngineTable) -> Meaning | None:
    """The meaning of the one rule whose hit count grew (None: no table, no count)."""
    grew = [i for i in after if after[i] != before.get(i, 0)]
    if not grew:
        return None
    assert len(grew) == 1, grew
    return table.meaning[grew[0]]


def expect(d: policy.Decision | None) -> Meaning | None:
    return None if d is None else (d.tier, d.policy, d.rule)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_engine_decides_every_connection_as_evaluate_does(
    engine: FakeTransportEngine, scenario: Scenario
) -> None:
    w = scenario.world
    args = (w, scenario.nps, scenario.anps, scenario.baseline)
    ports: list[FakePort] = []
    try:
        tables: dict[tuple[int, str], EngineTable] = {}
        compiled = policy.compile_ports(*args)
        for i, ep in enumerate(w.endpoints):
            n = next(_macs)
            mac = f"02:00:{n >> 16 & 0xFF:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}:01"
            p = FakePort(engine, VNI, mac, (ep.ip,))
            ports.append(p)
            for d in ("ingress", "egress"):
                t = engine_rules(compiled[ep.ip, d])
                tables[i, d] = t
                if not t.empty:
                    engine.port_policy_set(p.id, d, t.rules, isolated=t.isolated)
        seen: set[tuple[object, ...]] = set()
        for c in scenario.conns:
            # each connection's tuple once (either way round), so no earlier
            # session decides a later packet
            key = (c.proto, *sorted(((c.src, c.sport), (c.dst, c.dport))))
            if key in seen:
                continue
            seen.add(key)
            check_connection(engine, w, args, ports, tables, c)
    finally:
        for p in ports:
            engine.port_del(p.id)
            p.close()


def check_connection(
    eng: FakeTransportEngine,
    w: policy.World,
    args: tuple[Any, ...],
    ports: list[FakePort],
    tables: dict[tuple[int, str], EngineTable],
    c: Conn,
) -> None:
    eps = w.endpoints
    sip, dip = eps[c.src].ip, eps[c.dst].ip
    src, dst = ports[c.src], ports[c.dst]
    proto = ("ICMPv6" if ":" in sip else "ICMP") if c.proto == "ICMP" else c.proto
    v = policy.evaluate(*args, src=sip, dst=dip, port=c.dport, protocol=proto)
    where = f"{c} {sip} -> {dip}: {v}"
    event(
        f"IPv{4 + 2 * (':' in sip)} {c.proto}: {'allowed' if v.allowed else 'denied'} by {v.tier}"
    )

    eg0, ig0 = hits(eng, src, "egress"), hits(eng, dst, "ingress")
    delivered, drops = send_and_observe(eng, src, dst, frame(src, dst, sip, dip, c, reply=False))
    assert delivered == v.allowed, where
    if not v.allowed:
        assert drops == {f"policy_denied_{v.direction}": 1}, where
    # who decided, per direction (a port without a table counts nothing: its
    # decision must be the default)
    eg = decided(eg0, hits(eng, src, "egress"), tables[c.src, "egress"])
    assert eg == expect(v.egress) or (eg is None and v.egress and v.egress.tier == "default"), where
    if v.egress is not None and v.egress.allowed:
        ig = decided(ig0, hits(eng, dst, "ingress"), tables[c.dst, "ingress"])
        assert ig == expect(v.ingress) or (
            ig is None and v.ingress and v.ingress.tier == "default"
        ), where

    # the other end answers
    r = reverse(c)
    answer = frame(dst, src, dip, sip, r, reply=True)
    back, drops = send_and_observe(eng, dst, src, answer)
    if v.allowed:
        assert back, f"the reply of an allowed connection was refused ({drops}): {where}"
        return
    rv = policy.evaluate(*args, src=dip, dst=sip, port=r.dport, protocol=proto)
    assert rv.egress is not None and rv.ingress is not None
    if v.direction == "egress" or not rv.egress.allowed:
        # refused before it left the source: nothing was tracked, so the
        # answer is a connection of its own
        assert back == rv.allowed, f"unsolicited {r}: {rv} (first packet: {where})"
        if not rv.allowed:
            assert drops == {f"policy_denied_{rv.direction}": 1}, where
        return
    # Refused by the destination's ingress after the source's egress let it
    # go: the source tracked its attempt (as it does when the destination is
    # on another node), so an answer on that tuple is a reply at the source.
    tracks = not (tables[c.src, "ingress"].empty and tables[c.src, "egress"].empty)
    assert back == (tracks or rv.ingress.allowed), f"answer {r}: {rv} (first packet: {where})"
