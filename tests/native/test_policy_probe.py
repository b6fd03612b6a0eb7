"""The dry-run probe of the tables in force, and counting conntrack evictions.

``Engine.port_policy_probe`` (``ovl_port_policy_probe``) classifies a would-be
first packet against a port's table in force as the policy stage would, and
changes nothing: no session, hit counter, counter or event. ``Network.probe``
asks it at both ends of a connection, so a verifier can compare what the data
plane holds with what the policies say (``Network.explain``) without sending
a packet to a pod.

Two beds. The in-memory transport (``fake_transport_engine``: the real
workers, stages, tables and sessions, pods as socket pairs) checks the probe
against real first packets, its dry run, pending ports and its refusals, and
counts evictions exactly. Real nodes (root: a namespace per node, TAPs) check
``Network.probe`` against ``Network.explain`` over a matrix of connections
under each kind of policy, that a table changed behind the policies' back
makes them disagree, and that ``conntrack_evicted`` reaches
``Node.counters()``.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from overlay import Encap, Node, wire
from overlay.bindings import (
    ENCAP_VXLAN,
    RULE_DEFAULT,
    RULE_ISOLATION,
    RULE_PENDING,
    PolicyRule,
    PortRange,
    mac_bytes,
)
from overlay.bindings.policy import encode_rules
from overlay.bindings.tools import FakeTransportEngine
from overlay.errors import ConfigError, NotFoundError
from overlay.node import Network, Port, Probed
from overlay.policy.engine import RuleRef
from overlay.policy.evaluate import Decision
from overlay.testing.fakes import FakePort, fake_transport_engine
from overlay.testing.netns import Netns, Topology, underlay_ip
from overlay.testing.traffic import wait_for

VNI = 100

# ---- the in-memory transport --------------------------------------------------

MAC_A, MAC_B = "02:00:00:00:01:02", "02:00:00:00:02:02"
IP_A, IP_B = "10.244.1.2", "10.244.2.2"
PEER = ipaddress.ip_address("198.18.0.2")


@contextlib.contextmanager
def engine(**options: object) -> Iterator[FakeTransportEngine]:
    with fake_transport_engine(ENCAP_VXLAN, **options) as eng:
        eng.network_add(VNI)
        eng.vtep_add(VNI, PEER)
        eng.fdb_add(VNI, mac_bytes(MAC_B), PEER)
        eng.neigh_add(VNI, ipaddress.ip_address(IP_B), mac_bytes(MAC_B))
        yield eng


@pytest.fixture
def fake() -> Iterator[FakeTransportEngine]:
    with engine() as eng:
        yield eng


def first_packet(dst: str, protocol: str, port: int, sport: int) -> bytes:
    """A's opening packet of a connection to dst (through B's MAC)."""
    l3 = Ether(src=MAC_A, dst=MAC_B) / IP(src=IP_A, dst=dst)
    if protocol == "TCP":
        return bytes(l3 / TCP(sport=sport, dport=port, flags="S"))
    if protocol == "UDP":
        return bytes(l3 / UDP(sport=sport, dport=port) / Raw(b"x" * 16))
    return bytes(l3 / ICMP(id=sport, seq=1))


def from_b(eng: FakeTransportEngine, frame: bytes) -> None:
    eng.inject(wire.encode(ENCAP_VXLAN, wire.Tunnel(VNI)) + frame, PEER, eng.udp_port)


def policy_state(eng: FakeTransportEngine, port_ids: list[int]) -> dict[str, Any]:
    """Everything a probe must leave as it is: hit counters, sessions, node
    counters (less the workers' wake-ups, which idle time moves)."""
    dirs = ("ingress", "egress")
    return {
        "hits": {(p, d): eng.port_policy_hits(p, d) for p in port_ids for d in dirs},
        "sessions": eng.conntrack_sessions(),
        "counters": {k: v for k, v in eng.counters().items() if k != "wakeups"},
        "ports": {p: eng.port_counters(p) for p in port_ids},
    }


# A's egress table: an audited deny, a deny, an allow; isolated.
EGRESS = [
    PolicyRule(id=5, tier="admin", action="deny", peers=("10.244.9.0/24",), audit=True),
    PolicyRule(id=6, tier="admin", action="deny", ports=(PortRange("tcp", 22, 22),)),
    PolicyRule(id=7, peers=(f"{IP_B}/32",), ports=(PortRange("tcp", 80, 80),)),
    PolicyRule(id=8, peers=(f"{IP_B}/32",)),  # anything else to B
]
# (peer, protocol, port) -> (verdict, rule id) by that table
CASES = [
    (IP_B, "TCP", 80, "allow", 7),
    (IP_B, "TCP", 22, "deny", 6),
    (IP_B, "UDP", 53, "allow", 8),
    (IP_B, "ICMP", 0, "allow", 8),
    ("10.244.9.1", "UDP", 53, "audit", 5),
    ("10.244.3.3", "TCP", 80, "deny", RULE_ISOLATION),
    ("10.244.3.3", "ICMP", 0, "deny", RULE_ISOLATION),
]


def test_probe_gives_the_verdict_and_rule_the_first_packet_meets(
    fake: FakeTransportEngine,
) -> None:
    a = FakePort(fake, VNI, MAC_A, (IP_A,))
    fake.port_policy_set(a.id, "egress", EGRESS, isolated=True)
    for peer, proto, port, verdict, rid in CASES:
        got = fake.port_policy_probe(a.id, "egress", peer, proto.lower(), port)
        assert got == (verdict, rid), (peer, proto, port)
    # the stage agrees, packet by packet: forwarded (allow, audit) or dropped
    # (deny), and counted against the rule the probe named
    for n, (peer, proto, port, verdict, _) in enumerate(CASES):
        drops = fake.counters()["policy_denied_egress"]
        a.send(first_packet(peer, proto, port, 40000 + n))
        if verdict == "deny":
            assert wait_for(lambda: fake.counters()["policy_denied_egress"] == drops + 1)  # noqa: B023
        else:
            assert wait_for(lambda: len(fake.sent()) == 1), (peer, proto, port)
    assert fake.counters()["policy_audit"] == 1
    want = collections.Counter(rid for *_, rid in CASES)
    hits = fake.port_policy_hits(a.id, "egress")
    assert {k: v for k, v in hits.items() if v} == dict(want)
    # no table in the other direction: no policy there
    assert fake.port_policy_probe(a.id, "ingress", IP_B, "TCP", 80) == ("none", RULE_DEFAULT)


def test_probe_classifies_ipv6_peers_and_audit_tables(fake: FakeTransportEngine) -> None:
    a = FakePort(fake, VNI, MAC_A, (IP_A,))
    rules = [PolicyRule(id=3, peers=("2001:db8::/64",), ports=(PortRange("udp", 53, 53),))]
    fake.port_policy_set(a.id, "ingress", rules, isolated=True)
    assert fake.port_policy_probe(a.id, "ingress", "2001:db8::7", "UDP", 53) == ("allow", 3)
    assert fake.port_policy_probe(a.id, "ingress", "2001:db8::7", "UDP", 54) == (
        "deny",
        RULE_ISOLATION,
    )
    assert fake.port_policy_probe(a.id, "ingress", "2001:db8:1::7", "ICMPv6", 0) == (
        "deny",
        RULE_ISOLATION,
    )
    # every deny of an audited table is forwarded: "audit"
    fake.port_policy_set(a.id, "ingress", rules, isolated=True, audit=True)
    assert fake.port_policy_probe(a.id, "ingress", "2001:db8::7", "UDP", 54) == (
        "audit",
        RULE_ISOLATION,
    )
    assert fake.port_policy_probe(a.id, "ingress", "2001:db8::7", "udp", 53) == ("allow", 3)


def test_probing_changes_no_hit_counter_session_counter_or_event(
    fake: FakeTransportEngine,
) -> None:
    a = FakePort(fake, VNI, MAC_A, (IP_A,))
    fake.port_policy_set(a.id, "egress", EGRESS, isolated=True)
    fake.port_policy_set(a.id, "ingress", [], isolated=True)
    # a live session, hits and a deny event to start from
    a.send(first_packet(IP_B, "UDP", 53, 4000))
    assert wait_for(lambda: len(fake.sent()) == 1)
    answer = bytes(Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A)
                   / UDP(sport=53, dport=4000) / Raw(b"y"))  # fmt: skip
    from_b(fake, answer)
    assert a.recv() == answer
    a.send(first_packet(IP_B, "TCP", 22, 4001))
    assert wait_for(lambda: fake.counters()["policy_denied_egress"] == 1)
    fake.events()
    before = policy_state(fake, [a.id])
    assert before["sessions"] == 1
    for _ in range(50):
        for peer, proto, port, *_ in CASES:
            fake.port_policy_probe(a.id, "egress", peer, proto, port)
            fake.port_policy_probe(a.id, "ingress", peer, proto, port)
        # the very tuple of the live session, and of the denied connection
        fake.port_policy_probe(a.id, "egress", IP_B, "UDP", 53)
        fake.port_policy_probe(a.id, "egress", IP_B, "TCP", 22)
    assert policy_state(fake, [a.id]) == before
    assert [e for e in fake.events() if e.kind == "policy"] == []
    # and the session still carries its replies
    from_b(fake, answer)
    assert a.recv() == answer


