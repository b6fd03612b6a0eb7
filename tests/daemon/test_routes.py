"""The one route table of overlayd's API (``overlay.daemon.routes``) and its three
readers: the server registers from it, the client sends it, the README lists it.
A route added in one place only fails here. The server runs in this process
(no daemon, no root): a room that records what each handler was given."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from overlay.daemon import routes
from overlay.daemon.api import ApiServer
from overlay.daemon.client import ApiError, Client
from overlay.daemon.config import parse
from overlay.daemon.rooms import Room, build_router, handles
from overlay.daemon.routes import BY_NAME, ROUTES, Route
from overlay.daemon.service import Daemon

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_api_table(text: str) -> str:
    """The table of the README's "The local API" section, as written."""
    section = text.split("### The local API", 1)[1].split("\n### ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| method and path"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append(ln)
    return "\n".join(table) + "\n"


def table_drift(readme: str, table: tuple[Route, ...]) -> list[str]:
    """What differs between the README's table and the route table: one line each."""
    written = readme_api_table(readme).splitlines()[2:]
    wanted = [r.readme_row() for r in table]
    out = [f"README only: {row}" for row in written if row not in wanted]
    out += [f"route table only (the README wants): {row}" for row in wanted if row not in written]
    if not out and written != wanted:
        out.append("the README lists the routes in another order than the table")
    return out


def test_the_readme_lists_every_route_as_the_table_has_it() -> None:
    text = README.read_text()
    assert table_drift(text, ROUTES) == []
    assert readme_api_table(text) == routes.readme_table()


def test_a_route_in_one_place_only_is_drift() -> None:
    """The check above can fail: a route only in the table, or only in the README."""
    text = README.read_text()
    extra = Route("gateways", "GET", "/v1/gateways", "the node's gateway ports")
    assert table_drift(text, (*ROUTES, extra)) == [
        "route table only (the README wants): | `GET /v1/gateways` | the node's gateway ports |"
    ]
    assert table_drift(text, ROUTES[:-1]) == [f"README only: {ROUTES[-1].readme_row()}"]


# -- the client and the server against one table ------------------------------------


class Recorder(Room):
    """Handles every route of the table by writing down what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def handlers(self) -> dict[str, Callable[..., Any]]:
        def recorder(name: str) -> Callable[..., Any]:
            async def handler(**kw: Any) -> Any:
                self.calls.append((name, kw))
                return {"route": name}

            return handler

        return {r.name: recorder(r.name) for r in ROUTES}


@contextlib.asynccontextmanager
async def serving(*rooms: Room) -> AsyncIterator[Client]:
    d = tempfile.mkdtemp(prefix="ovroutes-")
    server = ApiServer(build_router(rooms), os.path.join(d, "api.sock"))
    await server.start()
    try:
        yield Client(server.path, timeout=10)
    finally:
        await server.close()
        os.rmdir(d)


# What each client method is called with here, and what its handler must get.
CID = "ctr%1-ü"  # percent-encoded on the way, decoded for the handler
CALLS: dict[str, tuple[Callable[[Client], Any], dict[str, Any]]] = {
    "status": (lambda c: c.status(), {}),
    "health": (lambda c: c.health(), {}),
    "networks": (lambda c: c.networks(), {}),
    "endpoints": (lambda c: c.endpoints(vni=7), {"vni": 7}),
    "attach": (lambda c: c.attach({"vni": 1}), {"body": {"vni": 1}}),
    "attachments": (lambda c: c.attachments(), {}),
    "attachment": (
        lambda c: c.attachment(CID, "eth0"),
        {"container_id": CID, "ifname": "eth0"},
    ),
    "detach": (lambda c: c.detach(CID, "eth1"), {"container_id": CID, "ifname": "eth1"}),
    "gc": (
        lambda c: c.gc([{"container_id": "a", "ifname": "eth0"}], vni=3),
        {"body": {"valid": [{"container_id": "a", "ifname": "eth0"}], "vni": 3}},
    ),
    "peers": (lambda c: c.peers(), {}),
    "fdb": (lambda c: c.fdb(vni=0), {"vni": 0}),
    "counters": (lambda c: c.counters(), {}),
    "reload": (lambda c: c.reload(), {}),
    "policy_apply": (
        lambda c: c.policy_apply("kind: Namespace", tenant="acme", prune=True),
        {
            "body": {
                "manifest": "kind: Namespace",
                "tenant": "acme",
                "prune": True,
                "dry_run": False,
            }
        },
    ),
    "policy_get": (lambda c: c.policy_get(tenant="acme"), {"tenant": "acme"}),
    "policy_delete": (
        lambda c: c.policy_delete("netpol", "web", "x"),
        {"body": {"kind": "netpol", "name": "web", "namespace": "x"}},
    ),
    "policy_explain": (
        lambda c: c.policy_explain("10.0.0.1", "fd00::2", 80, "udp", vni=5),
        {"src": "10.0.0.1", "dst": "fd00::2", "port": 80, "protocol": "UDP", "vni": 5},
    ),
    "policy_drops": (lambda c: c.policy_drops(since=12), {"since": 12}),
    "policy_status": (lambda c: c.policy_status(), {}),
    "policy_verify": (lambda c: c.policy_verify(tenant="a.b-c"), {"tenant": "a.b-c"}),
    "policy_repair": (lambda c: c.policy_repair(), {}),
}


def test_the_client_has_one_method_per_route_named_after_it() -> None:
    methods = {
        name
        for name, fn in inspect.getmembers(Client, inspect.isfunction)
        if not name.startswith("_")
    }
    assert methods - {"request", "call"} == set(BY_NAME)
    assert set(CALLS) == set(BY_NAME)


def test_every_client_method_reaches_its_handler_with_what_it_sent() -> None:
    async def go() -> None:
        room = Recorder()
        async with serving(room) as client:
            for name, (send, given) in CALLS.items():
                answer = await asyncio.to_thread(send, client)
                assert answer == {"route": name}
                assert room.calls[-1] == (name, given), name
            # Without the optional query parameter, the handler gets nothing for it.
            await asyncio.to_thread(client.fdb)
            assert room.calls[-1] == ("fdb", {})

    asyncio.run(asyncio.wait_for(go(), 60))


def test_a_query_parameter_is_parsed_alike_on_every_route_that_reads_it() -> None:
    async def go() -> None:
        async with serving(Recorder()) as client:
            for route in ROUTES:
                if "vni" not in route.query_names:
                    continue
                with pytest.raises(ApiError) as err:
                    await asyncio.to_thread(client.request, route.method, route.path + "?vni=x")
                assert (err.value.status, err.value.field, err.value.value) == (400, "vni", "x")

    asyncio.run(asyncio.wait_for(go(), 60))


def test_the_policy_query_parameters_are_refused_naming_themselves() -> None:
    bad = {
        "tenant": "no/such tenant",
        "src": "10.0.0.300",
        "dst": "host",
        "port": "65536",
        "protocol": "icmp6",
        "since": "-1",
    }

    async def go() -> None:
        async with serving(Recorder()) as client:
            for route in ROUTES:
                for q in route.query_names:
                    if q not in bad:
                        continue
                    target = f"{route.path}?{q}={bad[q]}".replace(" ", "%20")
                    with pytest.raises(ApiError) as err:
                        await asyncio.to_thread(client.request, route.method, target)
                    assert (err.value.status, err.value.field) == (400, q), (route, q)
                    assert err.value.value == bad[q]

    asyncio.run(asyncio.wait_for(go(), 60))


# -- the server registers from the table ---------------------------------------------


def _config() -> Any:
    return parse('[node]\nname = "node-a"\nunderlay = "198.18.0.1"\n')


def test_the_daemons_rooms_serve_every_route_of_the_table_once() -> None:
    daemon = Daemon(_config())
    found: dict[str, str] = {}
    for room in daemon.rooms:
        for name in room.handlers():
            assert name not in found, f"{name}: {found[name]} and {type(room).__name__}"
            found[name] = type(room).__name__
    assert set(found) == set(BY_NAME)
    router = build_router(daemon.rooms)
    for route in ROUTES:
        path = re.sub(r"<\w+>", "x", route.path)
        assert not isinstance(router.match(route.method, path), int), route


def test_a_route_without_a_handler_or_a_handler_without_a_route_is_refused() -> None:
    class Partial(Room):
        @handles("status")
        def status(self) -> dict[str, Any]:
            return {}

    with pytest.raises(LookupError, match="without a handler.*'health'"):
        build_router([Partial()])
    with pytest.raises(LookupError, match="the table does not have.*'status'"):
        build_router([Partial()], routes=[])
    with pytest.raises(LookupError, match="status: handled twice"):
        build_router([Partial(), Partial(), Recorder()])
    with pytest.raises(LookupError, match="no such route"):
        handles("gateways")


def test_a_route_target_is_built_from_its_path_and_declared_query() -> None:
    r = BY_NAME["attachment"]
    assert r.params == ("container_id", "ifname")
    assert r.target(["a b", "eth0"]) == "/v1/attachments/a%20b/eth0"
    assert BY_NAME["fdb"].target(query={"vni": 5}) == "/v1/fdb?vni=5"
    assert BY_NAME["fdb"].target(query={"vni": None}) == "/v1/fdb"
    with pytest.raises(ValueError, match="path parameters"):
        r.target(["only-one"])
    with pytest.raises(ValueError, match="no query parameter"):
        BY_NAME["status"].target(query={"vni": 1})
