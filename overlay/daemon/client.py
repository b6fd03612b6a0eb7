"""A small synchronous client of overlayd's local API (HTTP/1.1 + JSON on a Unix socket).

The ``overlay`` CLI and the ``overlay-cni`` plugin use it; so can scripts.

The API, version 1, is the route table of ``overlay.daemon.routes``: one
method here per route, named after it, sending the table's method and path
(``Client.call``), so the client cannot lack a route or send it to the wrong
path (a test calls every one). Every body is JSON; errors are
``{"error": {"kind", "message", "field", "value", "expected"}}`` with an HTTP
status: 400 and 413 config, 404 not_found, 409 conflict, 507 capacity,
408 and 503 unavailable, 500 internal; limits in ``overlay.daemon.api``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any

from overlay.cni.validate import Invalid, load_json
from overlay.daemon.routes import BY_NAME

DEFAULT_SOCKET = "/run/overlay/overlayd.sock"


class ApiError(Exception):
    """An error answer of the daemon: ``status`` (HTTP), ``kind``, ``message``, ``field``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.kind = str(err.get("kind", "internal"))
        self.message = str(err.get("message", f"HTTP {status}"))
        self.field = err.get("field")
        self.value = err.get("value")
        self.expected = err.get("expected")
        super().__init__(self.message)


class DaemonUnavailable(Exception):
    """No daemon answers on the socket (not running, wrong path, or no permission)."""


