"""Programming 100,000 remote endpoints: the control plane against the kernel's tables.

One network of ``OVERLAY_BENCH_REMOTES`` (default 100,000) remote pods on 400
nodes, announced the way the product announces them (node records, a subnet
lease per node, endpoints with addresses from it), in the embedded
MemoryStore. A real ``Node`` in a namespace, driven by an ``Agent``:

- ``program_s``: from the agent's start to every remote endpoint programmed
  (the full read, every record checked, FDB and neighbour entries written);
- ``change_ms``: one further endpoint announced (and one withdrawn) at that
  size, until the node has it (p50/p99 of ``TRIALS``), and the agent's own
  reconcile time for it;
- ``api_program_s``: the same entries through ``Network.add_remote`` alone
  (the embedding API, no store);
- RSS of this process: before, with the store filled, with the agent done.

The baseline, measured in the same run: the same (MAC -> VTEP) FDB entries
and (IP -> MAC) neighbours written through pyroute2 netlink into a kernel
VXLAN device in a namespace, in total and for one further change. Ratios are
overlay over kernel seconds (> 1: the overlay is slower). Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.store import MemoryStore
from overlay.model import Endpoint, NetworkSpec, NodeSpec, to_json
from overlay.node import Encap, Node
from overlay.testing.netns import Topology

pytestmark = pytest.mark.root

REMOTES = int(os.environ.get("OVERLAY_BENCH_REMOTES", "100000"))
TRIALS = int(os.environ.get("OVERLAY_BENCH_TRIALS", "50"))
NODES = 400
VNI = 100
# 10.244.0.0/15 (10.244/16 and 10.245/16: the testbed's pod ranges) cut into
# /24 leases: 512 of them, 400 taken, 250 pods each at most.
SPEC = NetworkSpec(vni=VNI, tenant="bench", cidr="10.244.0.0/15", subnet_prefix=24)
ME = "198.18.0.1"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def node_name(i: int) -> str:
    return f"n{i:03d}"


def underlay(i: int) -> str:
    return str(ipaddress.ip_address("198.18.1.0") + i)  # 198.18.1.0 - 198.18.2.143


def endpoint(i: int) -> tuple[str, Endpoint]:
    """Pod i: on node i % NODES, the (i // NODES)-th address of that node's /24."""
    n, k = i % NODES, i // NODES
    sub = ipaddress.ip_network("10.244.0.0/15").network_address + n * 256
    mac = f"02:10:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"
    return node_name(n), Endpoint(vni=VNI, mac=mac, ips=(f"{sub + 2 + k}/15",), node=node_name(n))


async def fill(store: MemoryStore, count: int) -> None:
    await store.put(keys.network(VNI), to_json(SPEC))
    base = ipaddress.ip_network("10.244.0.0/15").network_address
    for n in range(NODES):
        spec = NodeSpec(name=node_name(n), underlay=underlay(n), networks=(VNI,))
        await store.put(keys.node(spec.name), to_json(spec))
        await store.put(keys.subnet(VNI, f"{base + n * 256}/24"), spec.name.encode())
    for i in range(count):
        name, ep = endpoint(i)
        await store.put(keys.endpoint(VNI, name, ep.mac), to_json(ep))


async def until(pred: Callable[[], bool], timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError("not reached")
        await asyncio.sleep(0.0005)


def overlay_side(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"rss_mb": {"start": rss_mb()}}

    async def main() -> None:
        store = MemoryStore(history=REMOTES + 10_000)
        await fill(store, REMOTES)
        out["rss_mb"]["store_filled"] = rss_mb()
        agent = Agent(node, store, "me", networks=(VNI,), ttl=60)
        reconciles: list[float] = []
        t0 = time.monotonic()
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: VNI in node.networks and len(node.network(VNI).remotes) == REMOTES)
            out["program_s"] = time.monotonic() - t0
            out["rss_mb"]["programmed"] = rss_mb()
            out["rejected"] = len(agent.claims.rejected)
            agent.on_reconcile = reconciles.append
            net = node.network(VNI)
            adds, dels = [], []
            for t in range(TRIALS):
                name, ep = endpoint(REMOTES + t)
                key = keys.endpoint(VNI, name, ep.mac)
                t1 = time.monotonic()
                await store.put(key, to_json(ep))
                await until(lambda: ep.mac in net.remotes)  # noqa: B023
                adds.append(time.monotonic() - t1)
                t1 = time.monotonic()
                await store.delete(key)
                await until(lambda: ep.mac not in net.remotes)  # noqa: B023
                dels.append(time.monotonic() - t1)
            out["change_ms"] = {
                "add_p50": pct(adds, 0.5) * 1e3,
                "add_p99": pct(adds, 0.99) * 1e3,
                "del_p50": pct(dels, 0.5) * 1e3,
                "del_p99": pct(dels, 0.99) * 1e3,
                "reconcile_p50": pct(reconciles, 0.5) * 1e3,
                "reconcile_mean": statistics.fmean(reconciles) * 1e3 if reconciles else None,
            }
        finally:
            await agent.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    node.remove_network(VNI)
    # The embedding API alone: the same entries through Network.add_remote.
    net = node.add_network(VNI, "bench")
    eps = [endpoint(i) for i in range(REMOTES)]
    t0 = time.monotonic()
    for name, ep in eps:
        net.add_remote(ep.mac, underlay(int(name[1:])), ep.ips[0].split("/")[0])
    out["api_program_s"] = time.monotonic() - t0
    node.remove_network(VNI)
    return out


def kernel_side(overlay_topology: Topology) -> dict[str, Any]:
    """The same entries in a kernel VXLAN device's FDB and neighbour table (pyroute2)."""
    ns, other = overlay_topology.add_netns("kv"), overlay_topology.add_netns("kv2")
    overlay_topology.veth(ns, other)
    ns.run(["ip", "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "dstport", "4789",
            "local", ME, "dev", "ul0", "nolearning"])  # fmt: skip
    ns.addr_add("vx0", "10.245.255.254/15")
    ns.link_set("vx0", state="up")
    eps = [endpoint(i) for i in range(REMOTES + TRIALS)]

    idx = ns.ifindex("vx0")

    def program() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with ns.ipr() as ipr:

            def add(name: str, ep: Endpoint) -> None:
                ipr.fdb("append", ifindex=idx, lladdr=ep.mac, dst=underlay(int(name[1:])))
                ip = ep.ips[0].split("/")[0]
                ipr.neigh("replace", dst=ip, lladdr=ep.mac, ifindex=idx, state="permanent")

            def remove(name: str, ep: Endpoint) -> None:
                ipr.fdb("del", ifindex=idx, lladdr=ep.mac, dst=underlay(int(name[1:])))
                ipr.neigh("del", dst=ep.ips[0].split("/")[0], ifindex=idx)

            t0 = time.monotonic()
            for name, ep in eps[:REMOTES]:
                add(name, ep)
            out["program_s"] = time.monotonic() - t0
            adds, dels = [], []
            for name, ep in eps[REMOTES:]:
                t1 = time.monotonic()
                add(name, ep)
                adds.append(time.monotonic() - t1)
                t1 = time.monotonic()
                remove(name, ep)
                dels.append(time.monotonic() - t1)
            out["change_ms"] = {
                "add_p50": pct(adds, 0.5) * 1e3,
                "add_p99": pct(adds, 0.99) * 1e3,
                "del_p50": pct(dels, 0.5) * 1e3,
                "del_p99": pct(dels, 0.99) * 1e3,
            }
        return out

    return program()


def test_program_100k_remote_endpoints(benchmark: Any, overlay_topology: Topology) -> None:
    result: dict[str, Any] = {}

    def one() -> None:
        a, b = overlay_topology.add_netns("me"), overlay_topology.add_netns("peer")
        overlay_topology.veth(a, b)
        # FDB and neighbours each get 2^18 slots: 100,000 entries stay under 40 % load.
        with Node(ME, Encap.VXLAN, netns=a.path, fdb_size=1 << 18) as node:
            result["overlay"] = overlay_side(node)
        result["kernel"] = kernel_side(overlay_topology)

    benchmark.pedantic(one, rounds=1, iterations=1)
    o, k = result["overlay"], result["kernel"]
    result["ratios"] = {
        "program_overlay_vs_kernel": o["program_s"] / k["program_s"],
        "api_program_overlay_vs_kernel": o["api_program_s"] / k["program_s"],
        "change_add_p50_overlay_vs_kernel": o["change_ms"]["add_p50"] / k["change_ms"]["add_p50"],
    }
    benchmark.extra_info["control_scale"] = {
        "remotes": REMOTES,
        "nodes": NODES,
        "trials": TRIALS,
        "baseline": "kernel VXLAN FDB + neighbours via pyroute2",
        "ratio_meaning": "overlay seconds over kernel seconds (> 1: overlay slower)",
        **result,
    }
