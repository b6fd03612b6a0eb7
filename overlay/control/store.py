"""The store the control plane keeps desired state in: one small async protocol.

Design notes. The agent needs exactly what etcd v3 gives and nothing more:
get, put, compare-and-swap on a key's modification revision, delete, a
watch of a key prefix from a revision, and leases with a TTL that take their
keys with them when they expire. ``Store`` is that protocol; ``MemoryStore``
implements it in-process (the embedded default: the demo, single-host use
and most tests, several agents sharing one store), and
``overlay.control.etcd.EtcdStore`` implements it on a real etcd 3.4+.

Semantics shared by both (the contract tests run against both):

* Keys and values are ``bytes``. Revisions are store-wide, start at 1 and
  grow by one for every change (put or delete) — etcd's model.
* ``cas(key, expect_mod_revision, value)``: writes only if the key's
  ``mod_revision`` equals ``expect_mod_revision``; 0 means "the key must not
  exist" (create). Returns the new revision, or ``None`` when the comparison
  failed (nothing written).
* ``watch(prefix, start_revision)`` yields lists of ``Event`` in revision
  order, beginning with every change at or after ``start_revision``. A
  revision that is no longer available raises ``Compacted`` (the agent then
  resynchronises from a fresh ``get_prefix``).
* A lease expires ``ttl`` seconds after its grant or last keepalive; its keys
  are then deleted (delete events are delivered to watchers).
  ``keepalive`` returns False once the lease is gone.
* When the store cannot be reached, calls raise ``StoreUnavailable``; callers
  retry with backoff. No call blocks longer than the store's own timeout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from overlay.errors import OverlayError


class StoreError(OverlayError):
    """Something went wrong talking to the store."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; try again later (with backoff)."""


class Compacted(StoreError):
    """A watch asked for a revision the store no longer keeps."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(
            f"revision {revision} is compacted (oldest kept: {compact_revision}); resync"
        )


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0  # 0: no lease


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # "put" or "delete"
    key: bytes
    value: bytes  # empty for deletes
    mod_revision: int  # the revision of this change


@runtime_checkable
class Store(Protocol):
    """What the agent needs from a store (see the module docstring for semantics)."""

    async def get(self, key: bytes) -> KeyValue | None: ...

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under prefix (sorted by key) and the store revision they were read at."""
        ...

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write; returns the new revision."""
        ...

    async def cas(
        self, key: bytes, expect_mod_revision: int, value: bytes, lease: int = 0
    ) -> int | None: ...

    async def delete(self, key: bytes) -> bool:
        """Remove key; True when it existed."""
        ...

    def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[Event]]: ...

    async def lease_grant(self, ttl: float) -> int:
        """A new lease id (> 0) expiring ttl seconds from now unless kept alive."""
        ...

    async def lease_keepalive(self, lease: int) -> bool: ...

    async def lease_revoke(self, lease: int) -> None:
        """End the lease now; its keys are deleted."""
        ...

    async def close(self) -> None: ...
