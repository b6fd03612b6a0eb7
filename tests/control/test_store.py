"""The Store contract, once, against every store on every loop.

Each contract test runs against ``MemoryStore`` and against ``EtcdStore`` on a
real etcd (a fresh one per test, on loopback), each on the stdlib event loop
and on uvloop: what the agent relies on must hold for all four. Tests about
one store only (fault injection of ``MemoryStore``, endpoints of
``EtcdStore``) follow the contract tests.

Timing: etcd leases are whole seconds and its lessor revokes expired leases
every 0.5 s, so lease tests use the shortest TTL each store honours
(``Backend.ttl``) and allow ``Backend.expiry_s`` for the deletes to arrive.
Every test body runs under a deadline, and every wait in it is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from overlay.control.store import (
    Compacted,
    Event,
    KeyValue,
    LeaseNotFound,
    MemoryStore,
    Store,
    StoreError,
    StoreUnavailable,
    Watch,
)
from overlay.errors import ConfigError

if TYPE_CHECKING:
    from overlay.control.etcd import EtcdStore
    from overlay.testing.etcd import EtcdServer

T = TypeVar("T")

TEST_DEADLINE_S = 30.0
ETCD_TIMEOUT_S = 2.0  # EtcdStore's call timeout in these tests

Runner = Callable[[Callable[[], Awaitable[T]]], T]


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def run_on(kind: str, main: Callable[[], Awaitable[T]]) -> T:
    """Run main() on a new loop of that kind, under the test deadline; close the loop.

    Fails the test if the loop reported an error nobody handled (a task's
    exception never retrieved, a callback that raised — e.g. gRPC finishing a
    call of an earlier, closed loop).
    """
    loop = _new_loop(kind)
    unhandled: list[str] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(str(context)))

    async def bounded() -> T:
        return await asyncio.wait_for(main(), TEST_DEADLINE_S)

    try:
        result = loop.run_until_complete(bounded())
    finally:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert not unhandled, f"the loop reported unhandled errors: {unhandled}"
    return result


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    kind: str = request.param
    return lambda main: run_on(kind, main)


@dataclasses.dataclass
class Backend:
    """One kind of store, with what it takes to make one and to take it away."""

    kind: str
    ttl: float  # the shortest lease TTL (s) this store honours exactly
    expiry_s: float  # how late after the TTL a lease's deletes may arrive
    request: pytest.FixtureRequest
    server: EtcdServer | None = None

    def store(self) -> MemoryStore | EtcdStore:
        """A new, empty store (for etcd: on a fresh server of this test)."""
        if self.kind == "memory":
            return MemoryStore()
        pytest.importorskip("aetcd")
        from overlay.control.etcd import EtcdStore

        if self.server is None:
            self.server = self.request.getfixturevalue("overlay_etcd")
        return EtcdStore([self.server.endpoint], timeout=ETCD_TIMEOUT_S)

    def outage(self, store: Store) -> None:
        """Take the store away: unreachable (memory) or killed (etcd)."""
        if isinstance(store, MemoryStore):
            store.set_available(False)
        else:
            assert self.server is not None
            self.server.kill()

    def recover(self, store: Store) -> None:
        """Bring it back: reachable again, or restarted on the same ports and data."""
        if isinstance(store, MemoryStore):
            store.set_available(True)
        else:
            assert self.server is not None
            self.server.start()


@pytest.fixture(params=["memory", "etcd"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Backend("memory", ttl=0.3, expiry_s=0.25, request=request)
    # TTL 1 s is etcd's shortest; expiry checks run every 0.5 s, plus raft.
    return Backend("etcd", ttl=1.0, expiry_s=1.0, request=request)


async def collect(watch: Watch, n: int, timeout: float = 5.0) -> list[Event]:
    """At least n events from watch, within timeout."""
    events: list[Event] = []

    async def fill() -> None:
        while len(events) < n:
            events.extend(await anext(watch))

    await asyncio.wait_for(fill(), timeout)
    return events


async def quiet(watch: Watch, seconds: float = 0.3) -> None:
    """Assert watch delivers nothing for a while (and stays usable)."""
    with pytest.raises(asyncio.TimeoutError):
        got = await asyncio.wait_for(anext(watch), seconds)
        pytest.fail(f"unexpected events {got}")


async def eventually(call: Callable[[], Awaitable[T]], within: float = 5.0) -> T:
    """call() retried on StoreUnavailable, as an agent does, for at most within seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until predicate() holds, for at most within seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def put(key: bytes, value: bytes, rev: int, created: int | None = None) -> Event:
    """A put at rev of a key created at ``created`` (default: created by this put)."""
    return Event("put", key, value, rev, rev if created is None else created)


