"""``EtcdStore``: the ``Store`` contract on a real etcd (v3 API, 3.4+), through aetcd.

Why etcd. A cluster's agents need one linearizable place for desired state
with exactly the primitives of ``overlay.control.store``: compare-and-swap on
a key's modification revision (subnet and address leases without a lock
service), leases that take a dead node's keys with them, and watches that
resume from a revision, so an agent that was cut off replays what it missed
instead of re-reading everything. etcd has all three natively, and flannel
and Calico run on it, so operators already know how to run and back it up.

How watches resume. Every event carries the store revision of its change.
The agent reads a snapshot with ``get_prefix`` (which returns the revision it
was read at) and watches from that revision + 1; when a watch fails —
etcd restarted, the connection dropped, the timeout expired — it raises
``StoreUnavailable`` and the agent opens a new watch from the revision after
the last event it handled. etcd keeps history until it is compacted; if the
revision is already compacted the watch raises ``Compacted`` and the agent
resynchronises from a fresh ``get_prefix``. Nothing is lost either way.

Design notes.

* aetcd does the unary calls (get, put, delete, leases, compaction). The
  compare-and-swap transaction and the watch talk to etcd's gRPC stubs on
  aetcd's channel directly: aetcd's ``transaction()`` drops the response
  header (the new revision), and its shared watcher flattens responses into
  single events, reports a compacted start revision only as a timeout and
  cannot be closed from another task. Here each ``watch()`` is its own gRPC
  stream, read by a task into a small bounded queue: a slow consumer stops
  the reader, gRPC flow control then holds etcd back, and nothing piles up
  in this process.
* Reconnection is gRPC's: the channel reconnects by itself, with the backoff
  capped at 1 s (gRPC's default grows to two minutes, which would keep an
  agent offline long after etcd is back). Calls while etcd is down fail at
  once with ``StoreUnavailable``; watches fail and are resumed by the caller.
  With several endpoints, a call that finds its endpoint unreachable moves
  the store to the next one for the following calls.
* Every call is bounded by ``timeout`` (gRPC deadline, and ``asyncio.wait_for``
  over the whole call including connecting). Watches wait for events for as
  long as it takes, but gRPC pings (keepalive every 10 s while a stream is
  open; any ping unanswered within ``timeout`` drops the connection) end a
  watch whose etcd went silent — frozen or cut off, with no TCP reset — in
  at most ~10 s + ``timeout``. (gRPC's ``keepalive_timeout`` alone does not:
  an unanswered ping waits for ``http2.ping_timeout``, one minute by default.)
* The gRPC channel belongs to the event loop that first used the store
  (stdlib asyncio or uvloop); using the store from another loop raises
  ``StoreError``. Make one store per loop, and ``close()`` it before its
  loop ends: gRPC finishes cancelled streams a moment after the cancel, and
  ``close()`` (like a watch's ``aclose()``) waits for that (see ``_Stream``).
* etcd lease TTLs are whole seconds: ``lease_grant(0.3)`` asks for 1 s, and
  etcd raises a TTL below its minimum (1.5 election timeouts: 1.5 s with the
  default ``--election-timeout=1000``). Expired leases are revoked by etcd's
  lessor every 0.5 s, so deletes arrive up to ~0.5 s after the TTL. When etcd
  restarts (or a new leader is elected) every lease gets its full TTL again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc

from overlay.control.store import (
    Compacted,
    Event,
    KeyValue,
    LeaseNotFound,
    StoreError,
    StoreUnavailable,
    Watch,
)
from overlay.errors import ConfigError

T = TypeVar("T")

DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)

_KEEPALIVE_MS = 10_000  # etcd refuses pings more often than every 5 s by default
_MAX_MESSAGE_BYTES = 64 << 20  # a get_prefix of a large cluster exceeds gRPC's 4 MiB default
_WATCH_QUEUE = 16  # watch responses buffered per watch before gRPC flow control holds etcd

# Status codes that mean "etcd is not reachable or not serving now": retry later.
_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,  # e.g. "Stream removed" when the connection breaks
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # "etcdserver: too many requests"
    }
)


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint if "://" in endpoint else "http://" + endpoint
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as e:
        raise ConfigError("endpoints", endpoint, f"http://HOST:PORT ({e})") from None
    if url.scheme != "http":
        raise ConfigError("endpoints", endpoint, "http://HOST:PORT (TLS is not supported yet)")
    if not url.hostname or port is None or url.path not in ("", "/"):
        raise ConfigError("endpoints", endpoint, "http://HOST:PORT, e.g. http://127.0.0.1:2379")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return host, port


def _prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for every key starting with prefix."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        # Every key (b"" or only 0xff bytes): key "\0" with range_end "\0" means
        # "all keys >= key" in etcd (an empty key is not allowed).
        return (prefix or b"\0"), b"\0"
    return prefix, stripped[:-1] + bytes([stripped[-1] + 1])


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        lease=kv.lease,
    )


class _Stream:
    """A gRPC streaming call and gRPC's own status task for it, so it can be ended cleanly.

    grpc.aio runs one internal task per streaming call that waits for the
    call's final status. A local ``cancel()`` sets the status at once, but
    that task finishes only when gRPC's core reports the cancellation a
    moment later; if the loop is closed first, gRPC delivers the completion
    to the closed loop and logs "Event loop is closed" on whichever loop runs
    next. So ``end()`` waits for that task.

    Cython's coroutines carry nothing that links the task to its call, so it
    is recognised as the status task that appeared while the stream opened
    (gRPC creates it before the first ``write`` returns). Streams therefore
    open one at a time per event loop — across every ``EtcdStore`` on it —
    or two watches opening together (several agents sharing a loop) would
    take each other's task, and ``aclose()`` would wait for a stream that is
    still open. The lock is held from the call's creation to its first
    write: microseconds, unless etcd does not take the write.
    """

    def __init__(self, make_call: Callable[[], Any]) -> None:
        self._make_call = make_call
        self.call: Any = None
        self._status_tasks: list[asyncio.Task[Any]] = []

    async def open(self, first_message: Any, timeout: float) -> None:
        """Start the call and send its first message."""
        async with _open_lock():
            before = set(_grpc_status_tasks())
            self.call = self._make_call()
            try:
                await asyncio.wait_for(self.call.write(first_message), timeout)
            finally:
                self._status_tasks = [t for t in _grpc_status_tasks() if t not in before]

    async def end(self, timeout: float) -> None:
        """Cancel the call (if still running) and wait until gRPC is done with it."""
        if self.call is None:
            return
        self.call.cancel()
        pending = [t for t in self._status_tasks if not t.done()]
        if pending:
            # Core reports a cancel within microseconds; the bound is for safety.
            await asyncio.wait(pending, timeout=min(timeout, 1.0))


_open_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _open_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _open_locks.get(loop)
    if lock is None:
        lock = _open_locks[loop] = asyncio.Lock()
    return lock


def _grpc_status_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done()
        and getattr(t.get_coro(), "__qualname__", "") == "_AioCall._handle_status_once_received"
    ]


def _grpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error behind exc (aetcd raises its own errors ``from`` it)."""
    for e in (exc, exc.__cause__):
        if isinstance(e, grpc.aio.AioRpcError):
            return e
    return None


