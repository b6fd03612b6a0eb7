"""Tables change under traffic: several workers forward while Python threads
add and remove FDB entries, neighbours, ports and whole networks.

The engine's lock model (native/engine.h, "Locking"): workers read the tables
under the reader lock once per burst, every change takes the writer lock, and
learning is applied by the learner thread. Here four workers on the fake
transport forward a steady stream both ways between a stable pod and a remote
one (in a learning network, so the learner writes too) while three threads
churn the tables and a fourth drains events. Afterwards every frame of the
stable flows arrived, each counted once, and the stable entries are intact.

tests/native/test_native_sanitize.py runs this file again against the
AddressSanitizer/UBSan build of the module, where a use after free (a burst
holding a port or FDB value that a change freed) is a report, not luck;
native/tests/check_engine.c drives the same churn under ThreadSanitizer.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Callable

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from overlay import wire
from overlay.bindings import ENCAP_VXLAN, mac_bytes
from overlay.testing.fakes import FakePort, fake_transport_engine
from overlay.testing.traffic import wait_for

MAC_A, MAC_B = "02:00:00:00:01:02", "02:00:00:00:02:02"
IP_A, IP_B = "10.244.1.2", "10.244.1.3"
PEER = ipaddress.ip_address("198.18.0.2")
OTHER = ipaddress.ip_address("198.18.0.3")  # a second member VTEP
VNI = 100
ROUNDS, PER_ROUND = 20, 50  # stable datagrams each way: ROUNDS * PER_ROUND


@functools.cache
def frame(src_mac: str, dst_mac: str, src: str, dst: str, k: int) -> bytes:
    return bytes(
        Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
        / UDP(sport=1000 + k % 500, dport=2000) / Raw(k.to_bytes(4, "big"))
    )  # fmt: skip


def reaches(count: Callable[[], int], want: int) -> bool:
    """Wait until ``count()`` is at least ``want``."""
    return wait_for(lambda: count() >= want)


class Churner(threading.Thread):
    """A thread calling body(i) for i = 0, 1, ... until stopped; keeps an
    unexpected error for the test to report, and counts its rounds."""

    def __init__(self, stop: threading.Event, body: Callable[[int], None]) -> None:
        super().__init__(name=f"churn-{body.__name__}", daemon=True)
        self.stop, self.body = stop, body
        self.rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.rounds < 100_000:
                self.body(self.rounds)
                self.rounds += 1
                time.sleep(0.0002)  # let go of the GIL: the traffic gets its turns
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_four_workers_forward_while_every_table_changes() -> None:
    with fake_transport_engine(ENCAP_VXLAN, workers=4) as eng:
        eng.network_add(VNI, learning=True)
        eng.vtep_add(VNI, PEER)
        eng.vtep_add(VNI, OTHER)
        eng.fdb_add(VNI, mac_bytes(MAC_B), PEER)
        pa = FakePort(eng, VNI, MAC_A, (IP_A,))
        stop = threading.Event()

        def fdb(i: int) -> None:
            mac = bytes([2, 0, 0, 9, (i >> 8) & 0xFF, i & 0xFF])
            eng.fdb_add(VNI, mac, ipaddress.ip_address(f"198.18.1.{i % 200 + 1}"))
            eng.neigh_add(VNI, ipaddress.ip_address(f"10.244.{100 + i % 50}.{i % 250 + 1}"), mac)
            if i % 2:
                eng.fdb_del(VNI, mac)
                eng.neigh_del(VNI, ipaddress.ip_address(f"10.244.{100 + i % 50}.{i % 250 + 1}"))

        def ports(i: int) -> None:
            p = FakePort(eng, VNI, f"02:00:00:07:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}", ())
            p.send(frame(p.mac, MAC_B, IP_A, IP_B, 0))  # spoofed IP: a counted drop
            eng.port_del(p.id)
            p.close()

        def networks(i: int) -> None:
            vni = 200 + i % 8
            eng.network_add(vni, learning=bool(i % 2))
            eng.vtep_add(vni, PEER)
            eng.fdb_add(vni, mac_bytes(MAC_B), PEER)
            p = FakePort(eng, vni, MAC_A, (IP_A,))  # the same MAC, another network
            eng.inject(wire.encode(ENCAP_VXLAN, wire.Tunnel(vni)) + frame(
                MAC_B, MAC_A, IP_B, IP_A, i % 8), PEER)  # fmt: skip
            eng.port_del(p.id)
            p.close()
            eng.network_del(vni)

        def learn(i: int) -> None:
            # a new source MAC behind one of two VTEPs: the learner writes it,
            # or moves it; to a MAC nobody has: learned, then a counted drop
            src = f"02:00:00:08:{(i >> 8) & 0x03:02x}:{i & 0xFF:02x}"
            inner = frame(src, "02:00:00:00:09:09", IP_B, IP_A, i % 1024)
            vtep = PEER if i % 3 else OTHER
            eng.inject(wire.encode(ENCAP_VXLAN, wire.Tunnel(VNI)) + inner, vtep)
            if i % 64 == 63:
                eng.events()

        threads = [Churner(stop, f) for f in (fdb, ports, networks, learn)]
        for t in threads:
            t.start()
        back: list[bytes] = []

        def encapsulated() -> int:
            return eng.port_counters(pa.id)["encap_packets"]

        try:
            for r in range(ROUNDS):
                for k in range(r * PER_ROUND, (r + 1) * PER_ROUND):
                    inner = frame(MAC_B, MAC_A, IP_B, IP_A, k)
                    eng.inject(wire.encode(ENCAP_VXLAN, wire.Tunnel(VNI)) + inner, PEER)
                    pa.send(frame(MAC_A, MAC_B, IP_A, IP_B, k))
                # a round at a time, so that the inbox and the pod's socket never fill
                want = (r + 1) * PER_ROUND
                while len(back) < want:
                    back.append(pa.recv(5.0))
                assert reaches(encapsulated, want), encapsulated()
                eng.sent()
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert [(t.name, t.error) for t in threads if t.error] == []
        assert not any(t.is_alive() for t in threads)
        assert all(t.rounds >= 10 for t in threads), [(t.name, t.rounds) for t in threads]
        total = ROUNDS * PER_ROUND
        assert sorted(back) == sorted(frame(MAC_B, MAC_A, IP_B, IP_A, k) for k in range(total))
        pc = eng.port_counters(pa.id)
        assert pc["encap_packets"] == total and pc["drops"] == 0
        assert eng.counters()["macs_learned"] > 0
        # the stable entries survived the churn around them
        entries = {(e.vni, e.mac): e for e in eng.fdb_dump()}
        assert entries[(VNI, MAC_A)].kind == "local" and entries[(VNI, MAC_A)].port_id == pa.id
        assert entries[(VNI, MAC_B)].vtep == str(PEER)
        assert not any(vni >= 200 for vni, _ in entries)
