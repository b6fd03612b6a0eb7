"""Control-plane convergence at scale: how long until a new pod is known everywhere.

N agents (10, 50, 200) run in this process on ``RecordingNode`` fakes (the
node API without a data plane) against one store: the embedded MemoryStore,
or a real etcd started for the run. Each trial publishes an endpoint on one
node and records, for every other node, when its agent programmed it; the
figures are p50/p99 of those per-node delays and of the time until the last
node had it, plus the store's keys and bytes per node. Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from stores import bench_store

from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.store import Store
from overlay.model import Endpoint, NetworkSpec, to_json
from overlay.testing.fakes import RecordingNetwork, RecordingNode

SIZES = [10, 50, 200]
TRIALS = int(os.environ.get("OVERLAY_BENCH_TRIALS", "20"))


class TimedNetwork(RecordingNetwork):
    def __init__(self, vni: int, tenant: str) -> None:
        super().__init__(vni, tenant)
        self.added_at: dict[str, float] = {}

    def add_remote(self, mac: str, vtep: str, ip: Any = None, port: int | None = None) -> None:
        super().add_remote(mac, vtep, ip, port)
        self.added_at.setdefault(mac.lower(), time.monotonic())


class TimedNode(RecordingNode):
    def add_network(self, vni: int, tenant: str, *, learning: bool = False) -> TimedNetwork:
        net = TimedNetwork(vni, tenant)
        self.networks[vni] = net
        return net


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def converge(store: Store, n: int, trials: int) -> dict[str, Any]:
    await store.put(keys.network(100), to_json(NetworkSpec(vni=100, tenant="bench")))
    agents = [
        Agent(
            TimedNode(f"198.18.{i // 250}.{i % 250 + 1}"), store, f"n{i}", networks=(100,), ttl=30
        )
        for i in range(n)
    ]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        await asyncio.wait_for(asyncio.gather(*(a.synced.wait() for a in agents)), 120)
        nets = [a.node.networks for a in agents]
        # Every agent has seen every node before trials start.
        deadline = time.monotonic() + 120
        while any(len(a.nodes) < n - 1 for a in agents) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        per_node: list[float] = []
        to_all: list[float] = []
        rng = random.Random(7)
        for t in range(trials):
            k = rng.randrange(n)
            mac = f"02:00:00:{(t >> 8) & 255:02x}:{t & 255:02x}:01"
            ep = Endpoint(
                vni=100, mac=mac, ips=(f"10.244.{t % 250}.{t // 250 + 2}/16",), node=f"n{k}"
            )
            t0 = time.monotonic()
            await agents[k].publish_endpoint(ep)
            others = [i for i in range(n) if i != k]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                mac in nets[i][100].added_at for i in others if 100 in nets[i]
            ):
                await asyncio.sleep(0.001)
            delays = [
                nets[i][100].added_at[mac] - t0
                for i in others
                if 100 in nets[i] and mac in nets[i][100].added_at
            ]
            per_node += delays
            to_all.append(max(delays) if len(delays) == len(others) else float("inf"))
        kvs, _ = await store.get_prefix(keys.PREFIX)
        nbytes = sum(len(kv.key) + len(kv.value) for kv in kvs)
        return {
            "nodes": n,
            "trials": trials,
            "per_node_ms": {"p50": pct(per_node, 0.5) * 1e3, "p99": pct(per_node, 0.99) * 1e3},
            "all_nodes_ms": {
                "p50": pct(to_all, 0.5) * 1e3,
                "p99": pct(to_all, 0.99) * 1e3,
                "mean": statistics.fmean(to_all) * 1e3,
            },
            "store_keys": len(kvs),
            "store_keys_per_node": len(kvs) / n,
            "store_bytes_per_node": nbytes / n,
        }
    finally:
        for a in agents:
            await a.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(params=["memory", "etcd"])
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


@pytest.mark.parametrize("n", SIZES)
def test_convergence(
    benchmark: Any, request: pytest.FixtureRequest, store_kind: str, n: int
) -> None:
    result: dict[str, Any] = {}

    def one() -> None:
        loop = asyncio.new_event_loop()
        try:
            store, _ = bench_store(store_kind, request)
            result.update(loop.run_until_complete(converge(store, n, TRIALS)))
            loop.run_until_complete(store.close())
        finally:
            loop.close()

    benchmark.pedantic(one, rounds=1, iterations=1)
    benchmark.extra_info.update({"store": store_kind, **result})