class EtcdStore:
    """The ``Store`` protocol on etcd; see the module docstring.

    ``endpoints``: ``http://HOST:PORT`` URLs of the cluster's members (the
    first is used until it fails). ``timeout``: seconds any call may take.
    Nothing is connected until the first call.
    """

    def __init__(self, endpoints: Sequence[str] = DEFAULT_ENDPOINTS, timeout: float = 5.0) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ConfigError("endpoints", endpoints, "at least one http://HOST:PORT")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError("timeout", timeout, "seconds > 0")
        self._endpoints = [_parse_endpoint(e) for e in endpoints]
        self._endpoint_urls = list(endpoints)
        self._timeout = timeout
        self._index = 0
        self._client: aetcd.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed = False  # the current endpoint failed: next call tries the next one
        self._watches: set[_EtcdWatch] = set()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self._endpoint_urls[self._index]

    @property
    def timeout(self) -> float:
        return self._timeout

    # -- the Store protocol ---------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        got = await self._call(lambda c: c.get(key))
        return None if got is None else _key_value(got)

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        start, end = _prefix_range(prefix)
        got = await self._call(lambda c: c.get_range(start, end, sort_order="ascend"))
        return [_key_value(kv) for kv in got.kvs], int(got.header.revision)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        done = await self._call(lambda c: c.put(key, value, lease=lease), lease=lease)
        return int(done.header.revision)

    async def cas(
        self, key: bytes, expect_mod_revision: int, value: bytes, lease: int = 0
    ) -> int | None:
        if expect_mod_revision < 0:
            raise ConfigError("expect_mod_revision", expect_mod_revision, "a revision >= 0")
        if expect_mod_revision == 0:  # create: the key must not exist
            compare = rpc.Compare(
                key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, version=0
            )
        else:
            compare = rpc.Compare(
                key=key,
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.MOD,
                mod_revision=expect_mod_revision,
            )
        request = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))],
            failure=[],
        )

        async def txn(c: aetcd.Client) -> Any:
            await c.connect()
            return await c.kvstub.Txn(request, timeout=self._timeout, metadata=c.metadata)

        response = await self._call(txn, lease=lease)
        return int(response.header.revision) if response.succeeded else None

    async def delete(self, key: bytes) -> bool:
        return await self._call(lambda c: c.delete(key)) is not None

    def watch(self, prefix: bytes, start_revision: int) -> Watch:
        """Changes under prefix from start_revision (>= 1) on; see the module docstring.

        The gRPC stream opens on the first ``__anext__``; errors surface there
        or later, never from this call.
        """
        if start_revision < 1:
            raise ConfigError("start_revision", start_revision, "a revision >= 1")
        return _EtcdWatch(self, prefix, start_revision)

    async def lease_grant(self, ttl: float) -> int:
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ConfigError("ttl", ttl, "seconds > 0")
        lease = await self._call(lambda c: c.lease(max(1, math.ceil(ttl))))
        return int(lease.id)

    async def lease_keepalive(self, lease: int) -> bool:
        async def keepalive(c: aetcd.Client) -> Any:
            # One request on a LeaseKeepAlive stream, then the stream is closed
            # and drained: aetcd's refresh_lease leaves it open, and gRPC then
            # completes its operations after the caller may have closed its loop.
            await c.connect()
            stream = _Stream(
                lambda: c.leasestub.LeaseKeepAlive(timeout=self._timeout, metadata=c.metadata)
            )
            try:
                await stream.open(rpc.LeaseKeepAliveRequest(ID=lease), self._timeout)
                await stream.call.done_writing()
                reply = await stream.call.read()
                while (await stream.call.read()) is not grpc.aio.EOF:
                    pass
                return reply
            finally:
                await stream.end(self._timeout)

        reply = await self._call(keepalive)
        return reply is not grpc.aio.EOF and reply.TTL > 0

    async def lease_revoke(self, lease: int) -> None:
        """End the lease now and delete its keys; a lease already gone is not an error."""
        with contextlib.suppress(LeaseNotFound):
            await self._call(lambda c: c.revoke_lease(lease), lease=lease)

    async def close(self) -> None:
        """End every watch and close the connection. Later calls raise ``StoreError``."""
        self._closed = True
        for w in list(self._watches):
            await w.aclose()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self._timeout)

    async def __aenter__(self) -> EtcdStore:
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
        """Compact etcd's history before revision (watches from older revisions then
        raise ``Compacted``). Compacting at or below an earlier compaction does nothing."""
        try:
            await self._call(lambda c: c.compact(revision))
        except StoreError as e:
            err = _grpc_error(e.__cause__) if e.__cause__ is not None else None
            if err is None or err.code() != grpc.StatusCode.OUT_OF_RANGE:
                raise
            if "future revision" in (err.details() or ""):
                raise ConfigError(
                    "revision", revision, "at most the store's current revision"
                ) from None
            # "required revision has been compacted": already done.

    # -- internals ------------------------------------------------------------

    async def _client_for_call(self) -> aetcd.Client:
        if self._closed:
            raise StoreError("the EtcdStore is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop and self._client is not None:
            raise StoreError(
                "this EtcdStore is bound to the event loop that first used it; "
                "make one EtcdStore per event loop"
            )
        if self._client is not None and self._failed and len(self._endpoints) > 1:
            old, self._client = self._client, None
            self._index = (self._index + 1) % len(self._endpoints)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), self._timeout)
        self._failed = False
        if self._client is None:
            host, port = self._endpoints[self._index]
            options = {
                "grpc.initial_reconnect_backoff_ms": 100,
                "grpc.min_reconnect_backoff_ms": 100,
                "grpc.max_reconnect_backoff_ms": 1000,
                "grpc.keepalive_time_ms": _KEEPALIVE_MS,
                "grpc.keepalive_timeout_ms": max(1000, int(self._timeout * 1000)),
                # What actually bounds an unanswered ping in gRPC 1.5x+ (default
                # 60 s); without it a watch on a frozen etcd hangs for a minute.
                "grpc.http2.ping_timeout_ms": max(1000, int(self._timeout * 1000)),
                "grpc.http2.max_pings_without_data": 0,
                "grpc.max_receive_message_length": _MAX_MESSAGE_BYTES,
            }
            self._client = aetcd.Client(
                host=host,
                port=port,
                timeout=self._timeout,  # a gRPC deadline: a float is fine
                options=options,
                connect_wait_timeout=self._timeout,
            )
            self._loop = loop
        return self._client

    async def _call(self, op: Callable[[aetcd.Client], Awaitable[T]], *, lease: int = 0) -> T:
        """Run op on the client within the timeout, translating errors to ours."""
        client = await self._client_for_call()
        try:
            return await asyncio.wait_for(op(client), self._timeout)
        except TimeoutError:
            self._failed = True
            raise StoreUnavailable(
                f"etcd at {self.endpoint} did not answer within {self._timeout} s"
            ) from None
        except (aetcd.ClientError, grpc.aio.AioRpcError) as e:
            raise self._translate(e, lease) from e

    def _translate(self, exc: BaseException, lease: int = 0) -> StoreError:
        err = _grpc_error(exc)
        code = err.code() if err is not None else None
        details = (err.details() if err is not None else None) or str(exc)
        if self._closed:
            return StoreError("the EtcdStore is closed")
        if isinstance(exc, (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError)) or (
            code in _UNAVAILABLE_CODES
        ):
            self._failed = True
            return StoreUnavailable(f"etcd at {self.endpoint} is unavailable: {details}")
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details and lease:
            return LeaseNotFound(lease)
        return StoreError(f"etcd at {self.endpoint}: {details}")


