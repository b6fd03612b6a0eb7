"""The agent: discovery, distribution, liveness, faults — on asyncio and uvloop,
against the embedded ``MemoryStore`` and a real etcd.

Nodes here are ``RecordingNode`` fakes (the same network API as ``overlay.Node``,
without a data plane), so many agents share one process. A store outage is
``set_available(False)`` for the MemoryStore and a killed (then restarted)
etcd. Nothing is timed: each test waits for a condition, bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import pytest

from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.store import MemoryStore, Store, StoreUnavailable
from overlay.model import Endpoint, NetworkSpec, to_json
from overlay.testing.aio import run, until
from overlay.testing.fakes import RecordingNode


class Backend:
    """Makes the store for a test and takes it away for outage tests."""

    def __init__(self, kind: str, server: Any = None) -> None:
        self.kind = kind
        self.server = server

    def store(self) -> Store:
        if self.kind == "memory":
            return MemoryStore()
        from overlay.control.etcd import EtcdStore

        return EtcdStore([self.server.endpoint])

    async def outage(self, store: Store, seconds: float) -> None:
        if self.kind == "memory":
            store.set_available(False)  # type: ignore[attr-defined]
            await asyncio.sleep(seconds)
            store.set_available(True)  # type: ignore[attr-defined]
            return
        self.server.kill()
        await asyncio.sleep(seconds)
        await asyncio.get_running_loop().run_in_executor(None, self.server.start)


@pytest.fixture(params=["memory", "etcd"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Backend("memory")
    return Backend("etcd", request.getfixturevalue("overlay_etcd"))


class Cluster:
    """Agents on RecordingNodes sharing one store."""

    def __init__(self, store: Store, ttl: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def define(self, vni: int, tenant: str = "blue") -> None:
        await self.store.put(keys.network(vni), to_json(NetworkSpec(vni=vni, tenant=tenant)))

    def start(self, name: str, index: int, networks: tuple[int, ...], node: Any = None) -> Agent:
        node = node or RecordingNode(f"198.18.0.{index}")
        agent = Agent(node, self.store, name, networks=networks, ttl=self.ttl)
        self.agents[name] = agent
        self.tasks[name] = asyncio.create_task(agent.run())
        return agent

    async def endpoint(self, name: str, vni: int, index: int) -> Endpoint:
        ep = Endpoint(
            vni=vni, mac=f"02:00:00:00:{index:02x}:02", ips=(f"10.244.{index}.2/16",), node=name
        )
        await self.agents[name].publish_endpoint(ep)
        return ep

    async def crash(self, name: str) -> None:
        """The agent stops without a word: no more keepalives, no revoke."""
        task = self.tasks.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.agents[name].stop(deregister=False)

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for name in list(self.tasks):
            await self.agents[name].stop()
            self.tasks[name].cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.store.close()


def tables(agent: Agent, vni: int) -> tuple[set[str], dict[str, tuple[str, list[str]]]]:
    net = agent.node.networks.get(vni)
    if net is None:
        return set(), {}
    return (
        {str(v) for v in net.vteps},
        {m: (str(v), [str(i) for i in ips]) for m, (v, ips) in net.remotes.items()},
    )


def test_agents_discover_each_other_and_program_vteps_and_endpoints(
    loop_kind: str, backend: Backend
) -> None:
    async def main() -> None:
        async with Cluster(backend.store()) as c:
            await c.define(100)
            for i, name in enumerate(("a", "b", "c"), start=1):
                c.start(name, i, (100,))
            for i, name in enumerate(("a", "b", "c"), start=1):
                await c.endpoint(name, 100, i)
            a = c.agents["a"]
            await until(lambda: len(tables(a, 100)[1]) == 2)
            vteps, remotes = tables(a, 100)
            assert vteps == {"198.18.0.2", "198.18.0.3"}
            assert remotes == {
                "02:00:00:00:02:02": ("198.18.0.2", ["10.244.2.2"]),
                "02:00:00:00:03:02": ("198.18.0.3", ["10.244.3.2"]),
            }
            assert a.node.networks[100].tenant == "blue"
            # A pod removed on b disappears from a and c.
            await c.agents["b"].withdraw_endpoint(100, "02:00:00:00:02:02")
            await until(
                lambda: (
                    "02:00:00:00:02:02" not in tables(a, 100)[1]
                    and "02:00:00:00:02:02" not in tables(c.agents["c"], 100)[1]
                )
            )

    run(loop_kind, main)


def test_a_node_learns_only_the_networks_it_hosts(loop_kind: str, backend: Backend) -> None:
    async def main() -> None:
        async with Cluster(backend.store()) as c:
            await c.define(100, "blue")
            await c.define(200, "red")
            c.start("a", 1, (100,))
            c.start("b", 2, (100, 200))
            c.start("c", 3, (200,))
            await c.endpoint("b", 100, 2)
            await c.endpoint("b", 200, 3)
            await c.endpoint("c", 200, 4)
            await until(
                lambda: (
                    len(tables(c.agents["b"], 200)[1]) == 1
                    and len(tables(c.agents["a"], 100)[1]) == 1
                )
            )
            a = c.agents["a"]
            assert set(a.node.networks) == {100}
            assert set(a.endpoints) == {100}  # never read red's endpoints
            assert tables(a, 100)[0] == {"198.18.0.2"}  # c does not host 100
            assert tables(c.agents["c"], 200)[0] == {"198.18.0.2"}

    run(loop_kind, main)


def test_hosting_a_network_later_reads_it_without_losing_changes(
    loop_kind: str, backend: Backend
) -> None:
    """set_networks: a network defined right after the node starts hosting it is
    seen (no change is lost while the watches are rebuilt), and peers learn of it."""

    async def main() -> None:
        async with Cluster(backend.store()) as c:
            await c.define(100)
            a = c.start("a", 1, (100,))
            b = c.start("b", 2, (100, 200))
            await until(lambda: a.synced.is_set() and b.synced.is_set())
            await a.set_networks([100, 200])
            await c.define(200, "green")  # right away: must not be lost
            await c.endpoint("b", 200, 7)
            await until(lambda: len(tables(a, 200)[1]) == 1)
            assert a.node.networks[200].tenant == "green"
            assert tables(a, 200)[0] == {"198.18.0.2"}
            await until(lambda: tables(b, 200)[0] == {"198.18.0.1"})  # b sees a host 200
            await a.set_networks([100])
            await until(lambda: tables(b, 200)[0] == set())
            assert set(a.endpoints) == {100}

    run(loop_kind, main)


def test_a_node_that_stops_renewing_is_removed_within_its_ttl(
    loop_kind: str, backend: Backend
) -> None:
    async def main() -> None:
        async with Cluster(backend.store(), ttl=2.0) as c:
            await c.define(100)
            for i, name in enumerate(("a", "b", "c"), start=1):
                c.start(name, i, (100,))
                await c.endpoint(name, 100, i)
            a = c.agents["a"]
            await until(lambda: len(tables(a, 100)[1]) == 2)
            await c.crash("c")
            # Gone once its lease expires. The bound is generous on purpose: etcd
            # revokes expired leases in a periodic sweep, and a loaded machine can
            # add seconds; tests do not fail on timing.
            await until(
                lambda: (
                    tables(a, 100)
                    == ({"198.18.0.2"}, {"02:00:00:00:02:02": ("198.18.0.2", ["10.244.2.2"])})
                ),
                timeout=20,
            )
            assert "c" not in c.agents["b"].nodes

    run(loop_kind, main)


def test_store_outage_keeps_tables_logs_once_and_resynchronises(
    loop_kind: str, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        store = backend.store()
        async with Cluster(store, ttl=5) as c:
            await c.define(100)
            for i, name in enumerate(("a", "b"), start=1):
                c.start(name, i, (100,))
                await c.endpoint(name, 100, i)
            a = c.agents["a"]
            await until(lambda: len(tables(a, 100)[1]) == 1)
            before = tables(a, 100)
            with caplog.at_level(logging.WARNING, logger="overlay.agent"):
                outage = asyncio.create_task(backend.outage(store, 1.5))  # retries meanwhile
                await asyncio.sleep(1.0)
                assert tables(a, 100) == before  # forwarding state untouched
                await outage
                await until(lambda: not c.agents["b"]._down, timeout=15)
                # A change after the outage. A restarted etcd on a loaded machine may
                # still refuse the first writes while it elects itself: a caller (the
                # daemon's attach) gets StoreUnavailable and tries again, so does this.
                for attempt in range(30):
                    try:
                        await c.endpoint("b", 100, 9)
                        break
                    except StoreUnavailable:
                        if attempt == 29:
                            raise
                        await asyncio.sleep(0.5)
                await until(lambda: len(tables(a, 100)[1]) == 2, timeout=15)
            down = [
                r
                for r in caplog.records
                if "unavailable" in r.getMessage() and r.getMessage().startswith("agent a:")
            ]
            assert len(down) == 1, [r.getMessage() for r in caplog.records]
            # The same tables as a fresh agent would program.
            fresh = Agent(RecordingNode("198.18.0.7"), store, "fresh", networks=(100,), ttl=5)
            t = asyncio.create_task(fresh.run())
            await until(lambda: len(tables(fresh, 100)[1]) == 3)
            want = dict(tables(fresh, 100)[1])
            del want["02:00:00:00:01:02"]  # a's own pod is local on a
            assert tables(a, 100)[1] == want
            await fresh.stop()
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    run(loop_kind, main)


def test_restarted_agent_adopts_existing_entries_without_flapping(
    loop_kind: str, backend: Backend
) -> None:
    async def main() -> None:
        async with Cluster(backend.store(), ttl=5) as c:
            await c.define(100)
            node_a = RecordingNode("198.18.0.1")
            c.start("a", 1, (100,), node=node_a)
            for i, name in enumerate(("b", "c", "d"), start=2):
                c.start(name, i, (100,))
                await c.endpoint(name, 100, i)
            await until(lambda: len(node_a.networks.get(100, _Empty()).remotes) == 3)
            changes = node_a.networks[100].changes
            await c.crash("a")  # within the TTL nothing expires
            again = c.start("a", 1, (100,), node=node_a)
            await asyncio.wait_for(again.synced.wait(), 5)
            assert node_a.networks[100].changes == changes  # nothing removed and re-added
            await c.endpoint("b", 100, 12)  # and it keeps working
            await until(lambda: len(node_a.networks[100].remotes) == 4)

    run(loop_kind, main)


class _Empty:
    remotes: dict[str, Any] = {}


def test_bad_data_in_the_store_is_logged_with_its_key_and_skipped(
    loop_kind: str, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        store = backend.store()
        async with Cluster(store) as c:
            await c.define(100)
            await store.put(keys.NETWORKS + b"not-a-vni", b"{}")
            await store.put(keys.network(300), b"{not json")
            await store.put(keys.endpoint(100, "b", "02:00:00:00:99:99"), b'{"vni": 100}')
            await store.put(keys.node("ghost"), b'{"name": "other", "underlay": "198.18.0.9"}')
            with caplog.at_level(logging.WARNING, logger="overlay.agent"):
                c.start("a", 1, (100,))
                c.start("b", 2, (100,))
                await c.endpoint("b", 100, 2)
                await store.put(
                    keys.endpoint(100, "b", "02:00:00:00:98:98"),
                    b'{"vni":100,"mac":"02:00:00:00:98:98","ips":["nonsense"],"node":"b"}',
                )
                await until(lambda: len(tables(c.agents["a"], 100)[1]) == 1)
                await asyncio.sleep(0.2)
            msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("agent a:")]
            for bad in (
                keys.NETWORKS + b"not-a-vni",
                keys.network(300),
                keys.endpoint(100, "b", "02:00:00:00:99:99"),
                keys.node("ghost"),
                keys.endpoint(100, "b", "02:00:00:00:98:98"),
            ):
                assert any(repr(bad) in m for m in msgs), (bad, msgs)
            assert tables(c.agents["a"], 100)[1] == {
                "02:00:00:00:02:02": ("198.18.0.2", ["10.244.2.2"])
            }

    run(loop_kind, main)


def test_agent_refuses_bad_arguments() -> None:
    from overlay.errors import ConfigError

    node = RecordingNode("198.18.0.1")
    with pytest.raises(ConfigError, match="ttl"):
        Agent(node, MemoryStore(), "a", ttl=0.1)
    with pytest.raises(ConfigError, match="node.name"):
        Agent(node, MemoryStore(), "bad name!")
    agent = Agent(node, MemoryStore(), "a")

    async def main() -> None:
        with pytest.raises(ConfigError, match="endpoint.node"):
            await agent.publish_endpoint(
                Endpoint(vni=1, mac="02:00:00:00:00:01", ips=(), node="someone-else")
            )

    run("asyncio", main)
    assert ipaddress.ip_address("198.18.0.1") == node.underlay
