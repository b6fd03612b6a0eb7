"""Per-packet cost of the tunnel codecs: C batch API, pure-Python reference, scapy.

Encap is the engine's per-frame header work (header written in the headroom,
inner flow parsed and hashed); decap is header decode plus inner parse. Each
call handles a batch of BATCH frames; ``extra_info["ns_per_packet"]`` is the
median call time divided by the batch. The three are measured in one run.
"""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from overlay import wire
from overlay.bindings.tools import DecapBatch, EncapBatch
from overlay.bindings.wire import CTunnel

BATCH = 64
SIZES = [64, 1400]


def frames(size: int) -> list[bytes]:
    out = []
    for i in range(BATCH):
        f = (
            Ether(src="02:00:00:00:01:02", dst="02:00:00:00:02:02")
            / IP(src="10.244.1.2", dst="10.244.1.3")
            / UDP(sport=10000 + i, dport=5201)
        )
        out.append(bytes(f / Raw(b"\0" * max(0, size - len(f)))))
    return out


def per_packet(benchmark: Any, n: int = BATCH) -> None:
    benchmark.extra_info["packets_per_call"] = n
    benchmark.extra_info["ns_per_packet"] = benchmark.stats.stats.median / n * 1e9


@pytest.mark.parametrize("size", SIZES)
def test_encap_c_batch(benchmark: Any, size: int) -> None:
    # frames laid out as the engine keeps them, each with OVL_HEADROOM in front
    run = EncapBatch(frames(size), wire.VXLAN, CTunnel(100, 0x6558, 0x08))
    benchmark(run)
    per_packet(benchmark)


@pytest.mark.parametrize("size", SIZES)
def test_encap_python(benchmark: Any, size: int) -> None:
    fs = frames(size)
    t = wire.Tunnel(100)

    def run() -> None:
        for f in fs:
            wire.encode(wire.VXLAN, t) + f
            wire.flow_hash(wire.parse_frame(f))

    benchmark(run)
    per_packet(benchmark)


@pytest.mark.parametrize("size", SIZES)
def test_encap_scapy(benchmark: Any, size: int) -> None:
    fs = frames(size)

    def run() -> None:
        for f in fs:
            bytes(VXLAN(vni=100, flags=0x08) / Raw(f))

    benchmark(run)
    per_packet(benchmark)


def datagrams(size: int) -> list[bytes]:
    return [wire.encode(wire.VXLAN, wire.Tunnel(100)) + f for f in frames(size)]


@pytest.mark.parametrize("size", SIZES)
def test_decap_c_batch(benchmark: Any, size: int) -> None:
    run = DecapBatch(datagrams(size), wire.VXLAN)
    benchmark(run)
    per_packet(benchmark)


@pytest.mark.parametrize("size", SIZES)
def test_decap_python(benchmark: Any, size: int) -> None:
    ds = datagrams(size)

    def run() -> None:
        for d in ds:
            _, off = wire.decode(wire.VXLAN, d)
            wire.parse_frame(d[off:])

    benchmark(run)
    per_packet(benchmark)


@pytest.mark.parametrize("size", SIZES)
def test_decap_scapy(benchmark: Any, size: int) -> None:
    ds = datagrams(size)

    def run() -> None:
        for d in ds:
            VXLAN(d)[Ether]

    benchmark(run)
    per_packet(benchmark)