class _EtcdWatch:
    """One ``EtcdStore.watch``: a gRPC Watch stream read by a task into a bounded queue.

    The task (``_pump``) owns the stream. It ends by itself after putting an
    error in the queue; ``aclose`` ends it by cancelling the gRPC call, so the
    pending read completes and gRPC has nothing outstanding for this loop.
    """

    def __init__(self, store: EtcdStore, prefix: bytes, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = start_revision  # the first revision not yet delivered
        self._queue: asyncio.Queue[list[Event] | BaseException | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stream: _Stream | None = None  # once open
        self._done = False

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __anext__(self) -> list[Event]:
        if self._done or self._store._closed:
            self._finish()
            raise StopAsyncIteration
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=_WATCH_QUEUE)
            self._store._watches.add(self)
            self._task = asyncio.get_running_loop().create_task(self._pump(self._queue))
        item = await self._queue.get()
        if self._done or item is None:
            self._finish()
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finish()
            raise item
        return item

    async def aclose(self) -> None:
        """End the watch; a consumer waiting in ``__anext__`` gets ``StopAsyncIteration``."""
        if self._done:
            return
        self._done = True
        task, queue = self._task, self._queue
        if task is not None and not task.done():
            if self._stream is not None and self._stream.call is not None:
                self._stream.call.cancel()  # the pump's read ends, and the pump returns
            else:
                task.cancel()  # still connecting
            _drain(queue)  # unblocks a pump waiting to put
            # asyncio.wait: the task's outcome is not re-raised in this task.
            finished, _ = await asyncio.wait([task], timeout=self._store.timeout)
            if not finished:
                task.cancel()
                await asyncio.wait([task])
        if queue is not None:
            _drain(queue)
            queue.put_nowait(None)  # wakes a consumer waiting in __anext__
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._store._watches.discard(self)

    async def _pump(self, queue: asyncio.Queue[list[Event] | BaseException | None]) -> None:
        store = self._store
        try:
            client = await store._client_for_call()
            await asyncio.wait_for(client.connect(), store.timeout)
            start, end = _prefix_range(self._prefix)
            stream = self._stream = _Stream(
                lambda: rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
            )
            create = rpc.WatchCreateRequest(key=start, range_end=end, start_revision=self._next)
            await stream.open(rpc.WatchRequest(create_request=create), store.timeout)
            call = stream.call
            created = await asyncio.wait_for(call.read(), store.timeout)
            if created is grpc.aio.EOF or not created.created or created.canceled:
                raise StoreUnavailable(f"etcd at {store.endpoint} did not create the watch")
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise StoreUnavailable(f"etcd at {store.endpoint} ended the watch stream")
                if response.compact_revision:
                    raise Compacted(self._next, int(response.compact_revision))
                if response.canceled:
                    reason = response.cancel_reason or "no reason given"
                    raise StoreUnavailable(
                        f"etcd at {store.endpoint} cancelled the watch: {reason}"
                    )
                events = [
                    Event(
                        "delete" if e.type == rpc.Event.DELETE else "put",
                        e.kv.key,
                        e.kv.value if e.type != rpc.Event.DELETE else b"",
                        int(e.kv.mod_revision),
                    )
                    for e in response.events
                ]
                if events:  # an empty response is a progress notification
                    self._next = events[-1].mod_revision + 1
                    await queue.put(events)
        except asyncio.CancelledError:
            if self._done:
                return  # aclose cancelled the call (or this task): a clean end
            raise
        except Exception as e:
            if not self._done:
                await queue.put(self._error(e))
        finally:
            if self._stream is not None:
                await self._stream.end(store.timeout)

    def _error(self, exc: Exception) -> StoreError:
        """What the consumer sees for exc (a watch ends with an error, never hangs)."""
        store = self._store
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            store._failed = True
            return StoreUnavailable(
                f"etcd at {store.endpoint} did not open the watch within {store.timeout} s"
            )
        if isinstance(exc, (aetcd.ClientError, grpc.aio.AioRpcError)):
            translated = store._translate(exc)
        else:
            translated = StoreError(f"etcd watch failed: {exc!r}")
        translated.__cause__ = exc
        return translated


def _drain(queue: asyncio.Queue[Any] | None) -> None:
    while queue is not None and not queue.empty():
        queue.get_nowait()
