"""Health probes through the overlay: real engines on 127.0.0.1, on asyncio and uvloop.

Each "node" is an ``overlay.Node`` bound to 127.0.0.1 on its own UDP port, so
probe frames cross the real C data plane (port checks, encap, UDP, decap,
isolation checks) without root or namespaces. A hand-driven peer (a health
network with a ``FakePort`` at the peer's health MAC) checks the wire format
and the handling of malformed and forged frames. Nothing is timed: each test
waits for a condition, bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from overlay.bindings import mac_bytes
from overlay.daemon.health import (
    ETHERTYPE,
    HEALTH_TENANT,
    HEALTH_VNI,
    KIND_REPLY,
    KIND_REQUEST,
    HealthProber,
    decode_probe,
    encode_probe,
    health_mac,
)
from overlay.errors import ConfigError, ConflictError
from overlay.node import Node
from overlay.testing.aio import LOOPS, run, until
from overlay.testing.fakes import FakePort, free_udp_port

INTERVAL = 0.1
LO = "127.0.0.1"


@pytest.fixture(autouse=True)
def no_logged_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A loop callback that failed logs an error: no test may leave one."""
    caplog.set_level(logging.WARNING, logger="overlay.health")
    yield
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, f"the prober logged errors: {bad}"


@pytest.fixture
def nodes() -> Iterator[Callable[[], Node]]:
    """Started Nodes on 127.0.0.1, each on its own port; closed after the test."""
    made: list[Node] = []

    def make() -> Node:
        node = Node(LO, port=free_udp_port())
        made.append(node)
        node.start()
        return node

    yield make
    for node in made:
        node.close()


def peer(node: Node) -> tuple[str, int]:
    return (LO, node.port)


def result(prober: HealthProber, name: str) -> dict[str, Any]:
    return next(r for r in prober.results() if r["name"] == name)


def reachable(prober: HealthProber, name: str) -> bool:
    return any(r["name"] == name and r["reachable"] for r in prober.results())


# -- the MAC and the frame format ---------------------------------------------


def test_health_mac_is_derived_from_the_underlay_address_and_port() -> None:
    assert health_mac("198.18.0.1") == "02:0b:c6:12:00:01"
    assert health_mac("198.18.0.1") == health_mac("198.18.0.1", 0)
    shared = {health_mac("127.0.0.1", p) for p in (5000, 5001, 5002)}
    v6 = health_mac("2001:db8::1")
    for mac in (*shared, v6, health_mac("198.18.0.1")):
        first = mac_bytes(mac)[0]
        assert first & 0x02 and not first & 0x01  # locally administered unicast
    assert len(shared) == 3 and all(m.startswith("02:0c:") for m in shared)
    assert v6.startswith("02:0c:") and v6 != health_mac("2001:db8::2")
    with pytest.raises(ConfigError, match="underlay"):
        health_mac("node-b")
    with pytest.raises(ConfigError, match="port"):
        health_mac("198.18.0.1", 70000)


def test_probe_frames_round_trip_and_reject_malformed_input() -> None:
    dst, src = mac_bytes("02:0b:c6:12:00:02"), mac_bytes("02:0b:c6:12:00:01")
    frame = encode_probe(dst, src, KIND_REQUEST, 7, 123456789, "node-a")
    assert len(frame) == 60 and int.from_bytes(frame[12:14], "big") == ETHERTYPE
    p = decode_probe(frame)
    assert p is not None
    assert (p.dst, p.src, p.kind, p.seq, p.time_ns, p.name) == (
        dst,
        src,
        KIND_REQUEST,
        7,
        123456789,
        "node-a",
    )
    long = encode_probe(dst, src, KIND_REPLY, 1, 2, "n" * 200)
    assert decode_probe(long) is not None and decode_probe(long[:-1]) is None
    for bad in malformed_frames(dst, src):
        assert decode_probe(bad) is None, bad.hex()


