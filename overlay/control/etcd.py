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

TLS and authentication (``ca_file``, ``cert_file``/``key_file``,
``username``/``password``; the rules and the TLS diagnosis are in
``overlay.control.etcd_security``).

* aetcd 1.0 dials only in clear and authenticates once; ``_Client`` dials
  ``secure_channel`` over ``https://`` and can authenticate again.
* Tokens are renewed, not kept forever. etcd's simple tokens die after
  ``--auth-token-ttl`` seconds unused (300 by default) and all of them when
  etcd restarts; JWT tokens at a fixed time. A call refused with "invalid
  auth token" (or "revision of auth store is old", after a role change)
  authenticates again — once, shared by the calls that failed together —
  and is retried once; a watch whose creation is cancelled for that reason
  likewise. A user refused outright is not retried here: the caller's
  backoff does that.
* Failures say what is wrong. TLS and authentication failures raise
  ``StoreAccessDenied`` — a ``StoreUnavailable``, so callers back off and
  retry as for an outage (the fix is often made on the server: a role
  granted, a certificate renewed, and the data plane must keep forwarding
  meanwhile) — with a message naming the cause and the setting to fix. A
  connection that fails with TLS-looking words is diagnosed by
  ``etcd_security.probe_tls``. Access errors are logged at ERROR once per
  distinct message, and ``last_error`` holds the latest failure (of any
  kind) for status pages until a call succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc

from overlay.control.etcd_security import (
    Endpoint,
    PathLike,
    Security,
    StoreAccessDenied,
    check_security,
    parse_endpoint,
    probe_tls,
)
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

__all__ = ["DEFAULT_ENDPOINTS", "EtcdStore", "StoreAccessDenied", "check_security"]

T = TypeVar("T")

log = logging.getLogger("overlay.control.etcd")

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


# etcd's own words for a token it no longer accepts (expired, or from before
# etcd restarted or the auth store changed): authenticate again and retry.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")
# gRPC's words for a connection that failed in TLS (or met TLS where it spoke clear).
_TLS_TROUBLE = ("ssl", "tls", "tsi_", "handshake", "unwrap failed", "socket closed")


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


def _details(exc: BaseException) -> str:
    """etcd's (or gRPC's) message for exc."""
    err = _grpc_error(exc)
    return (err.details() if err is not None else None) or str(exc)


