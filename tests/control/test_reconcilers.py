"""The reconcilers, driven the way the agent's loop drives them, on the recording
fake and on a real ``Node`` alike.

Records go through the real claims check (``Claims``), its checked updates to
every reconciler of ``RECONCILERS`` (``on_update``), then one ``apply`` each:
exactly the agent's ``reconcile`` without a store, so each batch is one call
and nothing waits. The node is a ``RecordingNode`` (counts every change) or a
real ``Node`` in a namespace (its own refusals are real). The agent's loop
with an extra reconciler runs on a MemoryStore.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from typing import Any

import pytest

from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.claims import Claims, NetChanges
from overlay.control.nodeapi import NodeTables
from overlay.control.reconcilers import RECONCILERS, CheckedState, Reconciler
from overlay.control.store import Event, MemoryStore
from overlay.errors import ConflictError
from overlay.model import Endpoint, NetworkSpec, NodeSpec, to_json
from overlay.node import Encap, Node
from overlay.testing.aio import run, until
from overlay.testing.fakes import RecordingNetwork, RecordingNode
from overlay.testing.netns import Topology

NET = 100
ME = "198.18.0.1"


@pytest.fixture(params=["fake", pytest.param("node", marks=pytest.mark.root)])
def node(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The recording fake, or a real node at 198.18.0.1 in a namespace (not started)."""
    if request.param == "fake":
        yield RecordingNode(ME)
        return
    topo: Topology = request.getfixturevalue("overlay_topology")
    ns, other = topo.add_netns("me"), topo.add_netns("other")
    topo.veth(ns, other)
    with Node(ME, Encap.VXLAN, netns=ns.path) as real:
        yield real


class Loop:
    """The agent's reconcile without a store: records in, one batch per ``batch()``."""

    def __init__(self, node: NodeTables, reconcilers: Any = RECONCILERS) -> None:
        self.node = node
        self.claims = Claims(
            "me",
            ipaddress.ip_address(ME),
            [NET],
            programmed=lambda vni: node.networks[vni].tenant if vni in node.networks else None,
        )
        self.reconcilers: list[Reconciler] = [make(node, self.claims, "me") for make in reconcilers]
        self.rev = 1
        self.created: dict[bytes, int] = {}

    def put(self, key: bytes, value: bytes) -> None:
        self.rev += 1
        created = self.created.setdefault(key, self.rev)
        self.claims.apply(Event("put", key, value, self.rev, created))

    def delete(self, key: bytes) -> None:
        self.rev += 1
        self.created.pop(key, None)
        self.claims.apply(Event("delete", key, b"", self.rev))

    def define(self, tenant: str = "blue") -> None:
        self.put(keys.network(NET), to_json(NetworkSpec(vni=NET, tenant=tenant)))

    def member(self, name: str, index: int) -> None:
        spec = NodeSpec(name=name, underlay=f"198.18.0.{index}", networks=(NET,))
        self.put(keys.node(name), to_json(spec))

    def pod(self, node: str, n: int, ip: str | None = None) -> str:
        mac = f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}"
        ep = Endpoint(vni=NET, mac=mac, ips=(ip or f"10.244.{n >> 8}.{n & 255}/16",), node=node)
        self.put(keys.endpoint(NET, node, mac), to_json(ep))
        return mac

    def batch(self, wanted: AbstractSet[int] = frozenset({NET})) -> None:
        for update in self.claims.settle().values():
            for r in self.reconcilers:
                r.on_update(update)
        for r in self.reconcilers:
            r.apply((NET,), wanted)


def tables(node: NodeTables) -> tuple[set[str], dict[str, tuple[str, list[str]]]]:
    net = node.networks.get(NET)
    if net is None:
        return set(), {}
    return (
        {str(v) for v in net.vteps},
        {m: (str(v), [str(i) for i in ips]) for m, (v, ips) in net.remotes.items()},
    )


def drop(node: Any) -> None:
    """The owner removes the network (the fake has no remove_network)."""
    if isinstance(node, Node):
        node.remove_network(NET)
    else:
        del node.networks[NET]


def test_the_table_applies_networks_before_what_is_programmed_into_them() -> None:
    state: CheckedState = Claims("me", ipaddress.ip_address(ME), [NET], programmed=lambda v: None)
    made = [make(RecordingNode(ME), state, "me") for make in RECONCILERS]
    assert [r.name for r in made] == ["networks", "peers", "policy"]


