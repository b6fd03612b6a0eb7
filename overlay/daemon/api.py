"""overlayd's local API: HTTP/1.1 + JSON on a Unix socket.

Design notes. The API serves one host's CLI and CNI plugin, so it is small on
purpose: one request per connection (``Connection: close``), bodies of at most
1 MiB, JSON in and out, no TLS (the socket's file mode is the access control).
It runs on the daemon's asyncio loop, so handlers see a consistent daemon
state without locks of their own. Errors are one JSON shape everywhere,
``{"error": {"kind", "message", "field", "value", "expected"}}``, with the
HTTP status of their kind: a ``ConfigError`` names the field at fault and
what would be accepted, just as the config file and the Python API do.
The routes are one table, ``overlay/daemon/routes.py``, registered by
``overlay/daemon/rooms.py``; this module knows nothing of them.

Connections are a budget: the kubelet's (or podman's) CNI ADD and health
checks must get through while something else holds sockets open. So:

- **A cap, well below the descriptor limit.** At most ``MAX_CONNECTIONS``
  are open; every one holds a descriptor, and so do the pods' TAPs, the
  netlink and store sockets, so the cap (128) leaves most of even the
  default 1024 to the rest of the daemon (``main`` also raises the soft
  ``RLIMIT_NOFILE`` to the hard limit).
- **At the cap, the longest-waiting reader goes, not the newcomer.** A new
  connection evicts the open one that has waited longest without giving a
  whole request (or without taking its answer): it gets a 408 if it can
  take one, and its descriptor is freed at once. Refusing newcomers
  instead would let anyone who opens 128 idle sockets lock the kubelet out
  until they time out; with eviction a real client, which sends its whole
  request the moment it connects, is served promptly however many idle or
  slow sockets there are. Only connections whose request is being handled
  are never evicted; when all of them are, a newcomer gets a fast 503
  (try again), which the plugin turns into CNI code 11.
- **Deadlines per phase.** The request head must arrive within
  ``HEAD_TIMEOUT_S`` of the connection, the body within ``BODY_TIMEOUT_S``
  of the head and the whole request within ``REQUEST_TIMEOUT_S`` of the
  connection (a client trickling a byte at a time cannot stretch one phase
  into the next); the answer must be taken within ``WRITE_TIMEOUT_S``. A
  missed read deadline is answered 408; a missed write deadline aborts the
  connection. The handler's own time is not limited here: cancelling an
  attach half-way would leave a half-made pod. They are constants, not
  configuration: our clients send a request in one write, so the deadlines
  only bound abusers and are far from anything a healthy host sees.
- **Every malformed request gets an answer.** The request line, headers,
  Content-Length (ASCII digits only, one value however often it is
  repeated), Transfer-Encoding (not supported: send Content-Length) and
  body (UTF-8 JSON, nested at most ``validate.MAX_JSON_DEPTH`` deep) are
  checked by ``parse_head`` and ``parse_body``; a fault is a 400 naming
  what is wrong (413 for a head or body over its limit), never an
  exception, and a request cut off short is answered too. The parser is
  fuzzed in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from overlay.cni import validate
from overlay.control.store import StoreUnavailable
from overlay.errors import CapacityError, ConfigError, ConflictError, NotFoundError, OverlayError

log = logging.getLogger("overlay.api")

MAX_HEADER = 64 * 1024  # the request line and headers, the blank line included
MAX_BODY = 1 << 20
MAX_CONNECTIONS = 128  # open at once; see the design notes
# Connections the kernel queues until the loop accepts them: they cost the daemon
# no descriptor, and a burst that fills the queue makes clients wait (or, with a
# timeout set, fail with EAGAIN; overlay's client then retries).
BACKLOG = 4 * MAX_CONNECTIONS
HEAD_TIMEOUT_S = 10.0  # connection to the end of the request head
BODY_TIMEOUT_S = 10.0  # end of the head to the end of the body
REQUEST_TIMEOUT_S = 15.0  # connection to the end of the body
WRITE_TIMEOUT_S = 10.0  # for the client to take the answer
MAX_ERROR_MESSAGE = 2048  # characters of an error's message (values are cut by validate.clip)
_HEAD_END = b"\r\n\r\n"

Handler = Callable[..., Awaitable[Any]]

_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class Unavailable(OverlayError):
    """The daemon cannot serve this now (the store is unreachable, it is starting)."""


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for an exception raised by a handler."""
    err: dict[str, Any] = {"message": _cut(str(exc))}
    if isinstance(exc, ConfigError):
        status, err["kind"] = 400, "config"
        err.update(
            field=exc.field, value=_jsonable(validate.clip(exc.value)), expected=exc.expected
        )
    elif isinstance(exc, NotFoundError):
        status, err["kind"] = 404, "not_found"
    elif isinstance(exc, ConflictError):
        status, err["kind"] = 409, "conflict"
    elif isinstance(exc, CapacityError):
        status, err["kind"] = 507, "capacity"
    elif isinstance(exc, Unavailable | TimeoutError | StoreUnavailable):
        status, err["kind"] = 503, "unavailable"
        if isinstance(exc, StoreUnavailable):
            err["message"] = f"the store is unreachable ({exc}); try again when it is back"
        else:
            err["message"] = str(exc) or "the daemon timed out; try again"
    else:
        status, err["kind"] = 500, "internal"
        err["message"] = _cut(f"internal error: {exc!r} (see overlayd's log)")
    return status, {"error": err}