def test_a_pending_port_probes_deny_by_pending_until_its_direction_is_set(
    fake: FakeTransportEngine,
) -> None:
    pod, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = fake.port_add_fd(VNI, theirs.detach(), mac_bytes(MAC_A), policy_pending=True)
        fake.port_add_ip(pid, ipaddress.ip_address(IP_A))
        for d in ("ingress", "egress"):
            assert fake.port_policy_probe(pid, d, IP_B, "TCP", 80) == ("deny", RULE_PENDING)
        fake.port_policy_set(pid, "egress")  # set, to no policy
        assert fake.port_policy_probe(pid, "egress", IP_B, "TCP", 80) == ("none", RULE_DEFAULT)
        assert fake.port_policy_probe(pid, "ingress", IP_B, "TCP", 80) == ("deny", RULE_PENDING)
        # what the stage does with it: the pending direction refuses
        pod.send(first_packet(IP_B, "UDP", 53, 4000))
        assert wait_for(lambda: len(fake.sent()) == 1)
        from_b(fake, bytes(Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A)
                           / UDP(sport=5555, dport=53)))  # fmt: skip
        assert wait_for(lambda: fake.counters()["policy_denied_ingress"] == 1)
    finally:
        pod.close()


def test_a_port_that_is_gone_is_not_found(fake: FakeTransportEngine) -> None:
    a = FakePort(fake, VNI, MAC_A, (IP_A,))
    fake.port_policy_set(a.id, "egress", EGRESS, isolated=True)
    fake.port_del(a.id)
    a.close()
    with pytest.raises(NotFoundError, match=f"port {a.id}"):
        fake.port_policy_probe(a.id, "egress", IP_B, "TCP", 80)
    with pytest.raises(NotFoundError):
        fake.port_policy_probe(4096, "egress", IP_B, "TCP", 80)


