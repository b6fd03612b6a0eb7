"""The test and benchmark tools (``native/overlay_tools.h``): the traffic
generator, the batch codecs, the fake transport and per-worker counters.

Compiled into the same module as the product, so a test or a benchmark
measures the real code; nothing in overlay outside ``testing/`` and the
tests and benchmarks uses them.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overlay.bindings._ffi import IPAddress, addr_bytes, addr_from, check, ffi, lib
from overlay.bindings.counters import COUNTER_NAMES, node_values
from overlay.bindings.engine import Engine
from overlay.bindings.wire import CTunnel, _c_tunnel
from overlay.errors import CapacityError, ConfigError

__all__ = [
    "FAKE_INBOX",
    "DecapBatch",
    "EncapBatch",
    "FakeTransportEngine",
    "SentDatagram",
    "gen_recv",
    "gen_send",
    "worker_counters",
]

FAKE_INBOX: int = lib.OVL_FAKE_INBOX

# ---- the traffic generator (gen.c) ----


def gen_send(fd: int, payload: bytes, count: int, *, batch: int = 64, seconds: float = 1.0) -> int:
    """Send up to ``count`` copies of ``payload`` on the connected UDP socket ``fd``
    in sendmmsg batches, for at most ``seconds``; returns how many were sent."""
    if not 1 <= batch <= 1024:
        raise ConfigError("batch", batch, "1-1024")
    if count < 0 or seconds < 0:
        raise ValueError(f"count {count}, seconds {seconds}: neither may be negative")
    return check(
        int(lib.ovl_gen_send(fd, payload, len(payload), count, batch, int(seconds * 1e9))),
        "sending generated datagrams",
    )


def gen_recv(fd: int, seconds: float, idle_seconds: float) -> tuple[int, int]:
    """Receive on ``fd`` for at most ``seconds`` (less after ``idle_seconds`` of
    silence); returns (datagrams, bytes)."""
    if seconds < 0 or idle_seconds < 0:
        raise ValueError(f"seconds {seconds}, idle_seconds {idle_seconds}: not negative")
    p, b = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    check(
        lib.ovl_gen_recv(fd, int(seconds * 1e9), int(idle_seconds * 1e9), p, b),
        "receiving generated datagrams",
    )
    return int(p[0]), int(b[0])


# ---- the batch codecs (wirebatch.c) ----


class _Batch:
    """Frames laid out as the engine keeps them: each with ``headroom`` bytes in front."""

    def __init__(self, data: Sequence[bytes], headroom: int) -> None:
        if not data:
            raise ValueError("a batch holds at least one frame")
        stride = headroom + max(len(d) for d in data)
        self.n = len(data)
        self._mem = ffi.new("uint8_t[]", stride * self.n)
        self._ptrs = ffi.new("uint8_t *[]", self.n)
        self._lens = ffi.new("uint32_t[]", [len(d) for d in data])
        for i, d in enumerate(data):
            self._ptrs[i] = self._mem + i * stride + headroom
            ffi.memmove(self._ptrs[i], d, len(d))


class EncapBatch(_Batch):
    """``ovl_wire_encap_batch`` over frames held in C memory, prepared once:
    each call writes ``tunnel``'s header in front of every frame and hashes its
    flow (what a benchmark repeats)."""

    def __init__(self, frames: Sequence[bytes], encap: int, tunnel: CTunnel) -> None:
        super().__init__(frames, lib.OVL_HEADROOM)
        self._encap = encap
        self._t = _c_tunnel(tunnel)
        self._hashes = ffi.new("uint32_t[]", self.n)

    def __call__(self) -> int:
        """The header length (-1 when the tunnel cannot be encoded)."""
        return int(
            lib.ovl_wire_encap_batch(self._encap, self._t, self._ptrs, self._lens, self.n,
                                     self._hashes)
        )  # fmt: skip

    @property
    def hashes(self) -> list[int]:
        return list(self._hashes)


class DecapBatch(_Batch):
    """``ovl_wire_decap_batch`` over datagrams held in C memory, prepared once."""

    def __init__(self, datagrams: Sequence[bytes], encap: int, known: Sequence[int] = ()) -> None:
        super().__init__(datagrams, 0)
        self._encap = encap
        self._known = ffi.new("uint32_t[]", list(known)) if known else ffi.NULL
        self._n_known = len(known)
        self._out = ffi.new("int32_t[]", self.n)

    def __call__(self) -> int:
        """How many datagrams were accepted."""
        return int(
            lib.ovl_wire_decap_batch(self._encap, self._ptrs, self._lens, self.n, self._known,
                                     self._n_known, self._out)
        )  # fmt: skip

    @property
    def results(self) -> list[int]:
        """Per datagram: the inner frame's offset, or -(drop reason id)."""
        return list(self._out)


