"""overlayd's local API: HTTP/1.1 + JSON on a Unix socket.

Design notes. The API serves one host's CLI and CNI plugin, so it is small on
purpose: one request per connection (``Connection: close``), bodies of at most
1 MiB, JSON in and out, no TLS (the socket's file mode is the access control).
It runs on the daemon's asyncio loop, so handlers see a consistent daemon
state without locks of their own. Errors are one JSON shape everywhere,
``{"error": {"kind", "message", "field", "value", "expected"}}``, with the
HTTP status of their kind: a ``ConfigError`` names the field at fault and
what would be accepted, just as the config file and the Python API do.
The routes are listed in ``overlay/daemon/client.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from overlay.control.store import StoreUnavailable
from overlay.errors import CapacityError, ConfigError, ConflictError, NotFoundError, OverlayError

log = logging.getLogger("overlay.api")

MAX_HEADER = 64 * 1024  # the request line and headers, the blank line included
MAX_BODY = 1 << 20
_HEAD_END = b"\r\n\r\n"

Handler = Callable[..., Awaitable[Any]]

_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
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
    err: dict[str, Any] = {"message": str(exc)}
    if isinstance(exc, ConfigError):
        status, err["kind"] = 400, "config"
        err.update(field=exc.field, value=_jsonable(exc.value), expected=exc.expected)
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
        err["message"] = f"internal error: {exc!r} (see overlayd's log)"
    return status, {"error": err}


def _answer(status: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    """An error answer of the server itself (not of a handler), in the usual shape."""
    return status, {"error": {"kind": kind, "message": message}}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


class Router:
    """Routes ``(method, "/v1/things/<a>/<b>")`` to coroutine handlers.

    A handler is called with the path parameters as keyword arguments, plus
    ``query`` (dict of the first value of each query parameter) and ``body``
    (decoded JSON, or None)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        rx = re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{rx}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | int:
        allowed = False
        for m, rx, handler in self._routes:
            found = rx.match(path)
            if found:
                if m == method:
                    return handler, {k: unquote(v) for k, v in found.groupdict().items()}
                allowed = True
        return 405 if allowed else 404


class ApiServer:
    """Serve ``router`` on the Unix socket ``path`` (mode 0660, parent made 0755)."""

    def __init__(self, router: Router, path: str) -> None:
        self.router = router
        self.path = path
        self._server: asyncio.AbstractServer | None = None

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
                self._serve, path=self.path, limit=MAX_HEADER - len(_HEAD_END)
            )
        except OSError as exc:
            raise ConfigError(
                "api.socket", self.path, f"a path overlayd can create ({exc.strerror})"
            ) from None
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._handle(reader)
        except (asyncio.IncompleteReadError, ConnectionError):  # the client went away
            writer.close()
            return
        data = json.dumps(body).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        try:
            head = await reader.readuntil(_HEAD_END)
        except asyncio.LimitOverrunError:
            return _answer(413, "config", f"request headers over {MAX_HEADER // 1024} KiB")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return _answer(400, "config", "malformed request line")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k:
                headers[k.strip().lower()] = v.strip()
        body: Any = None
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY:
                return _answer(413, "config", "body over 1 MiB")
            raw = await reader.readexactly(int(length))
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    err = ConfigError("body", raw[:80].decode(errors="replace"), f"JSON ({exc})")
                    return error_body(err)
        url = urlsplit(target)
        found = self.router.match(method, url.path)
        if isinstance(found, int):
            what = "no such route" if found == 404 else f"{method} is not allowed here"
            return _answer(found, "not_found", f"{what}: {url.path}")
        handler, params = found
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            result = await handler(query=query, body=body, **params)
        except Exception as exc:
            status, answer = error_body(exc)
            if status == 500:
                log.exception("API %s %s failed", method, url.path)
            return status, answer
        return 200, result


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