def deleted(key: bytes, rev: int) -> Event:
    return Event("delete", key, b"", rev)


# --------------------------------------------------------------------------
# The contract: every store, every loop


def test_fresh_store_starts_at_revision_1_and_each_change_adds_one(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            assert isinstance(store, Store)
            assert await store.get_prefix(b"") == ([], 1)
            assert await store.put(b"/a", b"1") == 2
            assert await store.delete(b"/a") is True  # 3
            assert await store.delete(b"/a") is False  # not a change
            assert await store.cas(b"/a", 2, b"x") is None  # not a change
            assert await store.put(b"/b", b"2") == 4
            assert (await store.get_prefix(b""))[1] == 4

    run(main)


def test_get_returns_value_with_create_and_mod_revisions(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            key = b"/k/\x00\xffbinary"
            r1 = await store.put(key, b"v1\x00")
            assert await store.get(key) == KeyValue(key, b"v1\x00", r1, r1, 0)
            r2 = await store.put(key, b"v2")
            assert r2 == r1 + 1
            assert await store.get(key) == KeyValue(key, b"v2", r1, r2, 0)
            assert await store.get(b"/k/missing") is None
            await store.delete(key)
            r4 = await store.put(key, b"again")
            assert await store.get(key) == KeyValue(key, b"again", r4, r4, 0)

    run(main)


def test_get_prefix_is_sorted_by_key_and_carries_the_read_revision(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            for key in (b"/p/c", b"/pa", b"/p/a", b"/q", b"/p/b/x", b"/p\xff", b"/p\xff\x01"):
                last = await store.put(key, key.upper())
            kvs, rev = await store.get_prefix(b"/p/")
            assert [kv.key for kv in kvs] == [b"/p/a", b"/p/b/x", b"/p/c"]
            assert [kv.value for kv in kvs] == [b"/P/A", b"/P/B/X", b"/P/C"]
            assert rev == last
            kvs, _ = await store.get_prefix(b"/p\xff")  # no "next" key after 0xff
            assert [kv.key for kv in kvs] == [b"/p\xff", b"/p\xff\x01"]
            kvs, _ = await store.get_prefix(b"")
            assert len(kvs) == 7
            assert [kv.key for kv in kvs] == sorted(kv.key for kv in kvs)
            assert await store.get_prefix(b"/none/") == ([], last)

    run(main)


def test_cas_creates_updates_and_refuses_stale_revisions(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            key = b"/subnets/100/10.244.1.0_24"
            created = await store.cas(key, 0, b"node-a")
            assert created is not None
            assert await store.cas(key, 0, b"node-b") is None  # exists already
            assert await store.cas(b"/other", 5, b"x") is None  # missing key, revision given
            updated = await store.cas(key, created, b"node-c")
            assert updated == created + 1
            assert await store.cas(key, created, b"node-d") is None  # stale
            assert await store.get(key) == KeyValue(key, b"node-c", created, updated, 0)
            assert await store.get(b"/other") is None
            await store.delete(key)
            again = await store.cas(key, 0, b"node-e")
            assert again is not None and again > updated

    run(main)


def test_delete_reports_whether_the_key_existed(backend: Backend, run: Runner[None]) -> None:
    async def main() -> None:
        async with backend.store() as store:
            await store.put(b"/d/a", b"1")
            await store.put(b"/d/ab", b"2")
            assert await store.delete(b"/d/a") is True
            assert await store.get(b"/d/a") is None
            assert await store.get(b"/d/ab") is not None  # a key, not a prefix
            assert await store.delete(b"/d/a") is False

    run(main)


def test_watch_replays_history_then_follows_live_changes(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            r1 = await store.put(b"/w/a", b"1")
            await store.put(b"/x/outside", b"no")
            r3 = await store.put(b"/w/b", b"2")
            r4 = await store.put(b"/w/a", b"3")
            watch = store.watch(b"/w/", r1)
            assert await collect(watch, 3) == [
                put(b"/w/a", b"1", r1),
                put(b"/w/b", b"2", r3),
                put(b"/w/a", b"3", r4, created=r1),
            ]
            assert await store.delete(b"/w/b") is True
            r5 = r4 + 1
            r6 = await store.put(b"/w/c", b"4")
            assert await collect(watch, 2) == [deleted(b"/w/b", r5), put(b"/w/c", b"4", r6)]
            await store.put(b"/x/outside", b"still no")
            await quiet(watch)
            await watch.aclose()

            later = store.watch(b"/w/", r4)  # from the middle of history
            assert await collect(later, 3) == [
                put(b"/w/a", b"3", r4, created=r1),
                deleted(b"/w/b", r5),
                put(b"/w/c", b"4", r6),
            ]
            await later.aclose()
            with pytest.raises(ConfigError, match="start_revision"):
                store.watch(b"/w/", 0)

    run(main)


def test_watch_delivers_deletes_when_a_lease_expires(backend: Backend, run: Runner[None]) -> None:
    async def main() -> None:
        async with backend.store() as store:
            loop = asyncio.get_running_loop()
            lease = await store.lease_grant(backend.ttl)
            assert lease > 0
            granted = loop.time()
            r1 = await store.put(b"/l/a", b"1", lease=lease)
            r2 = await store.put(b"/l/b", b"2", lease=lease)
            await store.put(b"/l/kept", b"3")
            assert (await store.get(b"/l/a")) == KeyValue(b"/l/a", b"1", r1, r1, lease)
            watch = store.watch(b"/l/", r2 + 1)
            events = await collect(watch, 3, timeout=backend.ttl + backend.expiry_s + 2)
            gone_after = loop.time() - granted
            # Both keys go in one revision, after the one that put /l/kept.
            assert events[1:] == [deleted(b"/l/a", r2 + 2), deleted(b"/l/b", r2 + 2)]
            assert backend.ttl - 0.05 <= gone_after <= backend.ttl + backend.expiry_s
            assert await store.get(b"/l/a") is None
            assert await store.get(b"/l/kept") is not None
            assert await store.lease_keepalive(lease) is False
            with pytest.raises(LeaseNotFound):
                await store.put(b"/l/c", b"x", lease=lease)
            with pytest.raises(LeaseNotFound):
                await store.cas(b"/l/c", 0, b"x", lease=lease)
            await watch.aclose()

    run(main)


def test_keepalive_keeps_leased_keys_alive(backend: Backend, run: Runner[None]) -> None:
    async def main() -> None:
        async with backend.store() as store:
            loop = asyncio.get_running_loop()
            lease = await store.lease_grant(backend.ttl)
            rev = await store.put(b"/k/node", b"n", lease=lease)
            watch = store.watch(b"/k/", rev + 1)
            until = loop.time() + 2.5 * backend.ttl
            while loop.time() < until:
                assert await store.lease_keepalive(lease) is True
                await asyncio.sleep(backend.ttl / 4)
            assert (await store.get(b"/k/node")) is not None
            await quiet(watch, 0.05)
            stopped = loop.time()
            assert await collect(watch, 1, timeout=backend.ttl + backend.expiry_s + 2) == [
                deleted(b"/k/node", rev + 1)
            ]
            assert loop.time() - stopped <= backend.ttl + backend.expiry_s
            await watch.aclose()

    run(main)


def test_revoke_deletes_the_leases_keys_at_once(backend: Backend, run: Runner[None]) -> None:
    async def main() -> None:
        async with backend.store() as store:
            lease = await store.lease_grant(60)
            other = await store.lease_grant(60)
            await store.put(b"/r/b", b"1", lease=lease)
            await store.put(b"/r/a", b"2", lease=lease)
            rev = await store.put(b"/r/c", b"3", lease=other)
            # Re-putting a key under another lease moves it there.
            await store.put(b"/r/a", b"4", lease=other)
            watch = store.watch(b"/r/", rev + 2)
            await store.lease_revoke(lease)
            assert await collect(watch, 1, timeout=2) == [deleted(b"/r/b", rev + 2)]
            assert await store.get(b"/r/b") is None
            assert (await store.get(b"/r/a")) is not None
            assert await store.lease_keepalive(lease) is False
            await store.lease_revoke(lease)  # gone already: not an error
            await store.lease_revoke(other)
            assert await collect(watch, 2, timeout=2) == [
                deleted(b"/r/a", rev + 3),
                deleted(b"/r/c", rev + 3),
            ]
            empty = await store.lease_grant(60)
            await store.lease_revoke(empty)  # no keys: no revision
            assert (await store.get_prefix(b""))[1] == rev + 3
            await watch.aclose()

    run(main)


def test_watch_from_a_compacted_revision_raises_compacted(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            for i in range(5):
                rev = await store.put(b"/c/k", str(i).encode())
            await store.compact(rev - 1)
            await store.compact(rev - 2)  # below the last compaction: nothing to do
            old = store.watch(b"/c/", 2)
            with pytest.raises(Compacted) as caught:
                await asyncio.wait_for(anext(old), 5)
            assert (caught.value.revision, caught.value.compact_revision) == (2, rev - 1)
            with pytest.raises(StopAsyncIteration):  # finished after the error
                await anext(old)
            kept = store.watch(b"/c/", rev - 1)  # the compaction revision itself is kept
            assert await collect(kept, 2) == [
                put(b"/c/k", b"3", rev - 1, created=rev - 4),
                put(b"/c/k", b"4", rev, created=rev - 4),
            ]
            await kept.aclose()
            with pytest.raises(ConfigError, match="revision"):
                await store.compact(rev + 10)

    run(main)


def test_a_slow_consumer_loses_nothing(backend: Backend, run: Runner[None]) -> None:
    async def main() -> None:
        async with backend.store() as store:
            first = await store.put(b"/s/start", b"")
            watch = store.watch(b"/s/", first)
            assert await collect(watch, 1) == [put(b"/s/start", b"", first)]
            # Not read while written: etcd's stream backs up into gRPC flow control.
            revs = [await store.put(b"/s/%03d" % i, b"v%d" % i) for i in range(300)]
            events = await collect(watch, 300, timeout=10)
            assert events == [put(b"/s/%03d" % i, b"v%d" % i, r) for i, r in enumerate(revs)]
            await watch.aclose()

    run(main)


def test_watch_ends_on_aclose_and_on_store_close(backend: Backend, run: Runner[None]) -> None:
    async def main() -> None:
        store = backend.store()
        got: list[Event] = []

        async def consume(watch: Watch) -> str:
            async for batch in watch:
                got.extend(batch)
            return "ended"

        rev = await store.put(b"/e/a", b"1")
        first = store.watch(b"/e/", rev)
        task = asyncio.get_running_loop().create_task(consume(first))
        await until(lambda: bool(got))  # the consumer is in the loop
        loop = asyncio.get_running_loop()
        started = loop.time()
        await first.aclose()  # from another task
        assert await asyncio.wait_for(task, 2) == "ended"
        assert loop.time() - started < 0.5  # promptly, not by a timeout

        # A consumer that gave up waiting (timeout) can go on using the watch.
        second = store.watch(b"/e/", rev + 1)
        await quiet(second, 0.2)
        await store.put(b"/e/b", b"2")
        assert await collect(second, 1) == [put(b"/e/b", b"2", rev + 1)]
        task = asyncio.get_running_loop().create_task(consume(second))
        await asyncio.sleep(0.1)
        await store.close()
        assert await asyncio.wait_for(task, 2) == "ended"
        with pytest.raises(StopAsyncIteration):
            await anext(store.watch(b"/e/", 1))
        with pytest.raises(StoreError, match="closed"):
            await store.get(b"/e/a")
        await store.close()  # twice is fine

    run(main)


def test_watches_opened_together_end_promptly_and_independently(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            loop = asyncio.get_running_loop()
            rev = await store.put(b"/t/x", b"0")
            watches = [store.watch(b"/t/", rev) for _ in range(6)]
            # Opened at the same moment, as agents sharing a store do.
            batches = await asyncio.wait_for(asyncio.gather(*(anext(w) for w in watches)), 5)
            assert batches == [[put(b"/t/x", b"0", rev)]] * 6
            for i, w in enumerate(watches[:3]):
                started = loop.time()
                await w.aclose()
                assert loop.time() - started < 0.5, f"aclose of watch {i} waited"
            r2 = await store.put(b"/t/x", b"1")
            for w in watches[3:]:
                assert await collect(w, 1) == [put(b"/t/x", b"1", r2, created=rev)]
            started = loop.time()
            await store.close()  # ends the rest
            assert loop.time() - started < 0.5

    run(main)


def test_unavailable_store_raises_and_a_resumed_watch_catches_up(
    backend: Backend, run: Runner[None]
) -> None:
    async def main() -> None:
        async with backend.store() as store:
            loop = asyncio.get_running_loop()
            r1 = await store.put(b"/f/a", b"1")
            lease = await store.lease_grant(backend.ttl)
            r2 = await store.put(b"/f/leased", b"2", lease=lease)
            watch = store.watch(b"/f/", r1)
            assert await collect(watch, 2) == [
                put(b"/f/a", b"1", r1),
                put(b"/f/leased", b"2", r2),
            ]
            pending = asyncio.ensure_future(anext(watch))
            await asyncio.sleep(0.05)

            backend.outage(store)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(pending, 3)
            for call in (
                lambda: store.get(b"/f/a"),
                lambda: store.get_prefix(b"/f/"),
                lambda: store.put(b"/f/b", b"x"),
                lambda: store.cas(b"/f/b", 0, b"x"),
                lambda: store.delete(b"/f/a"),
                lambda: store.lease_grant(5),
                lambda: store.lease_keepalive(lease),
                lambda: anext(store.watch(b"/f/", r1)),
            ):
                started = loop.time()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert loop.time() - started < ETCD_TIMEOUT_S + 0.5
            if isinstance(store, MemoryStore):
                # A partition: the store keeps running, and leases expire there.
                await asyncio.sleep(backend.ttl + backend.expiry_s)
            backend.recover(store)

            r3 = await eventually(lambda: store.put(b"/f/b", b"3"))
            lease_kept = await store.lease_keepalive(lease)
            r4 = await store.put(b"/f/c", b"4")
            await store.delete(b"/f/a")
            resumed = store.watch(b"/f/", r2 + 1)
            expected = [put(b"/f/b", b"3", r3), put(b"/f/c", b"4", r4), deleted(b"/f/a", r4 + 1)]
            if isinstance(store, MemoryStore):
                # The lease expired during the outage; the resumed watch sees it.
                assert lease_kept is False
                expected.insert(0, deleted(b"/f/leased", r2 + 1))
            else:
                # A restarted etcd gives every lease its full TTL again.
                assert lease_kept is True
            assert await collect(resumed, len(expected)) == expected
            await resumed.aclose()

    run(main)


# --------------------------------------------------------------------------
# MemoryStore only


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_memory_set_available_fails_calls_and_watches_until_restored(loop_kind: str) -> None:
    async def main() -> None:
        store = MemoryStore()
        rev = await store.put(b"/m/a", b"1")
        watch = store.watch(b"/m/", rev)
        assert await collect(watch, 1) == [put(b"/m/a", b"1", rev)]
        waiting = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.01)
        assert store.available
        store.set_available(False)
        assert not store.available
        with pytest.raises(StoreUnavailable, match="set_available"):
            await asyncio.wait_for(waiting, 0.5)  # woken at once, not at the next change
        with pytest.raises(StopAsyncIteration):
            await anext(watch)
        with pytest.raises(StoreUnavailable):
            await store.lease_revoke(1)
        store.set_available(True)
        assert await store.put(b"/m/b", b"2") == rev + 1
        await store.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_memory_history_is_bounded_and_slow_watchers_get_compacted(loop_kind: str) -> None:
    async def main() -> None:
        store = MemoryStore(history=10)
        revs = [await store.put(b"/h/k", b"%d" % i) for i in range(40)]
        with pytest.raises(Compacted) as caught:
            await anext(store.watch(b"/h/", revs[0]))
        oldest = caught.value.compact_revision
        assert revs[0] < oldest <= revs[-10]  # the last 10 are always kept
        tail = store.watch(b"/h/", oldest)
        assert [e.mod_revision for e in await collect(tail, 1)] == list(range(oldest, revs[-1] + 1))
        # A watcher that stops reading falls out of the history.
        slow = store.watch(b"/h/", revs[-1] + 1)
        await quiet(slow, 0.01)
        for i in range(40):
            await store.put(b"/h/k", b"more%d" % i)
        with pytest.raises(Compacted) as caught:
            await anext(slow)
        assert caught.value.revision == revs[-1] + 1
        await store.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("first,second", [("asyncio", "uvloop"), ("uvloop", "asyncio")])
def test_memory_store_serves_a_new_loop_when_the_first_is_gone(first: str, second: str) -> None:
    store = MemoryStore()
    ttl = 0.3

    async def on_first() -> int:
        lease = await store.lease_grant(ttl)
        return await store.put(b"/n/a", b"1", lease=lease)

    rev = run_on(first, on_first)

    async def on_second() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Only a watch runs on this loop: it must move the expiry timer here.
        watch = store.watch(b"/n/", rev + 1)
        assert await collect(watch, 1, timeout=2) == [deleted(b"/n/a", rev + 1)]
        assert loop.time() - started < ttl + 0.25
        await store.close()

    run_on(second, on_second)


def test_memory_store_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="history"):
        MemoryStore(history=0)

    async def main() -> None:
        async with MemoryStore() as store:
            with pytest.raises(ConfigError, match="ttl"):
                await store.lease_grant(0)
            with pytest.raises(ConfigError, match="revision"):
                await store.compact(0)

    run_on("asyncio", main)


# --------------------------------------------------------------------------
# EtcdStore only


@pytest.fixture
def etcd_store_module() -> Iterator[Any]:
    pytest.importorskip("aetcd")
    from overlay.control import etcd as module

    yield module


def test_etcd_moves_to_the_next_endpoint_when_one_is_down(
    etcd_store_module: Any, overlay_etcd_session: EtcdServer
) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    store = etcd_store_module.EtcdStore(
        [dead, overlay_etcd_session.endpoint], timeout=ETCD_TIMEOUT_S
    )

    async def main() -> None:
        key = b"/failover/test"
        with pytest.raises(StoreUnavailable, match=dead):
            await store.put(key, b"1")
        assert store.endpoint == dead  # the failed call does not retry by itself
        await store.put(key, b"2")
        assert store.endpoint == overlay_etcd_session.endpoint
        assert (await store.get(key)) is not None
        await store.delete(key)
        await store.close()

    run_on("asyncio", main)


def test_etcd_store_rejects_bad_configuration(etcd_store_module: Any) -> None:
    EtcdStore = etcd_store_module.EtcdStore
    for endpoints in ([], ["ftp://127.0.0.1:2379"], ["127.0.0.1"], ["http://:2379/"]):
        with pytest.raises(ConfigError, match="endpoints"):
            EtcdStore(endpoints)
    with pytest.raises(ConfigError, match="timeout"):
        EtcdStore(timeout=0)
    assert EtcdStore("127.0.0.1:2379").endpoint == "127.0.0.1:2379"
