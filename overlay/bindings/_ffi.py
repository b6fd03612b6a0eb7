"""The one door to the compiled module, and the one helper every binding uses.

``ffi`` and ``lib`` are imported here and nowhere else in overlay (a test
holds every other module to that). :func:`check` turns a negative errno into
the typed exception the rest of the package catches; the conversions put
Python values into the shapes ``native/overlay.h`` wants (an address is a
family and 16 bytes, a MAC is 6 bytes) and back.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from typing import Any

from overlay._native import ffi, lib
from overlay.errors import CapacityError, ConfigError, ConflictError, EngineError, NotFoundError

__all__ = [
    "Handle",
    "IPAddress",
    "addr_bytes",
    "addr_from",
    "check",
    "cstr",
    "ffi",
    "lib",
    "mac_bytes",
    "mac_str",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check(rc: int, what: str) -> int:
    """Return rc when it is not negative, else raise the exception for -rc:
    ConflictError (in use), NotFoundError, CapacityError (a table is full),
    EngineError with the errno otherwise."""
    if rc >= 0:
        return rc
    err = -rc
    text = f"{what}: {os.strerror(err)}"
    if err in (errno.EEXIST, errno.EADDRINUSE):
        raise ConflictError(text)
    if err == errno.ENOENT:
        raise NotFoundError(text)
    if err == errno.ENOSPC:
        raise CapacityError(text + " (raise the table size in the node's configuration)")
    raise EngineError(err, text)


def cstr(p: Any) -> str | None:
    """A C string as str, or None for NULL."""
    return None if p == ffi.NULL else ffi.string(p).decode()


def mac_bytes(mac: str | bytes, field: str = "mac") -> bytes:
    """'02:00:00:00:01:02' (or 6 bytes) -> 6 bytes; ConfigError naming field otherwise."""
    if isinstance(mac, bytes | bytearray):
        if len(mac) == 6:
            return bytes(mac)
        raise ConfigError(field, mac, "a MAC address is 6 bytes")
    parts = mac.replace("-", ":").split(":") if isinstance(mac, str) else []
    try:
        if len(parts) != 6 or any(len(p) not in (1, 2) for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(field, mac, "expected a MAC like 02:00:00:00:01:02") from None


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def addr_bytes(addr: IPAddress) -> tuple[int, bytes]:
    """An address as (family, 16 bytes) the way overlay.h wants it."""
    return addr.version, addr.packed.ljust(16, b"\0")


def addr_from(family: int, raw: Any) -> IPAddress:
    """(family, 16 bytes of a C array) back to an address."""
    data = bytes(ffi.buffer(raw, 16))
    if family == 4:
        return ipaddress.IPv4Address(data[:4])
    return ipaddress.IPv6Address(data)


class Handle:
    """The engine's C handle, as every area's methods (network.py, port.py,
    fdb.py, counters.py, events.py) reach it; engine.py sets and clears it."""

    _e: Any = None

    def _h(self) -> Any:
        if self._e is None:
            raise EngineError(errno.EBADF, "the engine is closed")
        return self._e