def _answer(status: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    """An error answer of the server itself (not of a handler), in the usual shape."""
    return status, {"error": {"kind": kind, "message": message}}


def _cut(message: str) -> str:
    if len(message) <= MAX_ERROR_MESSAGE:
        return message
    return f"{message[:MAX_ERROR_MESSAGE]}... ({len(message)} characters)"


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def encode_answer(status: int, body: Any) -> bytes:
    """A whole HTTP/1.1 answer: status line, headers, JSON body."""
    data = json.dumps(body).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + data


# -- parsing a request -----------------------------------------------------------


class BadRequest(Exception):
    """The request cannot be served as sent: ``status`` (400 or 413) and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def answer(self) -> tuple[int, dict[str, Any]]:
        return _answer(self.status, "config", self.message)


@dataclasses.dataclass(frozen=True)
class Request:
    """A whole request as read: method, target (path and query), decoded body."""

    method: str
    target: str
    body: Any


@dataclasses.dataclass(frozen=True)
class Head:
    """A parsed request head: method, target, and the body's length (0: no body)."""

    method: str
    target: str
    content_length: int


# RFC 9110's token (methods, header names) and the bytes a target may hold as sent
# (visible ASCII; anything else is percent-encoded by clients).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_DIGITS = re.compile(rb"[0-9]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _show(raw: bytes, limit: int = 60) -> str:
    text = raw[:limit].decode("latin-1")
    return repr(text) + ("..." if len(raw) > limit else "")


def parse_head(head: bytes) -> Head:
    """The request head (request line, headers, the blank line) as sent; BadRequest
    naming what is wrong. Checked: the request line ``METHOD SP /path SP HTTP/1.x``,
    each header ``Name: value`` (no line folding, no bare CR or LF, no control
    bytes), ``Content-Length`` (ASCII digits; repeats must agree; at most
    ``MAX_BODY``) and no ``Transfer-Encoding`` (bodies come with a length)."""
    text = head[: -len(_HEAD_END)] if head.endswith(_HEAD_END) else head
    lines = text.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise BadRequest(400, "a bare CR or LF in the request head: end each line with CRLF")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(
            400,
            f"malformed request line {_show(lines[0])}: expected METHOD /path HTTP/1.1, "
            "separated by single spaces",
        )
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, f"malformed method {_show(method)}: e.g. GET, POST or DELETE")
    if not _TARGET.fullmatch(target):
        raise BadRequest(
            400,
            f"malformed request target {_show(target)}: a path like /v1/status, other "
            "bytes percent-encoded",
        )
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(400, f"unsupported protocol {_show(version)}: send HTTP/1.1")
    lengths: list[bytes] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest(400, f"folded header line {_show(line)}: put each header on one line")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, f"malformed header line {_show(line)}: expected Name: value")
        value = value.strip(b" \t")
        if _CONTROL.search(value):
            raise BadRequest(400, f"header {_show(name)} holds a control character")
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            raise BadRequest(
                400,
                f"Transfer-Encoding: {_show(value)} is not supported: send the body with "
                "Content-Length",
            )
        if lowered == b"content-length":
            if not _DIGITS.fullmatch(value):
                raise BadRequest(
                    400,
                    f"Content-Length: {_show(value)} is not a length: the body's size in "
                    "bytes, in ASCII digits",
                )
            lengths.append(value.lstrip(b"0") or b"0")
    if len(set(lengths)) > 1:
        raise BadRequest(
            400,
            "conflicting Content-Length headers "
            f"({', '.join(v.decode() for v in lengths[:4])}): send one",
        )
    length = 0
    if lengths:
        # Compared as digits first: int() of thousands of digits is slow, and refused.
        if len(lengths[0]) > len(str(MAX_BODY)) or int(lengths[0]) > MAX_BODY:
            raise BadRequest(413, f"body over {MAX_BODY // (1 << 20)} MiB")
        length = int(lengths[0])
    return Head(method.decode("ascii"), target.decode("ascii"), length)


