"""overlayd's local API, version 1: the one table of its routes.

Design notes.
- **One table, three readers.** The route list used to be written three times
  (the server's registrations, the client's methods, the README's table) and
  the copies drifted: the client had no ``reload``. Now each route is one
  line here: its name, method, path, summary, the query parameters it reads
  and whether it takes a body. The server registers from it
  (``overlay.daemon.rooms.build_router`` refuses a route no room handles and
  a handler no route names), the client sends the table's method and path by
  route name (``Client.call``; a test calls every client method against a
  server built from the table), and the README's table of the local API is
  this table rendered by ``readme_table`` (a test compares the two row by
  row). A route added in one place only fails a test.
- **A line declares what its handler takes.** Path parameters (``<name>``),
  the query parameters it reads (``query="vni=N"``, optional, as the README
  writes them) and a body: the server passes exactly these to the handler as
  keyword arguments, so handlers are plain methods of their room.
- **Plain data, standard library only.** The client imports this module,
  and the CNI plugin imports the client in a process started for every pod:
  nothing here may cost import time (``Route`` is a plain class with slots,
  since a dataclass costs the plugin half a millisecond to build).
- **Room for the next resources.** Gateways, routes and policies each add
  their lines here (grouped by room), one room with a handler per line
  (``overlay.daemon.rooms.Room``) and one client method per line; no
  existing class grows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

_PARAM = re.compile(r"<(\w+)>")


class Route:
    """One route of the API (a plain class, not a dataclass: see the design notes)."""

    __slots__ = ("name", "method", "path", "summary", "query", "body")

    def __init__(
        self,
        name: str,  # the handler's key in its room and the client method's name
        method: str,  # GET, POST, DELETE
        path: str,  # parameters written <name>; the handler gets them by that name
        summary: str,  # what it answers: the README's "what" column
        query: str = "",  # optional query parameters it reads, as "vni=N" (the README's form)
        body: bool = False,  # takes a JSON body (passed to the handler as ``body``)
    ) -> None:
        self.name = name
        self.method = method
        self.path = path
        self.summary = summary
        self.query = query
        self.body = body

    def __repr__(self) -> str:
        return f"Route({self.name!r}, {self.method} {self.path})"

    @property
    def params(self) -> tuple[str, ...]:
        """The path parameters, in order."""
        return tuple(_PARAM.findall(self.path))

    @property
    def query_names(self) -> tuple[str, ...]:
        """The names of the query parameters the route reads."""
        return tuple(part.split("=")[0] for part in self.query.split("&") if part)

    def target(self, params: Sequence[str] = (), query: Mapping[str, Any] | None = None) -> str:
        """The request target: the path with ``params`` percent-encoded in, and the
        query parameters that are not None (ValueError for a count or name the
        route does not declare)."""
        names = self.params
        if len(params) != len(names):
            raise ValueError(f"{self.name}: {len(names)} path parameters {names}, not {params!r}")
        values = iter(params)
        path = _PARAM.sub(lambda _m: quote(str(next(values))), self.path)
        given = {k: v for k, v in (query or {}).items() if v is not None}
        unknown = sorted(set(given) - set(self.query_names))
        if unknown:
            raise ValueError(f"{self.name}: no query parameter {unknown}")
        return path + ("?" + urlencode(given) if given else "")

    def readme_row(self) -> str:
        """The route's row in the README's table of the local API."""
        query = f"[?{self.query}]" if self.query else ""
        return f"| `{self.method} {self.path}{query}` | {self.summary} |"


# The routes in the order the README lists them, grouped by the room that serves them.
ROUTES: tuple[Route, ...] = (
    # views (overlay.daemon.views): read-only answers
    Route(
        "status",
        "GET",
        "/v1/status",
        "node, underlay, store and whether it is connected, counts, `ready`",
    ),
    Route("health", "GET", "/v1/health", "readiness and every peer's probe results"),
    Route(
        "networks",
        "GET",
        "/v1/networks",
        "hosted networks: tenant, CIDR, mode, this node's subnet, pod MTU, VTEPs, endpoint counts",
    ),
    Route(
        "endpoints",
        "GET",
        "/v1/endpoints",
        "endpoints of hosted networks, local ones with container and interface",
        query="vni=N",
    ),
    # attachments (overlay.daemon.attach): pods on this node
    Route("attach", "POST", "/v1/endpoints", "attach a pod (what CNI ADD does)", body=True),
    Route(
        "attachments",
        "GET",
        "/v1/attachments",
        "local attachments, and those kept for DEL (`attached`: false)",
    ),
    Route(
        "attachment",
        "GET",
        "/v1/attachments/<container_id>/<ifname>",
        "one attachment, with its interface as the kernel sees it (what CNI CHECK compares)",
    ),
    Route(
        "detach",
        "DELETE",
        "/v1/attachments/<container_id>/<ifname>",
        "detach (404 when there is none)",
    ),
    Route(
        "gc",
        "POST",
        "/v1/gc",
        '`{"valid": [{"container_id", "ifname"}], "vni": N}`: detach every other attachment',
        body=True,
    ),
    # views again: what the data plane and the prober see
    Route(
        "peers",
        "GET",
        "/v1/peers",
        "other nodes: underlay, shared networks, path per routed network, reachable, RTT",
    ),
    Route("fdb", "GET", "/v1/fdb", "the data plane's forwarding table", query="vni=N"),
    Route(
        "counters",
        "GET",
        "/v1/counters",
        "every counter, drops by reason, per network and per port",
    ),
    # reload (overlay.daemon.reload)
    Route(
        "reload",
        "POST",
        "/v1/reload",
        "the same as `SIGHUP`, answering with what changed or why not",
    ),
    # policy (overlay.daemon.policy): a tenant's policies in the store, verdicts, drops
    Route(
        "policy_apply",
        "POST",
        "/v1/policies",
        '`{"tenant", "manifest" (YAML/JSON text) or "objects", "namespace", "prune", '
        '"dry_run"}`: check, then write what differs (all or nothing: a refusal names '
        "the document and field)",
        body=True,
    ),
    Route(
        "policy_get",
        "GET",
        "/v1/policies",
        "a tenant's policies and namespaces as stored (manifests), the set's hash and "
        "revision, records refused",
        query="tenant=T",
    ),
    Route(
        "policy_delete",
        "POST",
        "/v1/policies/delete",
        '`{"tenant", "kind", "name", "namespace"}`, or `"manifest"`/`"objects"`: delete '
        "those records (404 when one is not there)",
        body=True,
    ),
    Route(
        "policy_explain",
        "GET",
        "/v1/policies/explain",
        "what the policies decide for a connection (tier, policy, rule, per direction), "
        "and what the tables in force do (`dataplane`)",
        query="src=IP&dst=IP&port=N&protocol=P&vni=N",
    ),
    Route(
        "policy_drops",
        "GET",
        "/v1/policies/drops",
        "the data plane's policy denies and audited denies, from sequence number N "
        '(`{"next", "events"}`)',
        query="since=N",
    ),
    Route(
        "policy_status",
        "GET",
        "/v1/policies/status",
        "per node and tenant: the set in force, in sync with the store or how far behind",
        query="tenant=T",
    ),
    Route(
        "policy_verify",
        "GET",
        "/v1/policies/verify",
        "what each node's verification probe found: cells checked, tables that disagree "
        "with the policies",
        query="tenant=T",
    ),
    Route(
        "policy_repair",
        "POST",
        "/v1/policies/repair",
        "set every policy table of this node again, then a verification round: what it found",
    ),
)

BY_NAME: dict[str, Route] = {r.name: r for r in ROUTES}
assert len(BY_NAME) == len(ROUTES), "route names are unique"


def readme_table() -> str:
    """The README's table of the local API, as this module has it."""
    head = "| method and path | what |\n|---|---|\n"
    return head + "\n".join(r.readme_row() for r in ROUTES) + "\n"
