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
from overlay._native import ffi, lib

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


class CBatch:
    """Frames laid out as the engine keeps them: each with OVL_HEADROOM in front."""

    def __init__(self, data: list[bytes], headroom: int) -> None:
        stride = headroom + max(len(d) for d in data)
        self.mem = ffi.new("uint8_t[]", stride * len(data))
        self.ptrs = ffi.new("uint8_t *[]", len(data))
        self.lens = ffi.new("uint32_t[]", [len(d) for d in data])
        for i, d in enumerate(data):
            self.ptrs[i] = self.mem + i * stride + headroom
            ffi.memmove(self.ptrs[i], d, len(d))


@pytest.mark.parametrize("size", SIZES)
def test_encap_c_batch(benchmark: Any, size: int) -> None:
    b = CBatch(frames(size), lib.OVL_HEADROOM)
    t = ffi.new("ovl_tunnel_t *", {"vni": 100, "protocol": 0x6558, "flags": 0x08})
    hashes = ffi.new("uint32_t[]", BATCH)
    benchmark(lib.ovl_wire_encap_batch, lib.OVL_ENCAP_VXLAN, t, b.ptrs, b.lens, BATCH, hashes)
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
    b = CBatch(datagrams(size), 0)
    out = ffi.new("int32_t[]", BATCH)
    benchmark(
        lib.ovl_wire_decap_batch, lib.OVL_ENCAP_VXLAN, b.ptrs, b.lens, BATCH, ffi.NULL, 0, out
    )
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
