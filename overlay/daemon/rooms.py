"""How overlayd's rooms serve the API: ``Room``, ``@handles`` and ``build_router``.

Design notes.
- **One room, one job.** overlayd is the life cycle (``service.Daemon``) and
  a few rooms over the parts it brings up (``parts.Parts``): store
  definitions, attachments, reload, views. A room that answers API routes
  marks the methods that do with ``@handles("<route name>")``; the daemon
  hands its rooms to ``build_router``, which registers every route of the
  table (``overlay.daemon.routes``) with the one method that handles it.
  This is felix's shape (one manager per resource, registered with the
  loop), kept small: a new resource (gateways, routes, policies) is a new
  room and new lines in the table, and no existing class grows.
- **Checked when the daemon starts, not when a client calls.** A route
  nobody handles, two rooms handling one route, or a handler for a route
  the table does not have is a ``LookupError`` from ``build_router``, so the
  mistake fails every daemon test instead of one request in production.
- **Handlers are plain methods.** The router passes a handler exactly what
  its route declares, by keyword: the path parameters, the query parameters
  (parsed here, each by one parser, so ``?vni=`` means the same on every
  route: a ``ConfigError`` naming ``vni`` when it is not a number) and
  ``body`` when the route takes one. A handler may be a coroutine or not
  (views answer from memory, at once).
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from overlay.daemon.api import Handler, Router
from overlay.daemon.routes import BY_NAME, ROUTES, Route
from overlay.errors import ConfigError
from overlay.model import _NAME_RE  # the tenant rule of a network's definition

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "_overlay_route"


def handles(name: str) -> Callable[[F], F]:
    """Mark a room's method as the handler of the route ``name`` of the table."""
    if name not in BY_NAME:
        raise LookupError(f"@handles({name!r}): no such route in overlay.daemon.routes")

    def mark(fn: F) -> F:
        setattr(fn, _MARK, name)
        return fn

    return mark


class Room:
    """A part of overlayd with one job; ``handlers()`` are its marked methods."""

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """Route name -> the bound method that handles it."""
        out: dict[str, Callable[..., Any]] = {}
        for attr, fn in inspect.getmembers(type(self), inspect.isfunction):
            name = getattr(fn, _MARK, None)
            if name is not None:
                out[name] = getattr(self, attr)
        return out


def query_vni(value: str) -> int:
    if not value.isdigit():
        raise ConfigError("vni", value, "a VNI (a number)")
    return int(value)


def query_tenant(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ConfigError(
            "tenant", value, "a tenant name (letters, digits, '_', '.', '-'; up to 63)"
        )
    return value


def _query_ip(field: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ConfigError(field, value, "an IPv4 or IPv6 address") from None

    return parse


def query_port(value: str) -> int:
    if not value.isdigit() or len(value) > 5 or int(value) > 65535:
        raise ConfigError("port", value, "a port number 0-65535 (0 for ICMP)")
    return int(value)


_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmp": "ICMP", "icmpv6": "ICMPv6"}


def query_protocol(value: str) -> str:
    got = _PROTOCOLS.get(value.lower())
    if got is None:
        raise ConfigError("protocol", value, "TCP, UDP, SCTP, ICMP or ICMPv6 (any case)")
    return got


def query_since(value: str) -> int:
    if not value.isdigit() or len(value) > 19:
        raise ConfigError("since", value, "a sequence number (the `next` of the last answer)")
    return int(value)


# One parser per query parameter, whatever route reads it.
QUERY: dict[str, Callable[[str], Any]] = {
    "vni": query_vni,
    "tenant": query_tenant,
    "src": _query_ip("src"),
    "dst": _query_ip("dst"),
    "port": query_port,
    "protocol": query_protocol,
    "since": query_since,
}


def _adapt(route: Route, fn: Callable[..., Any]) -> Handler:
    """``fn`` called with what ``route`` declares, as the Router calls a handler."""
    for q in route.query_names:
        if q not in QUERY:
            raise LookupError(f"route {route.name}: no parser for query parameter {q!r}")
    names = route.query_names

    async def handler(query: dict[str, str], body: Any, **params: str) -> Any:
        kw: dict[str, Any] = dict(params)
        for q in names:
            if q in query:
                kw[q] = QUERY[q](query[q])
        if route.body:
            kw["body"] = body
        result = fn(**kw)
        if inspect.isawaitable(result):
            result = await result
        return result

    return handler


def build_router(rooms: Iterable[Room], routes: Iterable[Route] = ROUTES) -> Router:
    """A Router serving every route of ``routes`` with its room's handler; LookupError
    naming the route when one has no handler, two, or a handler has no route."""
    found: dict[str, Callable[..., Any]] = {}
    for room in rooms:
        for name, fn in room.handlers().items():
            if name in found:
                raise LookupError(f"route {name}: handled twice ({found[name]!r} and {fn!r})")
            found[name] = fn
    table: Mapping[str, Route] = {r.name: r for r in routes}
    missing = [name for name in table if name not in found]
    if missing:
        raise LookupError(f"routes without a handler: {missing}")
    extra = sorted(set(found) - set(table))
    if extra:
        raise LookupError(f"handlers of routes the table does not have: {extra}")
    router = Router()
    for route in table.values():
        router.add(route.method, route.path, _adapt(route, found[route.name]))
    return router


__all__ = ["ROUTES", "Room", "build_router", "handles", "query_vni"]