def malformed_frames(dst: bytes, src: bytes) -> list[bytes]:
    good = encode_probe(dst, src, KIND_REQUEST, 1, 1, "x")
    eth = dst + src + ETHERTYPE.to_bytes(2, "big")
    return [
        eth,  # no payload
        good[:30],  # truncated probe header
        good[:14] + b"XXXX" + good[18:],  # wrong magic
        good[:18] + b"\x09" + good[19:],  # unknown version
        good[:19] + b"\x07" + good[20:],  # unknown kind
        good[:20] + b"\x01\x00" + good[22:],  # name longer than the frame
        good[:20] + b"\x00\x02" + good[22:38] + b"\xff\xfe" + good[40:],  # name not UTF-8
        dst + src + b"\x88\xb6" + good[14:],  # another EtherType
    ]


# -- probing through real engines ----------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_two_probers_see_each_other_reachable_with_a_round_trip_time(
    loop_kind: str, nodes: Callable[[], Node]
) -> None:
    async def main() -> None:
        a, b = nodes(), nodes()
        pa = HealthProber(a, "node-a", interval=INTERVAL)
        pb = HealthProber(b, "node-b", interval=INTERVAL)
        pa.set_peers({"node-b": peer(b)})  # before start: programmed on start
        await pa.start()
        await pb.start()
        pb.set_peers({"node-a": peer(a), "node-b": peer(b)})  # itself: skipped
        try:
            await until(lambda: reachable(pa, "node-b") and reachable(pb, "node-a"))
            await until(lambda: int(result(pa, "node-b")["received"]) >= 3)
            for prober, other, node in ((pa, "node-b", b), (pb, "node-a", a)):
                (r,) = prober.results()
                assert r["name"] == other and r["underlay"] == LO and r["port"] == node.port
                assert r["rtt_ms"] is not None and 0 < float(r["rtt_ms"]) < 1000
                assert r["rtt_avg_ms"] is not None and float(r["rtt_avg_ms"]) > 0
                assert 0 < int(r["received"]) <= int(r["sent"])
                age = r["last_reply_age_s"]
                assert age is not None and 0 <= float(age) <= prober.timeout
                assert prober.stats()["bad_frames"] == 0
                assert prober.stats()["requests_answered"] > 0
            # The probes crossed the data plane: encapsulated and decapsulated.
            counters = a.counters()["networks"][HEALTH_VNI]
            assert counters["encap_packets"] > 0 and counters["decap_packets"] > 0
            assert a.networks[HEALTH_VNI].tenant == HEALTH_TENANT
        finally:
            await pa.stop()
            await pb.stop()
        # Everything the probers made is gone from the nodes.
        for node in (a, b):
            assert HEALTH_VNI not in node.networks
            assert not [e for e in node.fdb() if e.vni == HEALTH_VNI]
        assert pa.results()[0]["reachable"] is False

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_peer_whose_node_stops_becomes_unreachable_within_the_timeout(
    loop_kind: str, nodes: Callable[[], Node]
) -> None:
    async def main() -> None:
        a, b = nodes(), nodes()
        pa = HealthProber(a, "node-a", interval=INTERVAL)
        pb = HealthProber(b, "node-b", interval=INTERVAL)
        await pa.start()
        await pb.start()
        pa.set_peers({"node-b": peer(b)})
        pb.set_peers({"node-a": peer(a)})
        try:
            await until(lambda: reachable(pa, "node-b"))
            assert pa.timeout == pytest.approx(3 * INTERVAL)
            b.stop()  # b's data plane stops forwarding; its prober runs on
            loop = asyncio.get_running_loop()
            stopped = loop.time()
            await until(lambda: not reachable(pa, "node-b"), timeout=pa.timeout + 2.0)
            # Not before the timeout: the last reply was at most one interval old.
            assert loop.time() - stopped >= pa.timeout - INTERVAL - 0.05
            r = result(pa, "node-b")
            assert r["last_reply_age_s"] is not None
            assert float(r["last_reply_age_s"]) > pa.timeout
            received = r["received"]
            await asyncio.sleep(3 * INTERVAL)
            assert result(pa, "node-b")["received"] == received
            b.start()  # and back
            await until(lambda: reachable(pa, "node-b"))
        finally:
            await pa.stop()
            await pb.stop()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_peers_removed_by_set_peers_leave_the_results_and_the_network(
    loop_kind: str, nodes: Callable[[], Node]
) -> None:
    async def main() -> None:
        a, b, c = nodes(), nodes(), nodes()
        probers = [
            HealthProber(n, f"node-{x}", interval=INTERVAL)
            for n, x in zip((a, b, c), "abc", strict=True)
        ]
        all_peers = {"node-a": peer(a), "node-b": peer(b), "node-c": peer(c)}
        for p in probers:
            await p.start()
            p.set_peers(all_peers)
        pa = probers[0]
        net = a.networks[HEALTH_VNI]
        mac_b = health_mac(LO, b.port)
        mac_c = health_mac(LO, c.port)
        try:
            await until(lambda: reachable(pa, "node-b") and reachable(pa, "node-c"))
            assert set(net.remotes) == {mac_b, mac_c}
            assert net.vteps == {ipaddress.ip_address(LO)}
            # Idempotent: the same peers again change nothing and keep the counts.
            sent = result(pa, "node-b")["sent"]
            pa.set_peers(all_peers)
            assert int(result(pa, "node-b")["sent"]) >= int(sent)
            assert set(net.remotes) == {mac_b, mac_c}
            # b goes; c shares b's underlay address, so the VTEP stays.
            pa.set_peers({"node-c": peer(c)})
            assert [r["name"] for r in pa.results()] == ["node-c"]
            assert set(net.remotes) == {mac_c}
            assert net.vteps == {ipaddress.ip_address(LO)}
            fdb = {e.mac: e for e in a.fdb() if e.vni == HEALTH_VNI and e.kind == "remote"}
            assert set(fdb) == {mac_c} and fdb[mac_c].vtep_port == c.port
            await asyncio.sleep(3 * INTERVAL)
            assert reachable(pa, "node-c")
            # b, which still probes a, now gets no answers from it.
            pb = probers[1]
            await until(lambda: not reachable(pb, "node-a"), timeout=pb.timeout + 2.0)
            assert pa.stats()["stray_frames"] > 0  # b's requests, ignored
            # The last one goes, and with it the VTEP.
            pa.set_peers({})
            assert pa.results() == []
            assert net.remotes == {} and net.vteps == set()
            assert not [e for e in a.fdb() if e.vni == HEALTH_VNI and e.kind == "remote"]
        finally:
            for p in probers:
                await p.stop()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_malformed_and_forged_frames_are_counted_and_ignored(
    loop_kind: str, nodes: Callable[[], Node]
) -> None:
    """Peer c is driven by hand: a health network and a FakePort at c's health MAC."""

    async def main() -> None:
        a, c = nodes(), nodes()
        pa = HealthProber(a, "node-a", interval=INTERVAL)
        await pa.start()
        pa.set_peers({"node-c": peer(c)})
        net_c = c.add_network(HEALTH_VNI, HEALTH_TENANT)
        net_c.add_vtep(LO, a.port)
        net_c.add_remote(mac=pa.mac, vtep=LO, port=a.port)
        c_mac = health_mac(LO, c.port)
        port = FakePort(c.engine, HEALTH_VNI, c_mac)
        stranger = FakePort(c.engine, HEALTH_VNI, "02:00:00:00:00:99")
        loop = asyncio.get_running_loop()
        try:
            # a's requests arrive in c's port, well-formed.
            frame = await loop.run_in_executor(None, port.recv, 5.0)
            req = decode_probe(frame)
            assert req is not None and req.kind == KIND_REQUEST and req.name == "node-a"
            assert req.dst == mac_bytes(c_mac) and req.src == mac_bytes(pa.mac)
            # Malformed frames from c to a: each counted, none fatal.
            bad = malformed_frames(mac_bytes(pa.mac), mac_bytes(c_mac))
            for f in bad:
                port.send(f)
            # Replies to nothing a sent: a sequence number ahead, a time in the future.
            port.send(encode_probe(req.src, req.dst, KIND_REPLY, 10**6, req.time_ns, "node-c"))
            port.send(encode_probe(req.src, req.dst, KIND_REPLY, req.seq, 2**63, "node-c"))
            await until(lambda: pa.stats()["bad_frames"] == len(bad) + 2)
            assert not reachable(pa, "node-c")
            # A well-formed request from a MAC that is no peer: ignored, not answered.
            stranger.send(
                encode_probe(mac_bytes(pa.mac), mac_bytes(stranger.mac), KIND_REQUEST, 1, 1, "x")
            )
            await until(lambda: pa.stats()["stray_frames"] == 1)
            assert pa.stats()["requests_answered"] == 0
            # A true reply: a sees c.
            port.send(encode_probe(req.src, req.dst, KIND_REPLY, req.seq, req.time_ns, "node-c"))
            await until(lambda: reachable(pa, "node-c"))
            assert result(pa, "node-c")["received"] == 1
            # A request from c is answered with c's sequence and time echoed.
            port.send(encode_probe(req.src, req.dst, KIND_REQUEST, 42, 4242, "node-c"))
            answer = None
            for _ in range(50):
                got = decode_probe(await loop.run_in_executor(None, port.recv, 5.0))
                if got is not None and got.kind == KIND_REPLY:
                    answer = got
                    break
            assert answer is not None
            assert (answer.seq, answer.time_ns, answer.name) == (42, 4242, "node-a")
            assert answer.dst == mac_bytes(c_mac) and answer.src == mac_bytes(pa.mac)
            assert pa.stats()["bad_frames"] == len(bad) + 2
        finally:
            await pa.stop()
            port.close()
            stranger.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_node_closed_under_a_running_prober_breaks_nothing(
    loop_kind: str, nodes: Callable[[], Node]
) -> None:
    async def main() -> None:
        a, b = nodes(), nodes()
        pa = HealthProber(a, "node-a", interval=INTERVAL)
        await pa.start()
        pa.set_peers({"node-b": peer(b)})
        await asyncio.sleep(2 * INTERVAL)
        a.close()  # the engine closes its end of the health port
        await asyncio.sleep(3 * INTERVAL)
        assert pa.stats()["send_errors"] > 0
        await pa.stop()
        await pa.stop()  # idempotent
        assert pa.results()[0]["reachable"] is False

    run(loop_kind, main)