class _Client(aetcd.Client):
    """aetcd's client on a channel of ours: TLS when asked, a token that can be renewed.

    aetcd 1.0 dials only in clear and authenticates once, in ``connect``;
    this ``connect`` dials ``secure_channel`` over TLS and authenticates
    through ``authenticate``, which ``EtcdStore`` calls again when etcd
    refuses the token. Calls read ``self.metadata`` at call time, so a new
    token serves every later call. A failed connect closes its channel and
    hands its error to the calls that waited for it (aetcd's would leave
    them waiting out ``connect_wait_timeout``).
    """

    def __init__(self, endpoint: Endpoint, security: Security, **kw: Any) -> None:
        super().__init__(host=endpoint.host, port=endpoint.port, **kw)
        self._security = security
        self._target = endpoint.target
        self._url = endpoint.url
        self._connecting: asyncio.Future[None] | None = None
        self.metadata: tuple[tuple[str, str], ...] | None = None
        self.auth_disabled = False  # a user is configured but etcd's auth is off

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._connecting is not None:
            await asyncio.wait_for(asyncio.shield(self._connecting), self._connect_wait_timeout)
            return
        done = self._connecting = asyncio.get_running_loop().create_future()
        self._is_connecting = True  # aetcd's close() looks at it
        sec = self._security
        options = list(self._options.items())
        if sec.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=sec.root_certificates,
                private_key=sec.private_key,
                certificate_chain=sec.certificate_chain,
            )
            channel = grpc.aio.secure_channel(self._target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(self._target, options=options)
        try:
            self.channel = channel
            self.metadata = None
            if sec.username is not None:
                await self.authenticate()
            self.kvstub = rpc.KVStub(channel)
            self.clusterstub = rpc.ClusterStub(channel)
            self.leasestub = rpc.LeaseStub(channel)
            self.maintenancestub = rpc.MaintenanceStub(channel)
            self._connected.set()
            done.set_result(None)
        except BaseException as e:
            self.channel = None
            with contextlib.suppress(Exception):
                await channel.close()
            if isinstance(e, asyncio.CancelledError):
                done.cancel()
            else:
                done.set_exception(e)
                done.exception()  # read: no "exception never retrieved" if nobody waited
            raise
        finally:
            self._connecting = None
            self._is_connecting = False

    async def authenticate(self) -> None:
        """Get a (new) token for the configured user; none when etcd's auth is off."""
        sec = self._security
        request = rpc.AuthenticateRequest(name=sec.username, password=sec.password)
        try:
            reply = await rpc.AuthStub(self.channel).Authenticate(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as e:
            if "authentication is not enabled" not in (e.details() or ""):
                raise
            # As etcd's own client does: a user configured before auth is turned
            # on must keep working (a cluster turns auth on after its clients).
            if not self.auth_disabled:
                log.warning(
                    "etcd at %s: username %r is set but etcd's authentication is off; "
                    "working without a token",
                    self._url,
                    sec.username,
                )
            self.auth_disabled = True
            self.metadata = None
            return
        self.auth_disabled = False
        self.metadata = (("token", reply.token),)


class EtcdStore:
    """The ``Store`` protocol on etcd; see the module docstring.

    ``endpoints``: ``http://HOST:PORT`` or ``https://HOST:PORT`` URLs of the
    cluster's members (the first is used until it fails). ``timeout``:
    seconds any call may take. TLS and authentication: ``ca_file``,
    ``cert_file``/``key_file``, ``username``/``password``, as the module
    docstring says; they are checked (and the files read) here, raising
    ``ConfigError`` naming the argument. Nothing is connected until the
    first call.
    """

    def __init__(
        self,
        endpoints: Sequence[str] = DEFAULT_ENDPOINTS,
        timeout: float = 5.0,
        *,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
            raise ConfigError("timeout", timeout, "seconds > 0")
        self._security = check_security(
            endpoints,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password=password,
        )
        self._endpoints = [parse_endpoint(e) for e in endpoints]
        self._endpoint_urls = list(endpoints)
        self._timeout = timeout
        self._index = 0
        self._client: _Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed = False  # the current endpoint failed: next call tries the next one
        self._watches: set[_EtcdWatch] = set()
        self._closed = False
        self._auth_lock = asyncio.Lock()  # one Authenticate for the calls that failed together
        self._last_error = ""
        self._logged_error = ""  # the access error logged last (each is logged once)
        self.token_renewals = 0  # how often a refused token was replaced by a new one

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self._endpoint_urls[self._index]

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def tls(self) -> bool:
        """True when the endpoints are ``https://``."""
        return self._security.tls

    @property
    def username(self) -> str | None:
        return self._security.username

    @property
    def last_error(self) -> str:
        """Why the latest call or watch failed to reach etcd ("" once one succeeds again)."""
        return self._last_error

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
            self._client = _Client(
                self._endpoints[self._index],
                self._security,
                timeout=self._timeout,  # a gRPC deadline: a float is fine
                options=options,
                connect_wait_timeout=self._timeout,
            )
            self._loop = loop
        return self._client

    async def _call(self, op: Callable[[_Client], Awaitable[T]], *, lease: int = 0) -> T:
        """Run op on the client within the timeout, translating errors to ours; a
        refused token is renewed and op run once more, within the same timeout."""
        client = await self._client_for_call()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            token = client.metadata
            try:
                result = await asyncio.wait_for(op(client), self._timeout)
            except (aetcd.ClientError, grpc.aio.AioRpcError) as e:
                if not self._stale_token(_details(e)):
                    raise
                await self._renew_token(client, token, max(0.0, deadline - loop.time()))
                result = await asyncio.wait_for(op(client), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self._failed = True
            raise self._noted(
                StoreUnavailable(f"etcd at {self.endpoint} did not answer within {self._timeout} s")
            ) from None
        except (aetcd.ClientError, grpc.aio.AioRpcError) as e:
            raise await self._failure(e, lease) from e
        self._succeeded()
        return result

    def _stale_token(self, details: str) -> bool:
        """etcd refused the token (expired, lost in a restart, older than a role change),
        or auth was turned on since we connected without one."""
        if self._security.username is None:
            return False
        return any(m in details for m in _STALE_TOKEN) or "user name is empty" in details

    async def _renew_token(self, client: _Client, stale: Any, timeout: float) -> None:
        """Authenticate again, unless a call that failed alongside already did."""
        async with self._auth_lock:
            if client.metadata is stale and client.channel is not None:
                await asyncio.wait_for(client.authenticate(), timeout)
                self.token_renewals += 1
                log.info("etcd at %s: auth token renewed", self.endpoint)

    def _who(self) -> str:
        sec = self._security
        if sec.username is not None:
            return f"user {sec.username!r}"
        if sec.cert_file is not None:
            return f"the user named by the CN of {sec.cert_file}"
        return "this client (no user)"

    def _access_error(self, details: str) -> StoreAccessDenied | None:
        """etcd's refusals in words an operator can act on (``details``: etcd's message)."""
        at = f"etcd at {self.endpoint}"
        if "authentication failed" in details:
            return StoreAccessDenied(
                "auth",
                f"{at} refused {self._who()}: wrong password or no such user ({details}); "
                "check username and password",
            )
        if "user name is empty" in details:
            return StoreAccessDenied(
                "auth",
                f"{at} has authentication on and this client names no user ({details}); "
                "set username and password (or a client certificate whose CN is an etcd user)",
            )
        if any(m in details for m in _STALE_TOKEN):
            return StoreAccessDenied(
                "auth",
                f"{at} refused the auth token of {self._who()} even after renewing it ({details})",
            )
        if "permission denied" in details:
            return StoreAccessDenied(
                "permission",
                f"{at} denied {self._who()} access to a key ({details}); grant its role "
                "readwrite on the prefix overlay uses "
                "(etcdctl role grant-permission ROLE --prefix=true readwrite /overlay/)",
            )
        return None

    def _translate(self, exc: BaseException, lease: int = 0) -> StoreError:
        err = _grpc_error(exc)
        code = err.code() if err is not None else None
        details = _details(exc)
        if self._closed:
            return StoreError("the EtcdStore is closed")
        denied = self._access_error(details)
        if denied is not None:
            return denied
        if isinstance(exc, (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError)) or (
            code in _UNAVAILABLE_CODES
        ):
            self._failed = True
            return StoreUnavailable(f"etcd at {self.endpoint} is unavailable: {details}")
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details and lease:
            return LeaseNotFound(lease)
        return StoreError(f"etcd at {self.endpoint}: {details}")

    async def _failure(self, exc: BaseException, lease: int = 0) -> StoreError:
        """``_translate``, with a TLS diagnosis for connections that failed in TLS
        (see ``probe_tls``), recorded in ``last_error``."""
        error = self._translate(exc, lease)
        details = _details(exc).lower()
        if type(error) is StoreUnavailable and any(m in details for m in _TLS_TROUBLE):
            endpoint = self._endpoints[self._index]
            try:
                verdict = await asyncio.wait_for(
                    asyncio.to_thread(probe_tls, endpoint, self._security, self._timeout),
                    self._timeout + 2.0,
                )
            except TimeoutError:
                verdict = None
            if verdict is not None:
                error = StoreAccessDenied("tls", verdict)
        return self._noted(error)

    def _noted(self, error: StoreError) -> StoreError:
        """Record an outage in ``last_error``; log each distinct access error once."""
        if isinstance(error, StoreUnavailable) and not self._closed:
            self._last_error = str(error)
            if isinstance(error, StoreAccessDenied) and str(error) != self._logged_error:
                self._logged_error = str(error)
                log.error("%s", error)
        return error

    def _succeeded(self) -> None:
        if self._logged_error:
            log.warning("etcd at %s: access works again", self.endpoint)
        self._last_error = self._logged_error = ""


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
            create = rpc.WatchCreateRequest(key=start, range_end=end, start_revision=self._next)
            for attempt in (1, 2):
                token = client.metadata
                stream = self._stream = _Stream(
                    lambda: rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
                )
                await stream.open(rpc.WatchRequest(create_request=create), store.timeout)
                call = stream.call
                created = await asyncio.wait_for(call.read(), store.timeout)
                if created is grpc.aio.EOF or not created.created:
                    raise StoreUnavailable(f"etcd at {store.endpoint} did not create the watch")
                if not created.canceled:
                    break
                # etcd creates and cancels at once a watch it refuses (auth).
                reason = created.cancel_reason or "no reason given"
                if attempt == 1 and store._stale_token(reason):
                    await stream.end(store.timeout)
                    await store._renew_token(client, token, store.timeout)
                    continue
                raise store._access_error(reason) or StoreUnavailable(
                    f"etcd at {store.endpoint} refused the watch: {reason}"
                )
            store._succeeded()
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
                        int(e.kv.create_revision) if e.type != rpc.Event.DELETE else 0,
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
            # The stream ends before the consumer hears of the error: it may close
            # the store and its loop at once, and gRPC must be done with this call.
            if self._stream is not None:
                await self._stream.end(store.timeout)
            if not self._done:
                await queue.put(await self._error(e))
        finally:
            if self._stream is not None:
                await self._stream.end(store.timeout)

    async def _error(self, exc: Exception) -> StoreError:
        """What the consumer sees for exc (a watch ends with an error, never hangs)."""
        store = self._store
        if isinstance(exc, StoreError):
            return store._noted(exc) if isinstance(exc, StoreAccessDenied) else exc
        if isinstance(exc, asyncio.TimeoutError):
            store._failed = True
            return store._noted(
                StoreUnavailable(
                    f"etcd at {store.endpoint} did not open the watch within {store.timeout} s"
                )
            )
        if isinstance(exc, (aetcd.ClientError, grpc.aio.AioRpcError)):
            translated = await store._failure(exc)
        else:
            translated = StoreError(f"etcd watch failed: {exc!r}")
        translated.__cause__ = exc
        return translated


def _drain(queue: asyncio.Queue[Any] | None) -> None:
    while queue is not None and not queue.empty():
        queue.get_nowait()