def test_networks_then_peers_program_the_checked_state(node: Any) -> None:
    loop = Loop(node)
    loop.member("b", 2)
    a = loop.pod("b", 1)
    loop.batch()
    assert NET not in node.networks  # not defined yet: nothing made
    loop.define()
    loop.batch()
    assert node.networks[NET].tenant == "blue"
    assert tables(node) == ({"198.18.0.2"}, {a: ("198.18.0.2", ["10.244.0.1"])})
    # One more pod, one gone, one moved to another node: only those change.
    loop.member("c", 3)
    b = loop.pod("b", 2)
    loop.batch()
    loop.delete(keys.endpoint(NET, "b", a))
    loop.pod("c", 2, "10.244.0.9/16")  # b's MAC claimed later by c: refused
    loop.batch()
    assert tables(node) == (
        {"198.18.0.2", "198.18.0.3"},
        {b: ("198.18.0.2", ["10.244.0.2"])},
    )
    assert {r.reason for r in loop.claims.rejected.values()} == {"mac_conflict"}
    loop.delete(keys.node("b"))  # b leaves: its VTEP and pods go, c's claim of b's MAC wins
    loop.batch()
    assert tables(node) == ({"198.18.0.3"}, {b: ("198.18.0.3", ["10.244.0.9"])})


def test_one_change_programs_one_entry_whatever_the_table_size() -> None:
    node = RecordingNode(ME)
    loop = Loop(node)
    loop.define()
    loop.member("b", 2)
    for n in range(1, 300):
        loop.pod("b", n)
    loop.batch()
    net = node.networks[NET]
    before = net.changes
    assert before == 1 + 299  # one VTEP, every remote once
    loop.pod("b", 400)
    loop.batch()
    loop.batch()  # a batch with nothing in it programs nothing
    assert net.changes == before + 1


