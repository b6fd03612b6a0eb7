"""Agents on real nodes: three namespaced nodes find each other through the store.

Pods are added through ``Agent.add_endpoint`` (address from the node's subnet
lease, TAP, announcement), moved into their namespaces and reached from the
other nodes; an agent restarted under traffic flaps nothing; a node that goes
away leaves every peer's tables within its TTL.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.store import MemoryStore
from overlay.model import NetworkSpec, to_json
from overlay.node import Encap, Node
from overlay.testing.cluster import underlay_ip
from overlay.testing.netns import Netns, Topology
from overlay.testing.traffic import ping, tcp_transfer

pytestmark = pytest.mark.root


def run(main: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 90))
    finally:
        loop.close()


async def until(pred: Callable[[], bool], timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def in_thread(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kw))


class Site:
    """Three nodes on one underlay segment, each with a Node and an Agent."""

    def __init__(self, topo: Topology, store: MemoryStore, ttl: float) -> None:
        # Build the namespaces before the loop runs: pyroute2 drives its own loop.
        self.topo, self.store, self.ttl = topo, store, ttl
        self.ns: list[Netns] = [topo.add_netns(f"n{i}") for i in range(3)]
        self.pod_ns = [topo.add_netns(f"pod{i}") for i in range(3)]
        topo.lan(self.ns, [f"{underlay_ip(i)}/24" for i in range(3)])
        self.nodes = [
            Node(underlay_ip(i), Encap.VXLAN, netns=ns.path) for i, ns in enumerate(self.ns)
        ]
        self.agents: list[Agent | None] = [None] * 3
        self.tasks: list[asyncio.Task[None] | None] = [None] * 3

    def start_agent(self, i: int) -> Agent:
        a = Agent(self.nodes[i], self.store, f"node{i}", networks=(100,), ttl=self.ttl)
        self.agents[i] = a
        self.tasks[i] = asyncio.create_task(a.run())
        return a

    async def crash_agent(self, i: int) -> None:
        task, agent = self.tasks[i], self.agents[i]
        assert task is not None and agent is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await agent.stop(deregister=False)
        self.tasks[i] = None

    async def add_pod(self, i: int, name: str) -> tuple[Netns, str]:
        agent = self.agents[i]
        assert agent is not None
        ep, port = await agent.add_endpoint(100, name=name)
        ns = self.pod_ns[i]
        port.move_to_netns(ns.path, "eth0")
        return ns, str(ipaddress.ip_interface(ep.ips[0]).ip)

    async def close(self) -> None:
        for i in range(3):
            if self.tasks[i] is not None and self.agents[i] is not None:
                await self.agents[i].stop()  # type: ignore[union-attr]
                self.tasks[i].cancel()  # type: ignore[union-attr]
        await asyncio.gather(*(t for t in self.tasks if t), return_exceptions=True)
        for n in self.nodes:
            n.close()


def remotes(node: Node) -> set[str]:
    net = node.networks.get(100)
    return set(net.remotes) if net else set()


def test_nodes_discover_each_other_pods_reach_across_restart_and_removal(
    overlay_topology: Topology,
) -> None:
    store = MemoryStore()
    site = Site(overlay_topology, store, ttl=2.0)

    async def main() -> None:
        await store.put(keys.network(100), to_json(NetworkSpec(vni=100, tenant="blue")))
        try:
            for i in range(3):
                site.start_agent(i)
                site.nodes[i].start()
            pods = [await site.add_pod(i, f"pod{i}") for i in range(3)]
            await until(lambda: all(len(remotes(n)) == 2 for n in site.nodes))
            # Each node leased its own subnet; addresses come from it.
            subnets = [a.subnets[100] for a in site.agents if a]
            assert len(set(subnets)) == 3
            for i, (ns, _) in enumerate(pods):
                for j, (_, ip) in enumerate(pods):
                    if i != j:
                        r = await in_thread(ping, ns, ip, count=2, interval=0.1)
                        assert r.ok, (i, j, r.output)

            # Restart node0's agent while a TCP transfer runs from pod0 to pod1.
            net0 = site.nodes[0].network(100)
            before = (set(net0.vteps), dict(net0.remotes))
            transfer = asyncio.ensure_future(
                in_thread(tcp_transfer, pods[0][0], pods[1][0], pods[1][1], 150_000_000, timeout=60)
            )
            await asyncio.sleep(0.05)
            await site.crash_agent(0)
            again = site.start_agent(0)
            await asyncio.wait_for(again.synced.wait(), 10)
            assert (set(net0.vteps), dict(net0.remotes)) == before
            result = await transfer
            assert result.ok, result

            # Node 2 goes away: its VTEP and pod leave the others within the TTL.
            await site.crash_agent(2)
            site.nodes[2].stop()
            gone = pods[2][1]
            await until(
                lambda: all(len(remotes(site.nodes[i])) == 1 for i in (0, 1)), timeout=2.0 + 3.0
            )
            assert all(
                str(ipaddress.ip_address(underlay_ip(2)))
                not in {str(v) for v in site.nodes[i].network(100).vteps}
                for i in (0, 1)
            )
            r = await in_thread(ping, pods[0][0], gone, count=1, timeout=1)
            assert r.received == 0
        finally:
            await site.close()
            await store.close()

    run(main)