@pytest.mark.parametrize(
    ("direction", "peer", "protocol", "port", "field"),
    [
        ("sideways", IP_B, "TCP", 80, "direction"),
        ("egress", "10.244.1.256", "TCP", 80, "peer"),
        ("egress", "", "TCP", 80, "peer"),
        ("egress", 167772161, "TCP", 80, "peer"),
        ("egress", IP_B, "GRE", 80, "protocol"),
        ("egress", IP_B, 6, 80, "protocol"),
        ("egress", IP_B, "TCP", -1, "port"),
        ("egress", IP_B, "TCP", 65536, "port"),
        ("egress", IP_B, "TCP", "80", "port"),
        ("egress", IP_B, "UDP", True, "port"),
    ],
)  # fmt: skip
def test_bad_probe_arguments_name_the_field(
    fake: FakeTransportEngine, direction: str, peer: Any, protocol: Any, port: Any, field: str
) -> None:
    a = FakePort(fake, VNI, MAC_A, (IP_A,))
    with pytest.raises(ConfigError) as err:
        fake.port_policy_probe(a.id, direction, peer, protocol, port)
    assert err.value.field == field


def udp_from_a(sport: int) -> bytes:
    return first_packet(IP_B, "UDP", 53, sport)


def test_evicting_a_session_for_a_new_connection_is_counted() -> None:
    # 8 sessions: one bucket. Twelve unanswered flows: the last eight are held,
    # the four oldest evicted for them (conntrack_evicted), none refused.
    with engine(conntrack_sessions=8) as eng:
        a = FakePort(eng, VNI, MAC_A, (IP_A,))
        eng.port_policy_set(a.id, "egress", [PolicyRule(id=1, peers=(f"{IP_B}/32",))],
                            isolated=True)  # fmt: skip
        assert eng.counters()["conntrack_evicted"] == 0
        for n in range(12):
            a.send(udp_from_a(4000 + n))
            assert wait_for(lambda: len(eng.sent()) == 1), n
            assert eng.counters()["conntrack_evicted"] == max(0, n - 7), n
        assert eng.conntrack_sessions() == 8 and eng.counters()["conntrack_full"] == 0
        # answered, open sessions are never evicted: a new flow is refused and
        # nothing more is counted as evicted
        for n in range(4, 12):
            answer = bytes(Ether(src=MAC_B, dst=MAC_A) / IP(src=IP_B, dst=IP_A)
                           / UDP(sport=53, dport=4000 + n) / Raw(b"y"))  # fmt: skip
            from_b(eng, answer)
            assert a.recv() == answer, n
        a.send(udp_from_a(5000))
        assert wait_for(lambda: eng.counters()["conntrack_full"] == 1)
        assert eng.counters()["conntrack_evicted"] == 4 and eng.conntrack_sessions() == 8