class Client:
    """``Client(socket_path)``: one request per connection; methods return decoded JSON.

    HTTP/1.1 is spoken by hand (request line, headers, body; the answer read to
    the end, as the daemon closes every connection): http.client would cost the
    CNI plugin, which starts as a new process for every pod, 20 ms of imports."""

    def __init__(
        self,
        path: str = DEFAULT_SOCKET,
        timeout: float = 30.0,
        *,
        start_hint: str = "start it with `overlayd --config FILE`, or pass --socket",
    ) -> None:
        self.path = path
        self.timeout = timeout
        # What to do when no daemon serves ``path``, in the words of the caller's
        # user (the CLI's --socket; a CNI configuration's "socket" key).
        self.start_hint = start_hint

    def _connect(self, s: socket.socket) -> None:
        """Connect, waiting while the daemon's listen queue is full: a Unix socket
        with a timeout answers that at once with EAGAIN instead of waiting, and a
        burst of other connections (which the daemon sheds) can fill it briefly."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                s.connect(self.path)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = f"its listen queue stayed full for {self.timeout:g} s"
                    raise TimeoutError(msg) from None
                time.sleep(0.005)

    def _exchange(self, data: bytes) -> bytes:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        try:
            self._connect(s)
            # The daemon answers some refusals (a body over its limit, every
            # connection busy) without reading the whole request, and then the
            # kernel resets the connection: the answer is what came before that.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(data)
            chunks = []
            try:
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                if not chunks:
                    raise
            return b"".join(chunks)
        finally:
            s.close()

    def request(self, method: str, url: str, body: Any = None) -> Any:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        try:
            raw = self._exchange(head.encode() + b"\r\n" + payload)
        except FileNotFoundError:
            raise DaemonUnavailable(
                f"overlayd is not running: no socket at {self.path} ({self.start_hint})"
            ) from None
        except ConnectionRefusedError:
            raise DaemonUnavailable(
                f"overlayd is not running: {self.path} refuses connections "
                "(a stale socket; start the daemon)"
            ) from None
        except PermissionError:
            raise DaemonUnavailable(
                f"no permission to use {self.path}: run as root or as the socket's group"
            ) from None
        except OSError as exc:  # timeouts included
            raise DaemonUnavailable(f"overlayd at {self.path} did not answer: {exc}") from None
        status, decoded = _parse_response(raw, self.path)
        if status >= 400:
            raise ApiError(status, decoded if isinstance(decoded, dict) else {})
        return decoded

    # -- the API: one method per route of overlay.daemon.routes ------------------

    def call(self, route: str, *params: str, body: Any = None, **query: Any) -> Any:
        """Send the route named ``route`` of the table with its path ``params`` (in
        order), ``query`` parameters (None: left out) and ``body``."""
        r = BY_NAME[route]
        return self.request(r.method, r.target(params, query), body)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def health(self) -> dict[str, Any]:
        return self.call("health")

    def networks(self) -> list[dict[str, Any]]:
        return self.call("networks")

    def endpoints(self, vni: int | None = None) -> list[dict[str, Any]]:
        return self.call("endpoints", vni=vni)

    def attach(self, request: dict[str, Any]) -> dict[str, Any]:
        """Attach a pod; ``request`` is an AttachRequest (see ``overlay.daemon.pods``)."""
        return self.call("attach", body=request)

    def attachments(self) -> list[dict[str, Any]]:
        return self.call("attachments")

    def attachment(self, container_id: str, ifname: str) -> dict[str, Any]:
        return self.call("attachment", container_id, ifname)

    def detach(self, container_id: str, ifname: str) -> dict[str, Any]:
        return self.call("detach", container_id, ifname)

    def gc(self, valid: list[dict[str, str]], vni: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"valid": valid}
        if vni is not None:
            body["vni"] = vni
        return self.call("gc", body=body)

    def peers(self) -> list[dict[str, Any]]:
        return self.call("peers")

    def fdb(self, vni: int | None = None) -> list[dict[str, Any]]:
        return self.call("fdb", vni=vni)

    def counters(self) -> dict[str, Any]:
        return self.call("counters")

    def reload(self) -> dict[str, Any]:
        """Apply the daemon's configuration file again (as SIGHUP does); what changed."""
        return self.call("reload")

    # policy: a tenant's policies in the store (tenant None: the one tenant of the
    # daemon's hosted networks)

    def policy_apply(
        self,
        manifest: str | None = None,
        *,
        objects: list[Any] | None = None,
        tenant: str | None = None,
        namespace: str | None = None,
        prune: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Check ``manifest`` (YAML or JSON text) or ``objects`` (decoded objects) and
        write what differs; with ``prune`` the tenant's other records are deleted.
        Answers the names created, configured, unchanged, pruned, and the set's hash."""
        body: dict[str, Any] = {"prune": prune, "dry_run": dry_run}
        if manifest is not None:
            body["manifest"] = manifest
        if objects is not None:
            body["objects"] = objects
        if tenant is not None:
            body["tenant"] = tenant
        if namespace is not None:
            body["namespace"] = namespace
        return self.call("policy_apply", body=body)

    def policy_get(self, tenant: str | None = None) -> dict[str, Any]:
        """The tenant's policies and namespaces (``items``: manifests), hash, revision."""
        return self.call("policy_get", tenant=tenant)

    def policy_delete(
        self,
        kind: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        *,
        manifest: str | None = None,
        objects: list[Any] | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Delete one object (``kind``, ``name``, ``namespace``) or those a manifest names."""
        given = {
            "kind": kind,
            "name": name,
            "namespace": namespace,
            "manifest": manifest,
            "objects": objects,
            "tenant": tenant,
        }
        return self.call("policy_delete", body={k: v for k, v in given.items() if v is not None})

    def policy_explain(
        self, src: str, dst: str, port: int, protocol: str | None = None, vni: int | None = None
    ) -> dict[str, Any]:
        """What the policies and the tables in force decide for ``src`` -> ``dst``:``port``."""
        return self.call("policy_explain", src=src, dst=dst, port=port, protocol=protocol, vni=vni)

    def policy_drops(self, since: int | None = None) -> dict[str, Any]:
        """Policy drop reports from sequence number ``since`` on: ``{"next", "events"}``."""
        return self.call("policy_drops", since=since)

    def policy_status(self, tenant: str | None = None) -> dict[str, Any]:
        """Per node and tenant, the set in force against the store's (tenant None: all)."""
        return self.call("policy_status", tenant=tenant)

    def policy_verify(self, tenant: str | None = None) -> dict[str, Any]:
        """What each node's verification probe found (tenant None: all)."""
        return self.call("policy_verify", tenant=tenant)

    def policy_repair(self) -> dict[str, Any]:
        """Set this node's policy tables again; what a verification round then found."""
        return self.call("policy_repair")


def _parse_response(raw: bytes, path: str) -> tuple[int, Any]:
    """(status, decoded JSON body or None) of a whole HTTP/1.1 answer."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise DaemonUnavailable(f"overlayd at {path} sent no HTTP answer (was it cut off?)")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            if len(body) < int(value):
                raise DaemonUnavailable(f"overlayd at {path} cut its answer short")
            body = body[: int(value)]
    try:
        return int(parts[1]), load_json(body) if body.strip() else None
    except Invalid:  # not JSON, or nested absurdly deep: not an overlayd answer
        raise DaemonUnavailable(f"overlayd at {path} sent a non-JSON answer") from None