# -- configuration errors --------------------------------------------------------


def test_bad_peers_are_refused_naming_the_entry_and_change_nothing(
    nodes: Callable[[], Node],
) -> None:
    async def main() -> None:
        a, b = nodes(), nodes()
        pa = HealthProber(a, "node-a", interval=INTERVAL)
        await pa.start()
        try:
            pa.set_peers({"node-b": peer(b)})
            net = a.networks[HEALTH_VNI]
            before = (dict(net.remotes), set(net.vteps), pa.results())
            cases: list[tuple[dict[str, Any], str]] = [
                ({"node-x": ("not-an-address", 0)}, r"peers\['node-x'\]\.underlay"),
                ({"node-x": ("2001:db8::1", 0)}, "IPv4"),
                ({"node-x": (LO, 70000)}, r"peers\['node-x'\]\.port"),
                ({"node-x": "127.0.0.1"}, r"peers\['node-x'\]"),
                ({"node-b": peer(b), "node-x": peer(b)}, "same address and port"),
            ]
            for peers, match in cases:
                with pytest.raises(ConfigError, match=match):
                    pa.set_peers(peers)
                assert (dict(net.remotes), set(net.vteps)) == before[:2]
                assert [r["name"] for r in pa.results()] == ["node-b"]
        finally:
            await pa.stop()

    run("asyncio", main)


def test_a_taken_vni_is_a_conflict_and_leaves_nothing_behind(nodes: Callable[[], Node]) -> None:
    async def main() -> None:
        a = nodes()
        a.add_network(HEALTH_VNI, "blue")
        pa = HealthProber(a, "node-a")
        with pytest.raises(ConflictError, match="choose another VNI"):
            await pa.start()
        assert not pa.running and a.networks[HEALTH_VNI].tenant == "blue"
        other = HealthProber(a, "node-a", vni=4000)
        await other.start()
        assert a.networks[4000].tenant == HEALTH_TENANT
        await other.stop()
        assert 4000 not in a.networks

    run("asyncio", main)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vni": -1}, "health.vni"),
        ({"vni": 1 << 24}, "health.vni"),
        ({"interval": 0}, "health.interval"),
        ({"timeout": -1.0}, "health.timeout"),
        ({"name": ""}, "node.name"),
    ],
)
def test_bad_prober_settings_name_the_field(
    nodes: Callable[[], Node], kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {"name": "node-a", **kwargs}
    name = args.pop("name")
    with pytest.raises(ConfigError, match=field):
        HealthProber(nodes(), name, **args)