def parse_body(raw: bytes) -> Any:
    """A request body: UTF-8 JSON nested at most ``validate.MAX_JSON_DEPTH`` deep
    (None when empty); ConfigError naming ``body`` otherwise."""
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        near = raw[max(0, exc.start - 20) : exc.start + 20]
        raise ConfigError(
            "body",
            near.decode("utf-8", "backslashreplace"),
            f"UTF-8 JSON ({exc.reason} at byte {exc.start})",
        ) from None
    try:
        return validate.load_json(text)
    except validate.Invalid as exc:
        raise ConfigError("body", validate.clip(text, 80), exc.expected) from None


class Router:
    """Routes ``(method, "/v1/things/<a>/<b>")`` to coroutine handlers.

    A handler is called with the path parameters as keyword arguments, plus
    ``query`` (dict of the first value of each query parameter) and ``body``
    (decoded JSON, or None)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        rx = re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(rx), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | int:
        """The handler and its decoded path parameters, or 404/405. ConfigError when a
        parameter's percent-encoding is not UTF-8."""
        allowed = False
        for m, rx, handler in self._routes:
            found = rx.fullmatch(path)  # not match(): "$" would match before a "\n"
            if found:
                if m == method:
                    params = {}
                    for k, v in found.groupdict().items():
                        try:
                            params[k] = unquote(v, errors="strict")
                        except UnicodeDecodeError:
                            raise ConfigError(k, v, "percent-encoded UTF-8") from None
                    return handler, params
                allowed = True
        return 405 if allowed else 404


# -- connections -------------------------------------------------------------------

READING, HANDLING, WRITING = "reading", "handling", "writing"


class _Gone(Exception):
    """The client closed before sending anything: there is no one to answer."""


class _Connection:
    """One client connection: its phase and since when it is in it (for eviction)."""

    __slots__ = ("writer", "started", "phase", "since", "evicted")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.started = self.since = time.monotonic()
        self.phase = READING
        self.evicted = False

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()

    def evict(self) -> None:
        """Free the descriptor now. A reader still waiting for its request is told
        why (its socket buffer is empty, so the answer goes out at once); a writer
        that does not take its answer loses it."""
        self.evicted = True
        transport = self.writer.transport
        if self.phase == READING:
            status, body = _answer(
                408,
                "unavailable",
                f"closed: overlayd's API was at its limit of {MAX_CONNECTIONS} connections "
                "and this one had waited longest without a whole request",
            )
            with contextlib.suppress(Exception):
                transport.write(encode_answer(status, body))
        transport.abort()