# ---- per-worker counters (counters.c) ----


def worker_counters(engine: Engine, worker: int) -> dict[str, int]:
    """The node counters of one worker of ``engine``, not summed: which worker
    handled what (flow steering, native/engine.h)."""
    if not 0 <= worker < engine.workers:
        raise ConfigError("worker", worker, f"0-{engine.workers - 1}")
    buf = ffi.new("uint64_t[]", len(COUNTER_NAMES))
    check(
        lib.ovl_counters_worker(engine._h(), worker, buf, len(COUNTER_NAMES)),
        f"counters of worker {worker}",
    )
    return node_values(buf)


# ---- the fake transport (fake.c): engines without sockets ----


@dataclass(frozen=True)
class SentDatagram:
    """A datagram an engine on the fake transport sent to the underlay."""

    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int  # the destination (tunnel) port
    sport: int  # the outer source port its flow got
    data: bytes  # tunnel header and inner frame


class FakeTransportEngine(Engine):
    """An ``Engine`` whose underlay is memory (wireguard-go's bindtest).

    Everything above the transport is the real data plane: workers, stages,
    tables, counters, events. :meth:`inject` hands it a datagram as if a peer
    had sent it to the tunnel port (with several workers, to the worker the
    UDP transport's steering program would pick); :meth:`sent` returns what
    it sent. No socket is opened, so ``local`` and the ports are only recorded.
    """

    _CREATE = "ovl_fake_engine_create"

    def inject(
        self, datagram: bytes, src: IPAddress, port: int = 0, encap: int | None = None
    ) -> None:
        """Deliver ``datagram`` to the engine from ``src`` (port ``port``), to the
        tunnel port of ``encap`` (ENCAP_*; None: the engine's encapsulation)."""
        if not 0 <= port <= 65535:
            raise ConfigError("port", port, "a UDP port 0-65535")
        if encap is not None and encap not in (lib.OVL_ENCAP_VXLAN, lib.OVL_ENCAP_GENEVE):
            raise ConfigError("encap", encap, "ENCAP_VXLAN or ENCAP_GENEVE")
        family, raw = addr_bytes(src)
        rc = lib.ovl_fake_inject_to(
            self._h(), encap or 0, family, raw, port, datagram, len(datagram)
        )
        if rc == -errno.ENOBUFS:
            raise CapacityError(
                f"the fake transport holds {FAKE_INBOX} datagrams: "
                "let the engine run (start it) before injecting more"
            )
        check(rc, "injecting a datagram")

    def sent(self) -> list[SentDatagram]:
        """Every datagram the engine has sent since the last call, oldest first."""
        meta = ffi.new("ovl_fake_sent_t *")
        cap = 65536
        buf: Any = ffi.new("uint8_t[]", cap)
        out: list[SentDatagram] = []
        while True:
            n = lib.ovl_fake_take(self._h(), meta, buf, cap)
            if n == -errno.EAGAIN:
                return out
            check(n, "reading sent datagrams")
            out.append(
                SentDatagram(
                    dst=addr_from(meta.family, meta.addr),
                    port=meta.port,
                    sport=meta.sport,
                    data=bytes(ffi.buffer(buf, min(n, cap))),
                )
            )
