"""The wire formats in C (``overlay.h``, "wire formats" and "the Internet
checksum"; ``wire.c``, ``csum.c``), with Python values in and out.

Every function mirrors one C function and speaks the contract of its
pure-Python twin in ``overlay.wire``: a drop is :class:`overlay.wire.Drop`
with the counter's name as its reason, a refusal (the C side's -1) is
``ValueError``, and a parsed frame is an :class:`overlay.wire.Frame`, field
for field ``ovl_frame_t``. So the agreement tests (tests/native/test_wire_c.py)
compare like with like, and nothing else needs to know how C holds a frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from overlay import wire
from overlay.bindings._ffi import cstr, ffi, lib

__all__ = [
    "FRAME_FIELDS",
    "HEADROOM",
    "CTunnel",
    "arp_reply",
    "check_options",
    "checksum",
    "decode",
    "encode",
    "flow_hash",
    "nd_advert",
    "parse_frame",
    "source_port",
    "steer_hash",
]

VXLAN: int = lib.OVL_ENCAP_VXLAN
GENEVE: int = lib.OVL_ENCAP_GENEVE
VXLAN_PORT: int = lib.OVL_VXLAN_PORT
GENEVE_PORT: int = lib.OVL_GENEVE_PORT
VNI_MAX: int = lib.OVL_VNI_MAX
GENEVE_OPTS_MAX: int = lib.OVL_GENEVE_OPTS_MAX
HEADROOM: int = lib.OVL_HEADROOM
FRAME_FIELDS: tuple[str, ...] = tuple(name for name, _ in ffi.typeof("ovl_frame_t").fields)
"""``ovl_frame_t``'s fields, in order: ``overlay.wire.Frame`` must have exactly these."""


@dataclass(frozen=True)
class CTunnel:
    """``ovl_tunnel_t``: a tunnel header as C holds it, options as raw TLV bytes."""

    vni: int
    protocol: int = wire.ETH_P_TEB
    flags: int = 0
    opts: bytes = b""


def _drop(rc: int) -> NoReturn:
    """Raise the Drop whose reason id is -rc (ValueError for an id that is none)."""
    if rc < 0 and lib.ovl_counter_is_drop(-rc):
        raise wire.Drop(str(cstr(lib.ovl_counter_name(-rc))))
    raise ValueError(f"{rc} is not a drop reason")


def _cbuf(data: bytes) -> Any:
    """An exactly sized C copy (a read past the end is past the allocation)."""
    return ffi.new("uint8_t[]", data) if data else ffi.NULL


