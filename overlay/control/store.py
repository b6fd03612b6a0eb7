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
  order, beginning with every change at or after ``start_revision`` (>= 1;
  an agent passes ``get_prefix``'s revision + 1); a put carries the key's
  ``create_revision``, as ``get`` would return it. A revision that is no
  longer available raises ``Compacted`` (the agent then resynchronises from
  a fresh ``get_prefix``). Errors surface from iterating (the first
  ``__anext__`` at the latest), never from the ``watch()`` call; after an
  error the iterator is finished, and the agent resumes with a new watch
  from the revision after the last event it saw. A watch ends
  (``StopAsyncIteration``) when its ``aclose()`` is called — also from
  another task while a consumer waits in it — or the store is closed;
  ``aclose()`` a watch you stop reading.
* A lease expires ``ttl`` seconds after its grant or last keepalive; its keys
  are then deleted, all in one revision (delete events are delivered to
  watchers). ``keepalive`` returns False once the lease is gone; ``put``
  and ``cas`` naming a lease that is gone raise ``LeaseNotFound``;
  ``lease_revoke`` of a lease that is gone does nothing. etcd rounds a TTL up
  to whole seconds and to its minimum (1.5 election timeouts) and checks
  expiry every 0.5 s; ``MemoryStore`` is exact.
* When the store cannot be reached, calls raise ``StoreUnavailable``; callers
  retry with backoff. No call blocks longer than the store's own timeout.
  Calls on a closed store raise ``StoreError``.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import math
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import Protocol, runtime_checkable

from overlay.errors import ConfigError, OverlayError


class StoreError(OverlayError):
    """Something went wrong talking to the store."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; try again later (with backoff)."""


class LeaseNotFound(StoreError):
    """A put or cas named a lease that has expired or was revoked; grant a new one."""

    def __init__(self, lease: int) -> None:
        self.lease = lease
        super().__init__(f"lease={lease:#x} does not exist (expired or revoked); grant a new lease")


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
    # For puts, the revision that created the key (kept by later puts of it, as
    # KeyValue.create_revision): the store-wide order of first claims, the same
    # on every node whatever order it saw the events in. 0 for deletes.
    create_revision: int = 0


class Watch(Protocol):
    """What ``Store.watch`` returns: an ``AsyncIterator[list[Event]]`` that
    can also be ended early with ``aclose()``.

    ``aclose()`` may be called from another task while a consumer waits in
    ``__anext__``; that consumer then gets ``StopAsyncIteration``. An async
    generator satisfies this protocol too.
    """

    def __aiter__(self) -> Watch: ...

    def __anext__(self) -> Awaitable[list[Event]]: ...

    def aclose(self) -> Awaitable[None]: ...


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

    def watch(self, prefix: bytes, start_revision: int) -> Watch: ...

    async def lease_grant(self, ttl: float) -> int:
        """A new lease id (> 0) expiring ttl seconds from now unless kept alive."""
        ...

    async def lease_keepalive(self, lease: int) -> bool: ...

    async def lease_revoke(self, lease: int) -> None:
        """End the lease now; its keys are deleted."""
        ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------
# MemoryStore


@dataclasses.dataclass
class _Lease:
    ttl: float  # seconds
    deadline: float  # time.monotonic() after which the lease is gone
    keys: set[bytes]


# A lease whose deadline is this close is reaped now: loop timers (uvloop's in
# whole milliseconds) may fire a hair early, and a re-armed 0.3 ms timer helps
# nobody.
_EXPIRY_SLACK_S = 0.002


class MemoryStore:
    """The ``Store`` contract in one process, with etcd's revision model.

    Several agents in one process share one instance (the demo, single-host
    use, tests). It belongs to no event loop: the first loop that calls it is
    the one it serves, and a later loop may take over once the first is done
    (not two at once; it is not thread-safe).

    * Revisions are store-wide: an empty store is at revision 1 and the first
      change makes it 2. A lease that expires or is revoked deletes all its
      keys in one revision, as etcd does.
    * History: the last ``history`` events (at least; trimmed in whole
      revisions) are kept for watches. ``watch`` from an older revision, or a
      watcher so slow that the history moved past it, raises ``Compacted``.
      ``compact(revision)`` drops history explicitly, as etcd's compaction.
    * Watches read the shared history with their own cursor, so a slow
      consumer costs no memory of its own; each ``__anext__`` returns every
      matching event not yet delivered (several revisions at once when the
      consumer lags). A watch ends (``StopAsyncIteration``) when it is
      ``aclose()``-d, also from another task while a consumer waits in it, and
      when the store is closed.
    * Leases expire on a timer of the serving loop: keys are deleted and
      watchers woken at the deadline (within a few milliseconds), not at the
      next call. TTLs may be fractions of a second (etcd rounds up to whole
      seconds).
    * ``set_available(False)`` simulates a store that cannot be reached — a
      partition between the agents and a store that keeps running: every
      call raises ``StoreUnavailable`` and every active watch raises it on its
      next ``__anext__`` (events it had not delivered are not delivered).
      Leases keep expiring meanwhile, as they do on an etcd server that its
      clients cannot reach, so a node cut off for longer than its TTL loses
      its keys; a watch resumed after ``set_available(True)`` from the last
      revision it saw receives those deletes. (A real etcd *restart* differs:
      etcd gives every lease a fresh TTL when it comes back.)
    """

    def __init__(self, *, history: int = 10_000) -> None:
        if history < 1:
            raise ConfigError("history", history, "at least 1 event")
        self._history_max = history
        # Trimming a list from the front copies it; do it in chunks.
        self._history_slack = max(1, history // 8)
        self._rev = 1
        self._kv: dict[bytes, KeyValue] = {}
        self._history: list[Event] = []
        self._first_rev = 1  # every event at or after it is in _history
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        self._due = math.inf  # no lease expires before this (monotonic seconds)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._timer_at = math.inf
        self._waiters: set[asyncio.Future[None]] = set()  # watches waiting for a change
        self._available = True
        self._closed = False

    # -- fault injection and inspection -----------------------------------

    def set_available(self, available: bool) -> None:
        """Make the store unreachable (``False``) or reachable again (``True``).

        While unreachable every call raises ``StoreUnavailable``, active
        watches raise it promptly, and leases go on expiring (see the class
        docstring). Data and history are kept.
        """
        self._available = available
        if not available:
            self._wake()

    @property
    def available(self) -> bool:
        return self._available

    @property
    def revision(self) -> int:
        """The current store revision (no availability check; for tests and the demo)."""
        return self._rev

    # -- the Store protocol ---------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        self._enter()
        return self._kv.get(key)

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        self._enter()
        kvs = sorted((kv for k, kv in self._kv.items() if k.startswith(prefix)), key=_by_key)
        return kvs, self._rev

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        self._enter()
        self._check_lease(lease)
        return self._put(key, value, lease)

    async def cas(
        self, key: bytes, expect_mod_revision: int, value: bytes, lease: int = 0
    ) -> int | None:
        if expect_mod_revision < 0:
            raise ConfigError("expect_mod_revision", expect_mod_revision, "a revision >= 0")
        self._enter()
        current = self._kv.get(key)
        if (current.mod_revision if current is not None else 0) != expect_mod_revision:
            return None
        self._check_lease(lease)
        return self._put(key, value, lease)

    async def delete(self, key: bytes) -> bool:
        self._enter()
        if key not in self._kv:
            return False
        self._rev += 1
        self._record([self._remove(key)])
        return True

    def watch(self, prefix: bytes, start_revision: int) -> Watch:
        """Changes under prefix from start_revision (>= 1) on; see the class docstring.

        Errors (``Compacted``, ``StoreUnavailable``) surface from iteration,
        not from this call; after one, the iterator is finished.
        """
        if start_revision < 1:
            raise ConfigError("start_revision", start_revision, "a revision >= 1")
        return _MemoryWatch(self, prefix, start_revision)

    async def lease_grant(self, ttl: float) -> int:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ConfigError("ttl", ttl, "seconds > 0")
        self._enter()
        lease = self._next_lease
        self._next_lease += 1
        deadline = time.monotonic() + ttl
        self._leases[lease] = _Lease(ttl, deadline, set())
        self._due = min(self._due, deadline)
        self._arm()
        return lease

    async def lease_keepalive(self, lease: int) -> bool:
        self._enter()
        held = self._leases.get(lease)
        if held is None:
            return False
        # Deadlines only move later here, so _due stays a valid lower bound.
        held.deadline = time.monotonic() + held.ttl
        return True

    async def lease_revoke(self, lease: int) -> None:
        """End the lease now and delete its keys; a lease already gone is not an error."""
        self._enter()
        if lease in self._leases:
            self._drop_lease(lease)

    async def close(self) -> None:
        """Stop lease timers and end every watch. Later calls raise ``StoreError``."""
        self._closed = True
        self._cancel_timer()
        self._wake()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- beyond the protocol ------------------------------------------------

    async def compact(self, revision: int) -> None:
        """Forget history before revision, as etcd's compaction: a later watch
        from an older revision raises ``Compacted``. Compacting at or below an
        earlier compaction does nothing."""
        self._enter()
        if not 1 <= revision <= self._rev:
            raise ConfigError("revision", revision, f"1..{self._rev} (the current revision)")
        if revision <= self._first_rev:
            return
        cut = bisect.bisect_left(self._history, revision, key=_by_revision)
        del self._history[:cut]
        self._first_rev = revision

    # -- internals ------------------------------------------------------------

    def _enter(self) -> None:
        """The preamble of every call: closed? expire what is due, reachable?"""
        if self._closed:
            raise StoreError("the MemoryStore is closed")
        self._tick()
        if not self._available:
            raise StoreUnavailable("the MemoryStore is unavailable (set_available(False))")

    def _check_lease(self, lease: int) -> None:
        if lease and lease not in self._leases:
            raise LeaseNotFound(lease)

    def _put(self, key: bytes, value: bytes, lease: int) -> int:
        self._rev += 1
        rev = self._rev
        old = self._kv.get(key)
        if old is not None and old.lease and old.lease != lease:
            old_lease = self._leases.get(old.lease)
            if old_lease is not None:
                old_lease.keys.discard(key)
        if lease:
            self._leases[lease].keys.add(key)
        created = old.create_revision if old is not None else rev
        self._kv[key] = KeyValue(key, value, created, rev, lease)
        self._record([Event("put", key, value, rev, created)])
        return rev

    def _remove(self, key: bytes) -> Event:
        """Delete key at the current revision (the caller has bumped it)."""
        old = self._kv.pop(key)
        if old.lease:
            held = self._leases.get(old.lease)
            if held is not None:
                held.keys.discard(key)
        return Event("delete", key, b"", self._rev)

    def _drop_lease(self, lease: int) -> None:
        held = self._leases.pop(lease)
        keys = sorted(k for k in held.keys if k in self._kv)
        if not keys:
            return  # as etcd: a lease without keys ends without a revision
        self._rev += 1
        self._record([self._remove(k) for k in keys])

    def _record(self, events: list[Event]) -> None:
        self._history.extend(events)
        excess = len(self._history) - self._history_max
        if excess > self._history_slack:
            # Cut whole revisions only: every event at or after _first_rev is kept.
            cut = excess
            while cut < len(self._history) and (
                self._history[cut].mod_revision == self._history[cut - 1].mod_revision
            ):
                cut += 1
            self._first_rev = self._history[cut - 1].mod_revision + 1
            del self._history[:cut]
        self._wake()

    def _events_since(self, revision: int, prefix: bytes) -> list[Event]:
        start = bisect.bisect_left(self._history, revision, key=_by_revision)
        return [e for e in self._history[start:] if e.key.startswith(prefix)]

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(None)

    def _tick(self) -> None:
        """Expire what is due; if a new loop took over, move the expiry timer to it."""
        self._reap()
        if self._leases and self._timer_loop is not _running_loop():
            self._arm()

    def _reap(self) -> None:
        now = time.monotonic() + _EXPIRY_SLACK_S
        if now < self._due:
            return
        expired = sorted(
            (lease.deadline, lease_id)
            for lease_id, lease in self._leases.items()
            if lease.deadline <= now
        )
        for _, lease_id in expired:
            self._drop_lease(lease_id)
        self._due = min((lease.deadline for lease in self._leases.values()), default=math.inf)

    def _arm(self) -> None:
        """Have a timer on the running loop fire at the earliest lease deadline."""
        loop = _running_loop()
        if loop is None:
            return
        if self._due == math.inf:
            self._cancel_timer()
            return
        if self._timer is not None and self._timer_loop is loop and self._timer_at <= self._due:
            return  # it fires early enough; when it does, it re-arms for the rest
        self._cancel_timer()
        self._timer = loop.call_later(max(0.0, self._due - time.monotonic()), self._on_timer)
        self._timer_loop = loop
        self._timer_at = self._due

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        self._timer_at = math.inf
        if timer is not None and self._timer_loop is not None and not self._timer_loop.is_closed():
            timer.cancel()  # a timer of a closed loop never fires anyway

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self._closed:
            return
        self._reap()
        self._arm()


class _MemoryWatch:
    """One ``MemoryStore.watch``: a cursor into the store's history."""

    def __init__(self, store: MemoryStore, prefix: bytes, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = start_revision  # the first revision not yet delivered
        self._done = False
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> _MemoryWatch:
        return self

    async def __anext__(self) -> list[Event]:
        store = self._store
        while True:
            if self._done or store._closed:
                self._done = True
                raise StopAsyncIteration
            if not store._available:
                self._done = True
                raise StoreUnavailable("the MemoryStore is unavailable (set_available(False))")
            store._tick()
            if self._next < store._first_rev:
                self._done = True
                raise Compacted(self._next, store._first_rev)
            if self._next <= store._rev:
                events = store._events_since(self._next, self._prefix)
                self._next = store._rev + 1
                if events:
                    return events
            fut = asyncio.get_running_loop().create_future()
            store._waiters.add(fut)
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None
                store._waiters.discard(fut)

    async def aclose(self) -> None:
        """End the watch; a consumer waiting in ``__anext__`` gets ``StopAsyncIteration``."""
        self._done = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _by_key(kv: KeyValue) -> bytes:
    return kv.key


def _by_revision(event: Event) -> int:
    return event.mod_revision


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
