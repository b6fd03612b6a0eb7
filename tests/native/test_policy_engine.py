"""Network policy in the engine: compiled tables per port and direction, and
connection tracking, on the in-memory transport.

The real data plane runs (workers, encap and deliver stages, tables,
sessions, counters, events); pods are socket pairs (FakePort) and the remote
pod B sits behind the member VTEP PEER, so a frame A sends is either a
datagram to PEER or a counted drop, and a datagram injected from PEER is
either delivered to A or a counted drop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from overlay import wire
from overlay.bindings import (
    ENCAP_VXLAN,
    RULE_ISOLATION,
    RULE_PENDING,
    PeerBlock,
    PolicyRule,
    PortRange,
    mac_bytes,
)
from overlay.bindings.tools import FakeTransportEngine
from overlay.errors import ConfigError
from overlay.testing.fakes import FakePort, fake_transport_engine
from overlay.testing.traffic import wait_for

MAC_A, MAC_B, MAC_C = "02:00:00:00:01:02", "02:00:00:00:02:02", "02:00:00:00:01:03"
IP_A, IP_B, IP_C = "10.244.1.2", "10.244.2.2", "10.244.1.4"
PEER = ipaddress.ip_address("198.18.0.2")
VNI = 100


def tcp(
    src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, flags: str
) -> bytes:
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
                 / TCP(sport=sport, dport=dport, flags=flags))  # fmt: skip


def udp(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
                 / UDP(sport=sport, dport=dport) / Raw(b"x" * 16))  # fmt: skip


def from_b(eng: FakeTransportEngine, frame: bytes) -> None:
    eng.inject(wire.encode(ENCAP_VXLAN, wire.Tunnel(VNI)) + frame, PEER, eng.udp_port)


def sent_to_b(eng: FakeTransportEngine, n: int = 1) -> list[bytes]:
    """The inner frames of the next n datagrams to PEER."""
    got: list[bytes] = []
    wait_for(lambda: len(got.extend(d.data[8:] for d in eng.sent()) or got) >= n)  # type: ignore[func-returns-value]
    assert len(got) == n, got
    return got


def counter(eng: FakeTransportEngine, name: str, want: int) -> bool:
    return wait_for(lambda: eng.counters()[name] == want)


@contextlib.contextmanager
def engine(**options: object) -> Iterator[FakeTransportEngine]:
    with fake_transport_engine(ENCAP_VXLAN, **options) as eng:
        eng.network_add(VNI)
        eng.vtep_add(VNI, PEER)
        eng.fdb_add(VNI, mac_bytes(MAC_B), PEER)
        eng.neigh_add(VNI, ipaddress.ip_address(IP_B), mac_bytes(MAC_B))
        yield eng


@pytest.fixture
def node() -> Iterator[FakeTransportEngine]:
    with engine() as eng:
        yield eng


def allow(rule_id: int, peer: str | PeerBlock | None, proto: str, port: int) -> PolicyRule:
    peers = () if peer is None else (peer,)
    return PolicyRule(id=rule_id, peers=peers, ports=(PortRange(proto, port, port),))


def test_egress_allows_what_a_rule_allows_and_drops_the_rest(node: FakeTransportEngine) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    node.port_policy_set(a.id, "egress", [allow(7, f"{IP_B}/32", "tcp", 80)], isolated=True)
    syn = tcp(MAC_A, MAC_B, IP_A, IP_B, 40000, 80, "S")
    a.send(syn)
    assert sent_to_b(node) == [syn]
    a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, 40001, 81, "S"))
    a.send(udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 80))
    assert counter(node, "policy_denied_egress", 2)
    assert node.sent() == []
    assert node.port_counters(a.id)["drops"] == 2
    hits = node.port_policy_hits(a.id, "egress")
    assert hits[7] == 1 and hits[RULE_ISOLATION] == 2


def test_replies_pass_an_isolated_ingress_and_unsolicited_packets_do_not(
    node: FakeTransportEngine,
) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    node.port_policy_set(a.id, "ingress", [], isolated=True)
    a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, 40000, 80, "S"))
    sent_to_b(node)
    synack = tcp(MAC_B, MAC_A, IP_B, IP_A, 80, 40000, "SA")
    from_b(node, synack)
    assert a.recv() == synack
    a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, 40000, 80, "A"))
    sent_to_b(node)
    data = tcp(MAC_B, MAC_A, IP_B, IP_A, 80, 40000, "PA")
    from_b(node, data)
    assert a.recv() == data
    # B opening a connection of its own, or A's peer port answering from elsewhere
    from_b(node, tcp(MAC_B, MAC_A, IP_B, IP_A, 5555, 22, "S"))
    from_b(node, tcp(MAC_B, MAC_A, IP_B, IP_A, 81, 40000, "SA"))
    assert counter(node, "policy_denied_ingress", 2)
    assert a.drain(0.1) == []
    assert node.conntrack_sessions() == 1


def test_icmp_echo_replies_and_errors_about_a_connection_pass(node: FakeTransportEngine) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    node.port_policy_set(a.id, "ingress", [], isolated=True)
    ping = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=IP_A, dst=IP_B) / ICMP(id=9, seq=1))
    a.send(ping)
    sent_to_b(node)
    pong = bytes(Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A) / ICMP(type=0, id=9, seq=1))
    from_b(node, pong)
    assert a.recv() == pong
    a.send(udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 53))
    (quoted,) = sent_to_b(node)
    unreachable = bytes(
        Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A) / ICMP(type=3, code=3)
        / quoted[14:14 + 28]
    )  # fmt: skip
    from_b(node, unreachable)
    assert a.recv() == unreachable
    stray = bytes(Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A) / ICMP(type=0, id=10))
    from_b(node, stray)
    assert counter(node, "policy_denied_ingress", 1)


def test_a_new_deny_cuts_an_established_connection(node: FakeTransportEngine) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    node.port_policy_set(a.id, "ingress", [], isolated=True)
    node.port_policy_set(a.id, "egress", [allow(1, f"{IP_B}/32", "udp", 53)], isolated=True)
    query = udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 53)
    answer = udp(MAC_B, MAC_A, IP_B, IP_A, 53, 4000)
    a.send(query)
    sent_to_b(node)
    from_b(node, answer)
    assert a.recv() == answer
    # the rule goes: the session's next packet, either way, meets the new table;
    # the reply is refused by the egress policy that no longer allows its connection
    node.port_policy_set(a.id, "egress", [allow(2, f"{IP_B}/32", "udp", 54)], isolated=True)
    from_b(node, answer)
    assert counter(node, "policy_denied_egress", 1)
    a.send(query)
    assert counter(node, "policy_denied_egress", 2)
    assert node.counters()["policy_denied_ingress"] == 0
    assert a.drain(0.1) == [] and node.sent() == []
    assert node.conntrack_sessions() == 0
    # allowed again: the connection opens anew
    node.port_policy_set(a.id, "egress", [allow(1, f"{IP_B}/32", "udp", 53)], isolated=True)
    a.send(query)
    assert sent_to_b(node) == [query]


def test_same_node_traffic_meets_both_ports_policies(node: FakeTransportEngine) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    c = FakePort(node, VNI, MAC_C, (IP_C,))
    node.port_policy_set(c.id, "ingress", [allow(3, f"{IP_A}/32", "tcp", 80)], isolated=True)
    node.port_policy_set(a.id, "ingress", [], isolated=True)
    syn = tcp(MAC_A, MAC_C, IP_A, IP_C, 40000, 80, "S")
    a.send(syn)
    assert c.recv() == syn
    synack = tcp(MAC_C, MAC_A, IP_C, IP_A, 80, 40000, "SA")
    c.send(synack)
    assert a.recv() == synack  # a reply through A's isolated ingress
    a.send(tcp(MAC_A, MAC_C, IP_A, IP_C, 40001, 22, "S"))
    assert counter(node, "policy_denied_ingress", 1)
    assert c.drain(0.1) == []
    assert node.port_counters(c.id)["drops"] == 1


def test_admin_deny_beats_an_allow_and_pass_hands_over_to_networkpolicy(
    node: FakeTransportEngine,
) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    rules = [
        PolicyRule(
            id=10,
            tier="admin",
            action="pass",
            peers=(f"{IP_B}/32",),
            ports=(PortRange("udp", 53, 53),),
        ),  # fmt: skip
        PolicyRule(
            id=11,
            tier="admin",
            action="deny",
            peers=(PeerBlock("10.244.0.0/16", ("10.244.3.0/24",)),),
        ),  # fmt: skip
        allow(12, None, "udp", 53),
        PolicyRule(id=13, tier="baseline", action="allow"),
    ]
    node.port_policy_set(a.id, "egress", rules, isolated=True)
    ok = udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 53)
    a.send(ok)  # passed by 10, allowed by 12
    assert sent_to_b(node) == [ok]
    a.send(udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 54))  # denied by 11
    assert counter(node, "policy_denied_egress", 1)
    hits = node.port_policy_hits(a.id, "egress")
    assert (hits[12], hits[11], hits[13]) == (1, 1, 0)


def test_audit_counts_a_would_be_drop_and_forwards_it(node: FakeTransportEngine) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    rule = PolicyRule(id=5, tier="admin", action="deny", peers=(f"{IP_B}/32",), audit=True)
    node.port_policy_set(a.id, "egress", [rule])
    f = udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 9)
    a.send(f)
    assert sent_to_b(node) == [f]
    assert counter(node, "policy_audit", 1)
    assert node.counters()["policy_denied_egress"] == 0
    (ev,) = [e for e in node.events() if e.kind == "policy"]
    assert ev.policy is not None and ev.policy.verdict == "audit" and ev.policy.rule_id == 5
    # a whole table in audit mode
    node.port_policy_set(a.id, "egress", [], isolated=True, audit=True)
    g = udp(MAC_A, MAC_B, IP_A, IP_B, 4001, 10)
    a.send(g)
    assert sent_to_b(node) == [g]
    assert counter(node, "policy_audit", 2)


def test_a_deny_is_reported_with_its_rule_and_5_tuple_once_a_second(
    node: FakeTransportEngine,
) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    rule = PolicyRule(id=42, tier="admin", action="deny", ports=(PortRange("tcp", 22, 22),))
    node.port_policy_set(a.id, "egress", [rule])
    for sport in (1000, 1001, 1002):
        a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, sport, 22, "S"))
    assert counter(node, "policy_denied_egress", 3)
    evs = [e for e in node.events() if e.kind == "policy"]
    assert len(evs) == 1  # rate-limited per (port, direction, rule, verdict)
    (ev,) = evs
    assert ev.port_id == a.id and ev.vni == VNI and ev.mac == MAC_A
    assert ev.policy is not None
    p = ev.policy
    assert (p.verdict, p.direction, p.rule_id, p.proto) == ("deny", "egress", 42, 6)
    assert (p.src, p.dst, p.sport, p.dport) == (IP_A, IP_B, 1000, 22)


def test_a_port_is_isolated_until_its_policy_is_set(node: FakeTransportEngine) -> None:
    pod, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = node.port_add_fd(VNI, theirs.detach(), mac_bytes(MAC_A), policy_pending=True)
        node.port_add_ip(pid, ipaddress.ip_address(IP_A))
        f = udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 53)
        pod.send(f)
        assert counter(node, "policy_denied_egress", 1)
        from_b(node, udp(MAC_B, MAC_A, IP_B, IP_A, 53, 4000))
        assert counter(node, "policy_denied_ingress", 1)
        # ARP is not policy's: answered from the neighbour table
        pod.send(bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
                       / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst=IP_B)))  # fmt: skip
        pod.settimeout(2)
        assert Ether(pod.recv(2000))[ARP].psrc == IP_B
        (ev,) = [e for e in node.events() if e.kind == "policy" and e.policy.direction == "egress"]  # type: ignore[union-attr]
        assert ev.policy is not None and ev.policy.rule_id == RULE_PENDING
        node.port_policy_set(pid, "egress")  # no policy: open
        pod.send(f)
        assert sent_to_b(node) == [f]
    finally:
        pod.close()


def test_an_unsolicited_tcp_flag_combination_is_invalid(node: FakeTransportEngine) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    node.port_policy_set(a.id, "egress", [PolicyRule(id=1, tier="baseline", action="allow")])
    a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, 40000, 80, "SF"))
    assert counter(node, "conntrack_invalid", 1)
    assert node.sent() == []


def test_many_rules_classify_as_a_few(node: FakeTransportEngine) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    rules = [allow(i, f"10.244.{i // 250 + 10}.{i % 250 + 1}/32", "tcp", 1000 + i % 3000)
             for i in range(10_000)]  # fmt: skip
    rules.append(allow(99_999, f"{IP_B}/32", "udp", 53))
    node.port_policy_set(a.id, "egress", rules, isolated=True)
    f = udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 53)
    a.send(f)
    assert sent_to_b(node) == [f]
    a.send(udp(MAC_A, MAC_B, IP_A, IP_B, 4000, 54))
    assert counter(node, "policy_denied_egress", 1)
    assert node.port_policy_hits(a.id, "egress")[99_999] == 1


def answered_udp_flows(eng: FakeTransportEngine, a: FakePort, count: int) -> int:
    """A sends count UDP queries to B:53 and B answers each one that left
    (the others are refused: conntrack_full). Returns how many left."""
    left = 0
    for n in range(count):
        sport = 4000 + n
        full = eng.counters()["conntrack_full"]
        a.send(udp(MAC_A, MAC_B, IP_A, IP_B, sport, 53))
        out: list[object] = []
        assert wait_for(
            lambda: bool(out.extend(eng.sent()) or out) or eng.counters()["conntrack_full"] > full  # noqa: B023
        )
        if out:
            answer = udp(MAC_B, MAC_A, IP_B, IP_A, 53, sport)
            from_b(eng, answer)
            assert a.recv() == answer
            left += 1
    return left


def test_conntrack_capacity_is_the_engines_conntrack_sessions() -> None:
    # 8 sessions: one bucket; its 8 answered flows are kept, a ninth is refused
    with engine(conntrack_sessions=8) as eng:
        a = FakePort(eng, VNI, MAC_A, (IP_A,))
        eng.port_policy_set(a.id, "egress", [allow(1, f"{IP_B}/32", "udp", 53)], isolated=True)
        assert answered_udp_flows(eng, a, 9) == 8
        assert eng.counters()["conntrack_full"] == 1
        assert eng.conntrack_sessions() == 8
    with engine() as eng:  # the default (65,536) holds them all
        a = FakePort(eng, VNI, MAC_A, (IP_A,))
        eng.port_policy_set(a.id, "egress", [allow(1, f"{IP_B}/32", "udp", 53)], isolated=True)
        assert answered_udp_flows(eng, a, 9) == 9
        assert eng.conntrack_sessions() == 9 and eng.counters()["conntrack_full"] == 0


@pytest.mark.parametrize("bad", [0, 7, 4_194_305, "65536", True])
def test_conntrack_sessions_out_of_bounds_is_refused_by_name(bad: object) -> None:
    with (
        pytest.raises(ConfigError, match="conntrack_sessions.*8-4194304"),
        engine(conntrack_sessions=bad),
    ):
        pass


@pytest.mark.parametrize("close", ["R", "FA"])
def test_closed_connections_give_their_sessions_to_new_ones(close: str) -> None:
    """A burst of short connections through a table of one bucket: each one
    closed (RST, or FIN from both ends) is evicted for the next SYN, so no
    SYN is refused (before, closed sessions counted as answered and filled
    the bucket: conntrack_full from the ninth on)."""
    with engine(conntrack_sessions=8) as eng:
        a = FakePort(eng, VNI, MAC_A, (IP_A,))
        eng.port_policy_set(a.id, "egress", [allow(1, f"{IP_B}/32", "tcp", 80)], isolated=True)
        for n in range(40):
            sport = 40000 + n
            syn = tcp(MAC_A, MAC_B, IP_A, IP_B, sport, 80, "S")
            a.send(syn)
            assert sent_to_b(eng) == [syn], f"connection {n}"
            from_b(eng, tcp(MAC_B, MAC_A, IP_B, IP_A, 80, sport, "SA"))
            a.recv()
            a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, sport, 80, "A"))
            sent_to_b(eng)
            a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, sport, 80, close))
            sent_to_b(eng)
            if close == "FA":
                from_b(eng, tcp(MAC_B, MAC_A, IP_B, IP_A, 80, sport, "FA"))
                a.recv()
        assert eng.counters()["conntrack_full"] == 0
        assert eng.conntrack_sessions() == 8
        # answered, open connections are never evicted: with the bucket full of
        # them, a new SYN is refused
        for n in range(8):
            sport = 50000 + n
            a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, sport, 80, "S"))
            sent_to_b(eng)
            from_b(eng, tcp(MAC_B, MAC_A, IP_B, IP_A, 80, sport, "SA"))
            a.recv()
        a.send(tcp(MAC_A, MAC_B, IP_A, IP_B, 50100, 80, "S"))
        assert counter(eng, "conntrack_full", 1)


@pytest.mark.parametrize(
    ("rules", "isolated", "field"),
    [
        ([PolicyRule(id=1, peers=("10.244.0.0/33",))], True, "rules[0].peers[0]"),
        ([PolicyRule(id=1, peers=(PeerBlock("10.244.0.0/16", ("10.245.0.0/24",)),))], True,
         "rules[0].peers[0].except[0]"),
        ([PolicyRule(id=1, action="deny")], True, "rules[0].action"),
        ([PolicyRule(id=1, tier="baseline"), PolicyRule(id=2, tier="admin")], False,
         "rules[1].tier"),
        ([PolicyRule(id=1, ports=(PortRange("icmp", 0, 0),))], True, "rules[0].ports[0].protocol"),
        ([PolicyRule(id=1, ports=(PortRange("tcp", 90, 80),))], True, "rules[0].ports[0]"),
        ([PolicyRule(id=-1)], True, "rules[0].id"),
        ([PolicyRule(id=1)], False, "isolated"),
    ],
)  # fmt: skip
def test_bad_rules_name_the_field(
    node: FakeTransportEngine, rules: list[PolicyRule], isolated: bool, field: str
) -> None:
    a = FakePort(node, VNI, MAC_A, (IP_A,))
    with pytest.raises(ConfigError) as err:
        node.port_policy_set(a.id, "egress", rules, isolated=isolated)
    assert err.value.field == field
    with pytest.raises(ConfigError, match="direction"):
        node.port_policy_set(a.id, "sideways", [])