class ApiServer:
    """Serve ``router`` on the Unix socket ``path`` (mode 0660, parent made 0755)."""

    def __init__(self, router: Router, path: str) -> None:
        self.router = router
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        # Open connections in the order they came (dicts keep it): eviction
        # looks for the longest-waiting one among at most MAX_CONNECTIONS.
        self._open: dict[_Connection, None] = {}
        self.evictions = 0
        self.refusals = 0  # newcomers answered 503 because every connection was busy
        self._logged = -60.0  # when an eviction was last logged (time.monotonic())

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        return len(self._open)

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(self.path) or os.path.islink(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise ConfigError("api.socket", self.path, "a path that is not a regular file")
            if _answers(self.path):
                raise ConflictError(
                    f"api.socket={self.path!r}: another overlayd serves it; stop that one "
                    "or choose another api.socket"
                )
            os.unlink(self.path)  # stale, from a daemon that died
        try:
            # readuntil() accepts a separator that starts at ``limit``: so a head of
            # at most MAX_HEADER bytes, separator included, and LimitOverrunError past it.
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_HEADER - len(_HEAD_END), backlog=BACKLOG
            )
        except OSError as exc:
            raise ConfigError(
                "api.socket", self.path, f"a path overlayd can create ({exc.strerror})"
            ) from None
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._open):
                conn.writer.transport.abort()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _make_room(self) -> bool:
        """At the cap, evict the connection that has waited longest for its client
        (reading its request, or the client taking its answer); False when every
        open connection is having its request handled."""
        waiting = [c for c in self._open if c.phase != HANDLING]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.since)
        del self._open[victim]
        victim.evict()
        self.evictions += 1
        now = time.monotonic()
        if now - self._logged >= 60.0:  # a flood must not flood the log too
            self._logged = now
            log.warning(
                "API: at its limit of %d connections, closing the longest-waiting ones "
                "(%d so far; this one %s for %.1f s); something is holding sockets open",
                MAX_CONNECTIONS,
                self.evictions,
                victim.phase,
                now - victim.since,
            )
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer)
        try:
            if len(self._open) >= MAX_CONNECTIONS and not self._make_room():
                self.refusals += 1
                status, body = _answer(
                    503,
                    "unavailable",
                    f"overlayd is handling {MAX_CONNECTIONS} requests (its limit); try again",
                )
                await self._reply(conn, status, body)
                return
            self._open[conn] = None
            try:
                answer = await self.respond(reader, conn)
            except ConnectionError:
                return
            if answer is not None and not conn.evicted:
                await self._reply(conn, *answer)
        finally:
            self._open.pop(conn, None)
            if conn.evicted or writer.transport.get_write_buffer_size():
                writer.transport.abort()  # never wait on a client that does not read
            else:
                writer.close()

    async def respond(
        self, reader: asyncio.StreamReader, conn: _Connection | None = None
    ) -> tuple[int, Any] | None:
        """The answer (status, JSON body) to the request ``reader`` delivers, or None
        when the client closed without sending a byte. Every other input gets an
        answer: the handler's, or an error naming what is wrong with the request."""
        try:
            request = await self._receive(reader, conn.started if conn else time.monotonic())
        except _Gone:
            return None
        if not isinstance(request, Request):
            return request
        if conn is not None:
            if conn.evicted:
                return None
            conn.enter(HANDLING)
        return await self._dispatch(request)

    async def _receive(
        self, reader: asyncio.StreamReader, started: float
    ) -> Request | tuple[int, dict[str, Any]]:
        """Read and check one request (the connection came at ``started``), or the
        error answer to send instead. _Gone when the client closed without sending
        a byte."""
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                raw_head = await reader.readuntil(_HEAD_END)
        except asyncio.LimitOverrunError:
            return _answer(413, "config", f"request headers over {MAX_HEADER // 1024} KiB")
        except TimeoutError:
            return _answer(
                408,
                "unavailable",
                f"no whole request head within {HEAD_TIMEOUT_S:g} s of connecting: send the "
                "request when you connect",
            )
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Gone from None
            return _answer(
                400, "config", "the request ended before its head did (a blank line ends it)"
            )
        try:
            head = parse_head(raw_head)
        except BadRequest as exc:
            return exc.answer()
        raw = b""
        if head.content_length:
            left = REQUEST_TIMEOUT_S - (time.monotonic() - started)
            timeout = max(0.0, min(BODY_TIMEOUT_S, left))
            try:
                async with asyncio.timeout(timeout):
                    raw = await reader.readexactly(head.content_length)
            except TimeoutError:
                return _answer(
                    408,
                    "unavailable",
                    f"the body ({head.content_length} bytes, its Content-Length) did not "
                    f"arrive within {timeout:.3g} s: send it with the head",
                )
            except asyncio.IncompleteReadError as exc:
                return _answer(
                    400,
                    "config",
                    f"the body ended after {len(exc.partial)} of {head.content_length} "
                    "bytes (its Content-Length)",
                )
        try:
            body = parse_body(raw)
        except ConfigError as exc:
            return error_body(exc)
        return Request(head.method, head.target, body)

    async def _dispatch(self, request: Request) -> tuple[int, Any]:
        method, body = request.method, request.body
        url = urlsplit(request.target)
        try:
            found = self.router.match(method, url.path)
            query = {k: v[0] for k, v in parse_qs(url.query, errors="strict").items()}
        except ConfigError as exc:
            return error_body(exc)
        except UnicodeDecodeError:
            return error_body(ConfigError("query", url.query, "percent-encoded UTF-8"))
        if isinstance(found, int):
            what = "no such route" if found == 404 else f"{method} is not allowed here"
            return _answer(found, "not_found", f"{what}: {url.path}")
        handler, params = found
        try:
            result = await handler(query=query, body=body, **params)
        except Exception as exc:
            status, answer = error_body(exc)
            if status == 500:
                log.exception("API %s %s failed", method, url.path)
            return status, answer
        return 200, result

    async def _reply(self, conn: _Connection, status: int, body: Any) -> None:
        """Send the answer; a client that does not take it within WRITE_TIMEOUT_S is cut."""
        conn.enter(WRITING)
        writer = conn.writer
        try:
            writer.write(encode_answer(status, body))
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except TimeoutError:
            log.warning("API: a client did not take its answer in %g s; cut", WRITE_TIMEOUT_S)
            writer.transport.abort()
        except ConnectionError:
            pass


def _answers(path: str) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