def _uint(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {value!r}: must fit in {bits} bits")
    return value


def _c_tunnel(t: CTunnel) -> Any:
    if len(t.opts) > GENEVE_OPTS_MAX:
        raise ValueError(f"{len(t.opts)} option bytes: ovl_tunnel_t holds {GENEVE_OPTS_MAX}")
    c = ffi.new("ovl_tunnel_t *")
    c.vni = _uint(t.vni, 32, "vni")
    c.protocol = _uint(t.protocol, 16, "protocol")
    c.flags = _uint(t.flags, 8, "flags")
    c.opts_len = len(t.opts)
    ffi.memmove(c.opts, t.opts, len(t.opts))
    return c


def encode(encap: int, tunnel: CTunnel, cap: int = 512) -> bytes:
    """``ovl_wire_encode`` into a buffer of ``cap`` bytes; ValueError when C refuses."""
    if cap < 0:
        raise ValueError(f"cap {cap}: must be >= 0")
    out = ffi.new("uint8_t[]", cap) if cap else ffi.NULL
    n = lib.ovl_wire_encode(encap, _c_tunnel(tunnel), out, cap)
    if n < 0:
        raise ValueError(f"ovl_wire_encode refused {tunnel} (cap {cap})")
    return bytes(ffi.buffer(out, n))


def decode(encap: int, data: bytes) -> tuple[CTunnel, int]:
    """``ovl_wire_decode``: the header and where the inner frame starts; Drop."""
    t = ffi.new("ovl_tunnel_t *")
    rc = lib.ovl_wire_decode(encap, _cbuf(data), len(data), t)
    if rc < 0:
        _drop(rc)
    opts = bytes(ffi.buffer(t.opts, t.opts_len))
    return CTunnel(t.vni, t.protocol, t.flags, opts), rc


def check_options(opts: bytes, known: Sequence[int] = ()) -> None:
    """``ovl_wire_check_options`` with known (class << 8 | type) keys; Drop."""
    keys = (
        ffi.new("uint32_t[]", [_uint(k, 32, "known option") for k in known]) if known else ffi.NULL
    )
    rc = lib.ovl_wire_check_options(_cbuf(opts), len(opts), keys, len(known))
    if rc:
        _drop(rc)


def _frame_from_c(f: Any) -> wire.Frame:
    values: dict[str, Any] = {}
    for name in FRAME_FIELDS:
        v = getattr(f, name)
        if isinstance(v, int):
            kind = type(getattr(wire.Frame, name, 0))
            values[name] = bool(v) if kind is bool else v
        else:
            values[name] = bytes(v)
    return wire.Frame(**values)


def _c_frame(frame: wire.Frame) -> Any:
    f = ffi.new("ovl_frame_t *")
    for name in FRAME_FIELDS:
        v = getattr(frame, name)
        if isinstance(v, bytes):
            ffi.memmove(getattr(f, name), v, min(len(v), ffi.sizeof(getattr(f, name))))
        else:
            setattr(f, name, int(v))
    return f


def parse_frame(data: bytes, *, fill: int = 0) -> wire.Frame:
    """``ovl_wire_parse_frame``; Drop. ``fill``: the byte the C struct holds
    before the call, so that a test sees every field written."""
    f = ffi.new("ovl_frame_t *")
    size = ffi.sizeof("ovl_frame_t")
    ffi.memmove(f, bytes([_uint(fill, 8, "fill")]) * size, size)
    rc = lib.ovl_wire_parse_frame(_cbuf(data), len(data), f)
    if rc:
        _drop(rc)
    return _frame_from_c(f)


def flow_hash(frame: wire.Frame) -> int:
    """``ovl_wire_flow_hash`` of a frame given field by field."""
    return int(lib.ovl_wire_flow_hash(_c_frame(frame)))


def steer_hash(data: bytes) -> int:
    """``ovl_wire_steer_hash`` of the frame bytes ``data``."""
    return int(lib.ovl_wire_steer_hash(_cbuf(data), len(data)))


def source_port(hash: int, lo: int, hi: int, slots: int) -> int:
    """``ovl_wire_source_port`` (C gives an inverted range its lo)."""
    return int(
        lib.ovl_wire_source_port(
            _uint(hash, 32, "hash"), _uint(lo, 16, "lo"), _uint(hi, 16, "hi"),
            _uint(slots, 16, "slots"),
        )
    )  # fmt: skip


def checksum(data: bytes, initial: int = 0, *, offset: int = 0) -> int:
    """``ovl_csum`` of ``data`` placed ``offset`` bytes into its buffer (any alignment)."""
    if not 0 <= offset <= 64:
        raise ValueError(f"offset {offset}: 0-64")
    mem = ffi.new("uint8_t[]", len(data) + offset + 1)
    ffi.memmove(mem + offset, data, len(data))
    return int(lib.ovl_csum(mem + offset, len(data), _uint(initial, 32, "initial")))


def _answer(fn: Any, frame: wire.Frame, mac: bytes, cap: int) -> bytes:
    if len(mac) != 6:
        raise ValueError(f"mac {mac!r}: 6 bytes")
    if cap < 0:
        raise ValueError(f"cap {cap}: must be >= 0")
    out = ffi.new("uint8_t[]", max(cap, 1))
    n = fn(_c_frame(frame), mac, out, cap)
    if n < 0:
        raise ValueError("no answer (not a request this answers, or cap too small)")
    return bytes(ffi.buffer(out, n))


def arp_reply(req: wire.Frame, mac: bytes, cap: int = 128) -> bytes:
    """``ovl_wire_arp_reply`` to the parsed request ``req``; ValueError when C refuses."""
    return _answer(lib.ovl_wire_arp_reply, req, mac, cap)


def nd_advert(ns: wire.Frame, mac: bytes, cap: int = 128) -> bytes:
    """``ovl_wire_nd_advert`` to the parsed solicitation ``ns``; ValueError when C refuses."""
    return _answer(lib.ovl_wire_nd_advert, ns, mac, cap)