# ---- real nodes -----------------------------------------------------------------

NS_NAME = "kubernetes.io/metadata.name"
ANP_API = "policy.networking.k8s.io/v1alpha1"
# namespace/pod -> (MAC, address); z/a lives on another node
PODS = {
    "x/a": ("02:00:00:00:0a:02", "10.244.1.2"),
    "x/b": ("02:00:00:00:0a:03", "10.244.1.3"),
    "y/a": ("02:00:00:00:0a:04", "10.244.1.4"),
    "y/b": ("02:00:00:00:0a:05", "10.244.1.5"),
}
REMOTE = ("z/a", "02:00:00:00:0b:02", "10.244.1.9")
OUTSIDE = "192.0.2.10"  # no pod: an address outside the cluster
ENDS = [ip for _, ip in PODS.values()] + [REMOTE[2], OUTSIDE]
CONNECTIONS = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (0, "ICMP")]


def np(name: str, namespace: str, selector: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": selector, **spec},
    }


def ns_sel(name: str) -> dict[str, Any]:
    return {"matchLabels": {NS_NAME: name}}


DENY_ALL = np("deny-all", "x", {}, policyTypes=["Ingress", "Egress"])
SCENARIOS: dict[str, tuple[list[dict[str, Any]], bool]] = {
    "deny-all": ([DENY_ALL], False),
    "allow-from-label": (
        [
            np(
                "allow-b",
                "x",
                {"matchLabels": {"pod": "a"}},
                policyTypes=["Ingress"],
                ingress=[
                    {
                        "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                        "ports": [{"protocol": "TCP", "port": 80}],
                    }
                ],
            )
        ],
        False,
    ),
    "anp-deny": (
        [
            {
                "apiVersion": ANP_API,
                "kind": "AdminNetworkPolicy",
                "metadata": {"name": "deny-y-81"},
                "spec": {
                    "priority": 10,
                    "subject": {"namespaces": ns_sel("x")},
                    "ingress": [
                        {
                            "action": "Deny",
                            "from": [{"namespaces": ns_sel("y")}],
                            "ports": [{"portNumber": {"protocol": "TCP", "port": 81}}],
                        }
                    ],
                },
            }
        ],
        False,
    ),
    "baseline": (
        [
            {
                "apiVersion": ANP_API,
                "kind": "BaselineAdminNetworkPolicy",
                "metadata": {"name": "default"},
                "spec": {
                    "subject": {"namespaces": ns_sel("y")},
                    "ingress": [{"action": "Deny", "from": [{"namespaces": ns_sel("x")}]}],
                    "egress": [{"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}]}],
                },
            }
        ],
        False,
    ),
    "audit": ([DENY_ALL], True),
}


@dataclass
class Bed:
    """One node (namespace n0, underlay to n1) hosting the four pods of PODS
    and knowing REMOTE behind n1."""

    topo: Topology
    node_ns: Netns
    node: Node
    net: Network
    ports: dict[str, Port]


@contextlib.contextmanager
def real_node(topo: Topology, **options: Any) -> Iterator[Bed]:
    n0, n1 = topo.add_netns("n0"), topo.add_netns("n1")
    topo.veth(n0, n1, f"{underlay_ip(0)}/24", f"{underlay_ip(1)}/24")
    node = Node(underlay_ip(0), Encap.VXLAN, netns=n0.path, **options)
    try:
        net = node.add_network(VNI, "acme")
        net.add_vtep(underlay_ip(1))
        for ns in ("x", "y", "z"):
            net.set_namespace(ns)
        ports = {}
        for i, (pod, (mac, ip)) in enumerate(PODS.items()):
            ns, name = pod.split("/")
            ports[pod] = net.add_port(
                mac, [f"{ip}/24"], ifname=f"pp{i}", namespace=ns, labels={"pod": name}
            )
        pod, mac, ip = REMOTE
        net.add_remote(mac, underlay_ip(1), ip, namespace=pod.split("/")[0],
                       labels={"pod": pod.split("/")[1]})  # fmt: skip
        yield Bed(topo, n0, node, net, ports)
    finally:
        node.close()


@pytest.fixture
def bed(overlay_topology: Topology) -> Iterator[Bed]:
    with real_node(overlay_topology) as b:
        yield b


def expected_end(d: Decision, audit: bool) -> tuple[set[str], tuple[Any, ...]]:
    """The probe verdicts that agree with the policies' decision d, and the
    (tier, policy, rule) the probe's RuleRef must come to."""
    if d.allowed:
        # a table that allows everything is set as no policy: "none"
        verdicts = {"allow", "none"} if d.tier == "default" else {"allow"}
    else:
        verdicts = {"audit" if audit else "deny"}
    return verdicts, (d.tier, d.policy, d.rule)


def as_decision(ref: RuleRef) -> tuple[Any, ...]:
    if ref.tier == "isolation":  # the implicit deny of an isolated port
        return ("networkpolicy", ref.policy, None)
    return (ref.tier, ref.policy, ref.rule)


def agree(net: Network, src: str, dst: str, port: int, protocol: str, audit: bool) -> Probed:
    """Probe src -> dst and assert it agrees with explain at every local end."""
    want = net.explain(src, dst, port, protocol)
    got = net.probe(src, dst, port, protocol)
    local = {i.ip for p in net.ports for i in p.ips}
    where = f"{src} -> {dst}:{port}/{protocol}"
    for end, addr, decision, probed in (
        ("egress", src, want.egress, got.egress),
        ("ingress", dst, want.ingress, got.ingress),
    ):
        if ipaddress.ip_address(addr) not in local:
            assert probed is None, f"{where}: {end} of no local pod"
            continue
        assert decision is not None and probed is not None, f"{where}: {end}"
        verdicts, rule = expected_end(decision, audit)
        assert probed[0] in verdicts, f"{where}: {end} {probed} vs {decision}"
        assert as_decision(probed[1]) == rule, f"{where}: {end} {probed} vs {decision}"
    ends = [e for e in (want.egress, want.ingress) if e is not None]
    local_ends = [
        d
        for d, addr in zip((want.egress, want.ingress), (src, dst), strict=True)
        if d is not None and ipaddress.ip_address(addr) in local
    ]
    assert got.allowed == (audit or all(d.allowed for d in local_ends)), where
    if len(local_ends) == len(ends) and not audit:
        assert got.allowed == want.allowed, where
    return got


@pytest.mark.root
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_probe_agrees_with_explain(bed: Bed, scenario: str) -> None:
    policies, audit = SCENARIOS[scenario]
    bed.net.apply_policies(policies, audit=audit)
    engine_ = bed.node.engine
    pids = [p.id for p in bed.ports.values()]
    hits = {(p, d): engine_.port_policy_hits(p, d) for p in pids for d in ("ingress", "egress")}
    counters = bed.node.counters()["node"], bed.node.counters()["drops"]
    verdicts: collections.Counter[str] = collections.Counter()
    for src in ENDS:
        for dst in ENDS:
            if src == dst:
                continue
            if src not in (ip for _, ip in PODS.values()) and dst not in (
                ip for _, ip in PODS.values()
            ):
                continue  # neither end is a local pod: nothing to probe
            for port, protocol in CONNECTIONS:
                got = agree(bed.net, src, dst, port, protocol, audit)
                for end in (got.egress, got.ingress):
                    if end is not None:
                        verdicts[end[0]] += 1
    # every scenario has something to tell apart
    if scenario == "audit":
        assert verdicts["audit"] and not verdicts["deny"], verdicts
    else:
        assert verdicts["deny"] and (verdicts["allow"] or verdicts["none"]), verdicts
    assert {(p, d): engine_.port_policy_hits(p, d) for p, d in hits} == hits
    assert (bed.node.counters()["node"], bed.node.counters()["drops"]) == counters
    assert engine_.conntrack_sessions() == 0


@pytest.mark.root
def test_probe_names_the_rule_and_the_isolating_policy(bed: Bed) -> None:
    bed.net.apply_policies([SCENARIOS["allow-from-label"][0][0], DENY_ALL])
    xa, xb, ya = (PODS[p][1] for p in ("x/a", "x/b", "y/a"))
    ok = bed.net.probe(xb, xa, 80)
    # x/b's egress is isolated by deny-all, which allows nothing
    assert ok == Probed(
        False,
        ("deny", RuleRef("isolation", "x/deny-all")),
        ("allow", RuleRef("networkpolicy", "x/allow-b", 0)),
    )
    # y/a has no policy; x/a's ingress is isolated and named by the first
    # isolating policy, as explain names it
    none = ("none", RuleRef("default"))
    isolating = bed.net.explain(ya, xa, 80).policy
    assert isolating in ("x/allow-b", "x/deny-all")
    assert bed.net.probe(ya, xa, 80, "tcp") == Probed(
        False, none, ("deny", RuleRef("isolation", isolating))
    )
    assert bed.net.probe(xa, ya, 80, "udp") == Probed(
        False, ("deny", RuleRef("isolation", "x/deny-all")), none
    )
    assert bed.net.probe(OUTSIDE, ya, 0, "ICMP") == Probed(True, None, none)
    assert bed.net.probe(xa, REMOTE[2], 80) == Probed(  # z/a is another node's to judge
        False, ("deny", RuleRef("isolation", "x/deny-all")), None
    )


@pytest.mark.root
def test_a_table_changed_behind_the_policies_makes_probe_disagree(bed: Bed) -> None:
    bed.net.apply_policies([DENY_ALL])
    xa, ya = PODS["x/a"][1], PODS["y/a"][1]
    port = bed.ports["x/a"]
    none = ("none", RuleRef("default"))
    denied = Probed(False, none, ("deny", RuleRef("isolation", "x/deny-all")))
    assert not bed.net.explain(ya, xa, 80).allowed
    assert bed.net.probe(ya, xa, 80) == denied
    # someone puts an allow-everything table in force by hand
    bed.node.engine.port_policy_set(port.id, "ingress", encode_rules([]), isolated=False)
    assert bed.net.probe(ya, xa, 80) == Probed(True, none, none)
    assert not bed.net.explain(ya, xa, 80).allowed  # the policies still say no
    # a table of another rule: allowed, by an admin rule the policies never had
    bed.node.engine.port_policy_set(
        port.id, "ingress", [PolicyRule(id=4242, tier="admin", action="allow")]
    )
    got = bed.net.probe(ya, xa, 80)
    assert got.allowed and got.ingress == ("allow", RuleRef("unknown", None, 4242))
    # the policies again: they agree again
    bed.net.apply_policies([])
    bed.net.apply_policies([DENY_ALL])
    assert bed.net.probe(ya, xa, 80) == denied


@pytest.mark.root
def test_a_pending_port_probes_deny_by_pending(bed: Bed) -> None:
    port = bed.net.add_port("02:00:00:00:0a:09", ["10.244.1.20/24"], ifname="ppn",
                            namespace="x", policy_pending=True)  # fmt: skip
    ya = PODS["y/a"][1]
    assert bed.net.probe("10.244.1.20", ya, 80) == Probed(
        False, ("deny", RuleRef("pending")), ("none", RuleRef("default"))
    )
    assert bed.net.probe(ya, "10.244.1.20", 80).ingress == ("deny", RuleRef("pending"))
    assert bed.net.explain("10.244.1.20", ya, 80).allowed  # no policy says so
    bed.net.apply_policies([])  # the next apply sets its tables (no policy)
    assert bed.net.probe("10.244.1.20", ya, 80) == Probed(
        True, ("none", RuleRef("default")), ("none", RuleRef("default"))
    )
    assert port.id in {p.id for p in bed.net.ports}


@pytest.mark.root
@pytest.mark.parametrize(
    ("src", "dst", "port", "protocol", "field"),
    [
        ("10.244.1.256", "10.244.1.3", 80, "TCP", "src"),
        ("10.244.1.2", "pod-b", 80, "TCP", "dst"),
        ("10.244.1.2", "10.244.1.3", 80, "GRE", "protocol"),
        ("10.244.1.2", "10.244.1.3", 70000, "TCP", "port"),
        ("192.0.2.1", "192.0.2.2", 80, "HTTP", "protocol"),  # no local end: refused all the same
    ],
)  # fmt: skip
def test_bad_network_probe_arguments_name_the_field(
    bed: Bed, src: str, dst: str, port: int, protocol: str, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        bed.net.probe(src, dst, port, protocol)
    assert err.value.field == field


@pytest.mark.root
def test_conntrack_evictions_reach_the_node_counters(overlay_topology: Topology) -> None:
    # One worker with a table of 8 sessions (one bucket); pod x/a, isolated on
    # egress by a policy that allows everything, opens 12 UDP flows that no
    # one answers: the four oldest are evicted for the last four.
    egress_all = np("egress-all", "x", {"matchLabels": {"pod": "a"}}, policyTypes=["Egress"],
                    egress=[{}])  # fmt: skip
    with real_node(overlay_topology, conntrack_sessions=8) as b:
        pod_ns = overlay_topology.add_netns("pa")
        try:
            b.ports["x/a"].move_to_netns(pod_ns.path, "eth0")
            b.net.apply_policies([egress_all])
            b.node.start()
            assert b.node.counters()["node"]["conntrack_evicted"] == 0
            s = pod_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for n in range(12):
                s.sendto(b"x", (REMOTE[2], 9000 + n))
            assert wait_for(lambda: b.node.counters()["node"]["udp_tx_packets"] >= 12)
            node = b.node.counters()["node"]
            assert node["conntrack_evicted"] == 4, node
            assert b.node.counters()["drops"]["conntrack_full"] == 0
            assert b.node.engine.conntrack_sessions() == 8
        finally:
            pod_ns.close_sockets()