def test_a_restarted_set_of_reconcilers_adopts_what_the_node_has(node: Any) -> None:
    first = Loop(node)
    first.define()
    first.member("b", 2)
    macs = [first.pod("b", n) for n in range(1, 20)]
    first.batch()
    have = tables(node)
    assert set(have[1]) == set(macs)
    # A new agent's reconcilers on the same node: a full compare, nothing re-added.
    calls: list[str] = []
    net = node.networks[NET]
    for name in ("add_vtep", "remove_vtep", "add_remote", "remove_remote"):
        orig = getattr(net, name)

        def spy(*args: Any, _orig: Any = orig, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _orig(*args, **kw)

        setattr(net, name, spy)
    again = Loop(node)
    for key, value in [
        (keys.network(NET), to_json(NetworkSpec(vni=NET, tenant="blue"))),
        (keys.node("b"), to_json(NodeSpec(name="b", underlay="198.18.0.2", networks=(NET,)))),
    ]:
        again.put(key, value)
    for n in range(1, 19):  # the last pod went away while no agent ran
        again.pod("b", n)
    again.batch()
    assert calls == ["remove_remote"]
    assert set(tables(node)[1]) == set(macs[:-1])


class RefusingNetwork(RecordingNetwork):
    """Refuses remotes with an address in ``taken`` (as a node refuses an address
    a local port has)."""

    taken: set[str] = set()

    def add_remote(self, mac: str, vtep: str, ip: Any = None, port: int | None = None) -> None:
        for a in [ip] if isinstance(ip, str) else list(ip or ()):
            if a in self.taken:
                raise ConflictError(f"ip={a!r} is in use in vni={self.vni}")
        super().add_remote(mac, vtep, ip, port)


class RefusingNode(RecordingNode):
    def add_network(self, vni: int, tenant: str, *, learning: bool = False) -> RefusingNetwork:
        net = RefusingNetwork(vni, tenant)
        self.networks[vni] = net
        return net


def test_an_entry_the_node_refuses_is_logged_once_and_retried_until_it_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = RefusingNode(ME)
    loop = Loop(node)
    loop.define()
    loop.member("b", 2)
    loop.batch()
    net = node.networks[NET]
    assert isinstance(net, RefusingNetwork)
    net.taken = {"10.244.0.5"}
    with caplog.at_level(logging.ERROR, logger="overlay.agent"):
        refused = loop.pod("b", 5)
        ok = loop.pod("b", 6)
        for _ in range(3):
            loop.batch()
    assert set(tables(node)[1]) == {ok}
    lines = [r.getMessage() for r in caplog.records if "not programmed" in r.getMessage()]
    assert len(lines) == 1 and refused in lines[0], lines
    net.taken = set()
    loop.batch()  # no update for it: the retry alone programs it
    assert set(tables(node)[1]) == {ok, refused}
    # A refused entry whose record goes meanwhile is not programmed later.
    net.taken = {"10.244.0.7"}
    gone = loop.pod("b", 7)
    loop.batch()
    loop.delete(keys.endpoint(NET, "b", gone))
    net.taken = set()
    loop.batch()
    loop.batch()
    assert set(tables(node)[1]) == {ok, refused}


def test_another_tenants_network_is_not_touched_and_said_once(
    node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from overlay.control.reconcilers import Peers

    # The definition is accepted while the node has no such network; then
    # someone else makes the VNI on the node for another tenant, before any
    # reconciler made it (the claims check refuses a definition that differs
    # from a network already running, so this is the only way in).
    loop = Loop(node, reconcilers=(Peers,))
    loop.define("blue")
    loop.member("b", 2)
    loop.pod("b", 1)
    loop.batch()
    node.add_network(NET, "red")
    with caplog.at_level(logging.ERROR, logger="overlay.agent"):
        for n in range(2, 5):
            loop.pod("b", n)
            loop.batch()
    assert tables(node) == (set(), {})
    lines = [r.getMessage() for r in caplog.records if "not touching it" in r.getMessage()]
    assert len(lines) == 1 and "'red' here but 'blue'" in lines[0], lines
    # Once its owner makes it the store's network, it is filled.
    drop(node)
    node.add_network(NET, "blue")
    loop.batch()
    assert len(tables(node)[1]) == 4


def test_a_network_made_again_by_its_owner_is_compared_in_full(node: Any) -> None:
    loop = Loop(node)
    loop.define()
    loop.member("b", 2)
    a = loop.pod("b", 1)
    loop.batch()
    # The owner (overlayd's reload) removes the network and makes it again.
    drop(node)
    node.add_network(NET, "blue")
    loop.batch()  # no update: the new network is filled from the checked state
    assert tables(node) == ({"198.18.0.2"}, {a: ("198.18.0.2", ["10.244.0.1"])})


def test_a_full_update_and_a_later_one_merge_before_one_apply() -> None:
    """Updates folded between two applies add up: a full table, then entries
    removed from it and added to it, is programmed as their sum."""
    from overlay.control.claims import Remote
    from overlay.control.reconcilers import Peers

    node = RecordingNode(ME)
    node.add_network(NET, "blue")
    loop = Loop(node)
    loop.define()
    loop.batch()  # the network is compared once (empty)
    peers = next(r for r in loop.reconcilers if isinstance(r, Peers))
    b, c = ipaddress.ip_address("198.18.0.2"), ipaddress.ip_address("198.18.0.3")
    x, y = ipaddress.ip_address("10.244.0.1"), ipaddress.ip_address("10.244.0.2")
    full = NetChanges(
        NET,
        True,
        {"02:00:00:00:00:01": Remote(b, (x,), 0), "02:00:00:00:00:02": Remote(b, (y,), 0)},
        {b: 0},
    )
    later = NetChanges(
        NET, False, {"02:00:00:00:00:01": None, "02:00:00:00:00:03": Remote(c, (x,), 0)}, {c: 0}
    )
    peers.on_update(full)
    peers.on_update(later)
    assert "02:00:00:00:00:01" in full.remotes  # the shared update is not changed
    peers.apply((NET,), {NET})
    assert tables(node) == (
        {"198.18.0.2", "198.18.0.3"},
        {
            "02:00:00:00:00:02": ("198.18.0.2", ["10.244.0.2"]),
            "02:00:00:00:00:03": ("198.18.0.3", ["10.244.0.1"]),
        },
    )


class Recorder:
    """A reconciler that only records what it is given (a new resource's first file)."""

    name = "recorder"
    seen: list[Recorder] = []

    def __init__(self, node: NodeTables, state: CheckedState, me: str) -> None:
        self.updates: list[NetChanges] = []
        self.applies: list[tuple[tuple[int, ...], AbstractSet[int]]] = []
        self.networks_there: list[bool] = []
        self.node = node
        Recorder.seen.append(self)

    def on_update(self, update: NetChanges) -> None:
        self.updates.append(update)

    def apply(self, hosted: tuple[int, ...], wanted: AbstractSet[int]) -> None:
        self.applies.append((hosted, set(wanted)))
        self.networks_there.append(all(v in self.node.networks for v in hosted))


def test_a_reconciler_added_to_the_table_gets_every_update_and_one_apply_per_batch(
    loop_kind: str,
) -> None:
    async def main() -> None:
        Recorder.seen.clear()
        store = MemoryStore()
        await store.put(keys.network(NET), to_json(NetworkSpec(vni=NET, tenant="blue")))
        node = RecordingNode(ME)
        agent = Agent(
            node, store, "me", networks=(NET,), ttl=5, reconcilers=(*RECONCILERS, Recorder)
        )
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.synced.wait(), 10)
            rec = Recorder.seen[-1]
            spec = NodeSpec(name="b", underlay="198.18.0.2", networks=(NET,))
            await store.put(keys.node("b"), to_json(spec))
            ep = Endpoint(vni=NET, mac="02:00:00:00:00:01", ips=("10.244.9.1/16",), node="b")
            await store.put(keys.endpoint(NET, "b", ep.mac), to_json(ep))
            await until(lambda: ep.mac in node.networks[NET].remotes, 10)
            await until(lambda: any(ep.mac in u.remotes for u in rec.updates), 10)
            assert len(rec.applies) == agent.reconciles  # one apply per batch
            assert all(h == (NET,) for h, _ in rec.applies)
            assert all(rec.networks_there)  # it applies after "networks"
            assert rec.updates[0].full and all(u.vni == NET for u in rec.updates)
        finally:
            await agent.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    run(loop_kind, main)
