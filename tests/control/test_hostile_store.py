"""Wrong and hostile store records: each is refused on its own — logged once with
its key, counted by reason — and everything else is still programmed.

The agent under test ("me") programs a real ``Node`` in a namespace, so the data
plane's own refusals (an address in use, an underlay of the wrong family) are
real. The other nodes are agents on ``RecordingNode`` fakes that announce pods
the way the product does (a subnet lease, an address from it, the endpoint);
the hostile node ("evil") writes its records in its own key space under its
own lease, as any node can. Every test runs on the MemoryStore and on a real
etcd, on asyncio and on uvloop. The data-plane test proves with a ping between
two real pods that a MAC claimed by a third node diverts nothing. The O(1)
tests count the Python lines one change executes at two table sizes. Nothing
is timed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.ipam import AddressAllocator, lease_subnet
from overlay.control.store import Event, MemoryStore, Store
from overlay.errors import ConfigError
from overlay.model import Endpoint, NetworkSpec, NodeSpec, TooLarge, from_json, to_json
from overlay.node import Encap, Node
from overlay.testing.aio import run, until
from overlay.testing.fakes import RecordingNode
from overlay.testing.netns import Topology

NET = 100
TTL = 5.0
ME = "198.18.0.1"


@pytest.fixture(params=["memory", "etcd"])
def make_store(request: pytest.FixtureRequest) -> Callable[[], Store]:
    """Makes the store on the test's own loop (an EtcdStore belongs to one loop)."""
    if request.param == "memory":
        return MemoryStore
    server = request.getfixturevalue("overlay_etcd")

    def etcd_store() -> Store:
        from overlay.control.etcd import EtcdStore

        return EtcdStore([server.endpoint])

    return etcd_store


@pytest.fixture
def me_node(overlay_topology: Topology) -> Iterator[Node]:
    """A real node at 198.18.0.1 (its namespace has the address; nothing is started)."""
    ns, other = overlay_topology.add_netns("me"), overlay_topology.add_netns("other")
    overlay_topology.veth(ns, other)
    with Node(ME, Encap.VXLAN, netns=ns.path) as node:
        yield node


class Cluster:
    """ "me" on the real node, and agents on RecordingNodes, sharing one store."""

    def __init__(self, store: Store, node: Any) -> None:
        self.store = store
        self.node = node
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._macs = itertools.count(1)

    async def start(self, *peers: str) -> Agent:
        await self.store.put(keys.network(NET), to_json(NetworkSpec(vni=NET, tenant="blue")))
        me = self.run(Agent(self.node, self.store, "me", networks=(NET,), ttl=TTL))
        for name in peers:
            self.peer(name)
        await until(lambda: all(a.synced.is_set() for a in self.agents.values()), 10)
        await until(lambda: all(p in me.nodes for p in peers), 10)
        return me

    def run(self, agent: Agent) -> Agent:
        self.agents[agent.name] = agent
        self.tasks[agent.name] = asyncio.create_task(agent.run())
        return agent

    def peer(
        self, name: str, index: int | None = None, networks: tuple[int, ...] = (NET,)
    ) -> Agent:
        index = index if index is not None else {"b": 2, "c": 3, "evil": 9}[name]
        node = RecordingNode(f"198.18.0.{index}")
        return self.run(Agent(node, self.store, name, networks=networks, ttl=TTL))

    def mac(self) -> str:
        n = next(self._macs)
        return f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}"

    async def address(self, name: str, mac: str) -> str:
        """An address for mac from node name's subnet lease (as the product gives one)."""
        a = self.agents[name]
        await asyncio.wait_for(a.synced.wait(), 10)
        spec = a.specs[NET]
        if NET not in a.subnets:
            a.subnets[NET] = await lease_subnet(self.store, spec, name, a.lease)
        return await AddressAllocator(self.store, spec, name, a.subnets[NET], a.lease).allocate(mac)

    async def pod(self, name: str, *, mac: str | None = None, ip: str | None = None) -> Endpoint:
        """A pod of node name announced the product's way (ip: a delegated IPAM's)."""
        mac = mac or self.mac()
        ip = ip or await self.address(name, mac)
        ep = Endpoint(vni=NET, mac=mac, ips=(ip,), node=name)
        await self.agents[name].publish_endpoint(ep)
        return ep

    async def write(self, writer: str, key: bytes, record: dict[str, Any] | bytes) -> bytes:
        """A record node writer puts in the store under its own lease."""
        value = record if isinstance(record, bytes) else json.dumps(record).encode()
        await self.agents[writer].publish(key, value)
        return key

    async def free_address(self) -> str:
        """An address of the network in no node's subnet lease (a delegated IPAM's)."""
        kvs, _ = await self.store.get_prefix(keys.subnets(NET))
        leased = [ipaddress.ip_network(keys.last(kv.key).replace("_", "/")) for kv in kvs]
        for third in range(250, 0, -1):
            ip = ipaddress.ip_address(f"10.244.{third}.77")
            if not any(ip in s for s in leased):
                return f"{ip}/16"
        raise AssertionError("every subnet is leased")

    async def close(self) -> None:
        for name, agent in self.agents.items():
            await agent.stop()
            self.tasks[name].cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.store.close()


def endpoint_key(key_node: str, mac: str) -> bytes:
    """endpoints/<vni>/<node>/<mac>, spelled out (the layout is part of what is tested)."""
    return keys.ENDPOINTS + f"{NET}/{key_node}/{mac}".encode()


def record(ep: Endpoint, **change: Any) -> dict[str, Any]:
    return {**json.loads(to_json(ep)), **change}


def remotes(agent: Agent) -> dict[str, tuple[str, list[str]]]:
    net = agent.node.networks.get(NET)
    if net is None:
        return {}
    return {m: (str(v), [str(i) for i in ips]) for m, (v, ips) in net.remotes.items()}


def vteps(agent: Agent) -> set[str]:
    net = agent.node.networks.get(NET)
    return {str(v) for v in net.vteps} if net is not None else set()


def programmed(agent: Agent, ep: Endpoint, vtep: str) -> bool:
    want = (vtep, [str(ipaddress.ip_interface(i).ip) for i in ep.ips])
    return remotes(agent).get(ep.mac) == want


def reason(agent: Agent, key: bytes) -> str | None:
    return {r.key: r.reason for r in agent.rejections()}.get(key)


def warned(caplog: pytest.LogCaptureFixture, key: bytes) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.getMessage().startswith("agent me:")
        and repr(key) in r.getMessage()
    )


def cluster_test(make_store: Callable[[], Store], node: Any, loop_kind: str, body: Any) -> None:
    async def main() -> None:
        c = Cluster(make_store(), node)
        try:
            await body(c)
        finally:
            await c.close()

    run(loop_kind, main)


# -- one bad record no longer stops a network -----------------------------------


@pytest.mark.root
def test_an_address_already_in_use_is_refused_and_new_pods_are_still_programmed(
    loop_kind: str, make_store: Callable[[], Store], me_node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(c: Cluster) -> None:
        me = await c.start("b", "evil")
        shared = await c.free_address()  # a delegated IPAM's address: only unique
        first = await c.pod("b", ip=shared)
        await until(lambda: programmed(me, first, "198.18.0.2"))
        mac = c.mac()
        evil = await c.write(
            "evil",
            endpoint_key("evil", mac),
            {"vni": NET, "mac": mac, "ips": [shared], "node": "evil"},
        )
        later = await c.pod("b")  # a legitimate pod after the bad record
        await until(lambda: programmed(me, later, "198.18.0.2"))
        assert programmed(me, first, "198.18.0.2") and mac not in remotes(me)
        await until(lambda: reason(me, evil) == "address_conflict")
        assert warned(caplog, evil) == 1
        # The first claimant goes: the next claim of the address takes over.
        await c.agents["b"].withdraw_endpoint(NET, first.mac)
        await until(lambda: remotes(me).get(mac) == ("198.18.0.9", [shared.split("/")[0]]))
        assert reason(me, evil) is None

    with caplog.at_level(logging.INFO, logger="overlay.agent"):
        cluster_test(make_store, me_node, loop_kind, body)


@pytest.mark.root
def test_a_node_with_an_ipv6_underlay_in_an_ipv4_cluster_is_refused_and_others_still_programmed(
    loop_kind: str, make_store: Callable[[], Store], me_node: Node
) -> None:
    async def body(c: Cluster) -> None:
        me = await c.start("b")
        six = keys.node("six")
        # An IPv6 address (IPv4-mapped: the testbed's own range); never sent to.
        await c.store.put(
            six, to_json(NodeSpec(name="six", underlay="::ffff:198.18.0.9", networks=(NET,)))
        )
        pod = await c.pod("b")
        await until(lambda: programmed(me, pod, "198.18.0.2"))
        assert vteps(me) == {"198.18.0.2"}
        await until(lambda: reason(me, six) == "underlay_family")
        assert "six" not in me.nodes

    cluster_test(make_store, me_node, loop_kind, body)


@pytest.mark.root
def test_a_network_rewritten_to_another_tenant_or_cidr_changes_nothing(
    loop_kind: str, make_store: Callable[[], Store], me_node: Node
) -> None:
    async def body(c: Cluster) -> None:
        me = await c.start("b")
        first = await c.pod("b")
        await until(lambda: programmed(me, first, "198.18.0.2"))
        spec = NetworkSpec(vni=NET, tenant="blue")
        for rewritten in (
            NetworkSpec(vni=NET, tenant="red"),
            NetworkSpec(vni=NET, tenant="blue", cidr="10.245.0.0/16"),
            NetworkSpec(vni=NET, tenant="blue", learning=True),
        ):
            await c.store.put(keys.network(NET), to_json(rewritten))
            later = await c.pod("b")
            await until(lambda: programmed(me, later, "198.18.0.2"))  # noqa: B023
            assert programmed(me, first, "198.18.0.2")  # nothing torn down
            assert me.node.network(NET).tenant == "blue" and me.specs[NET] == spec
            assert reason(me, keys.network(NET)) == "network_redefined"
        # Another VNI under this network's key is refused too.
        await c.store.put(keys.network(NET), to_json(NetworkSpec(vni=NET + 1, tenant="red")))
        await until(lambda: reason(me, keys.network(NET)) == "key_mismatch")
        assert me.specs[NET] == spec
        # The original definition written back is accepted again.
        await c.store.put(keys.network(NET), to_json(spec))
        await until(lambda: reason(me, keys.network(NET)) is None)

    cluster_test(make_store, me_node, loop_kind, body)


# -- claims are checked ------------------------------------------------------------


@pytest.mark.root
def test_a_mac_claimed_by_a_second_node_does_not_divert_it_on_any_node_or_after_a_restart(
    loop_kind: str, make_store: Callable[[], Store], me_node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(c: Cluster) -> None:
        me = await c.start("b", "evil")
        victim = await c.pod("b")
        await until(lambda: programmed(me, victim, "198.18.0.2"))
        # evil announces b's pod MAC as its own, with an address of its own lease:
        # a record that passes every other check.
        ip = await c.address("evil", c.mac())
        evil = await c.write(
            "evil",
            endpoint_key("evil", victim.mac),
            {"vni": NET, "mac": victim.mac, "ips": [ip], "node": "evil"},
        )
        later = await c.pod("b")  # after the claim, on the same watch: it was applied
        await until(lambda: programmed(me, later, "198.18.0.2"))
        assert programmed(me, victim, "198.18.0.2")
        await until(lambda: reason(me, evil) == "mac_conflict")
        # Decided the same by a node that reads them all at once (a full read, in
        # key order) instead of one by one as they came.
        fresh = c.peer("c")
        await until(lambda: fresh.synced.is_set() and "b" in fresh.nodes and "evil" in fresh.nodes)
        await until(lambda: programmed(fresh, victim, "198.18.0.2"))
        assert reason(fresh, evil) == "mac_conflict"
        # Things that make the record be decided again do not log it again.
        await c.pod("b")
        await c.agents["evil"].set_networks([NET, NET + 1])
        await until(lambda: NET + 1 in me.nodes["evil"].networks)
        assert warned(caplog, evil) == 1
        counts = me.rejected_counts()
        assert counts["current"]["mac_conflict"] == 1 and counts["total"]["mac_conflict"] == 1
        # The first claimant goes away: the next valid claim takes over.
        await c.agents["b"].withdraw_endpoint(NET, victim.mac)
        await until(lambda: remotes(me).get(victim.mac) == ("198.18.0.9", [ip.split("/")[0]]))
        assert me.rejected_counts()["current"]["mac_conflict"] == 0

    with caplog.at_level(logging.INFO, logger="overlay.agent"):
        cluster_test(make_store, me_node, loop_kind, body)


@pytest.mark.root
def test_an_endpoint_may_claim_only_its_own_node_and_addresses_of_its_lease(
    loop_kind: str, make_store: Callable[[], Store], me_node: Node
) -> None:
    async def body(c: Cluster) -> None:
        me = await c.start("b", "evil")
        pod = await c.pod("b")
        await until(lambda: programmed(me, pod, "198.18.0.2"))
        # evil writes a pod that names b as its node, with an address of b's lease.
        mac = c.mac()
        ip = await c.address("b", mac)
        named = await c.write(
            "evil", endpoint_key("evil", mac), {"vni": NET, "mac": mac, "ips": [ip], "node": "b"}
        )
        # evil announces one of its own with an address in b's lease (ARP for it
        # would be answered with evil's MAC).
        stolen_mac = c.mac()
        stolen = await c.write(
            "evil",
            endpoint_key("evil", stolen_mac),
            {"vni": NET, "mac": stolen_mac, "ips": [await c.address("b", c.mac())], "node": "evil"},
        )
        later = await c.pod("b")
        await until(lambda: programmed(me, later, "198.18.0.2"))
        assert mac not in remotes(me) and stolen_mac not in remotes(me)
        await until(lambda: reason(me, named) == "key_mismatch")
        await until(lambda: reason(me, stolen) == "address_not_leased")
        # A pod of evil's own, with its own address, is programmed.
        own = await c.pod("evil")
        await until(lambda: programmed(me, own, "198.18.0.9"))

    cluster_test(make_store, me_node, loop_kind, body)


@pytest.mark.root
def test_node_records_with_this_nodes_or_a_taken_underlay_are_not_members(
    loop_kind: str, make_store: Callable[[], Store], me_node: Node
) -> None:
    async def body(c: Cluster) -> None:
        me = await c.start("b")
        pod = await c.pod("b")
        await until(lambda: programmed(me, pod, "198.18.0.2"))
        mine = keys.node("mimic")
        await c.store.put(mine, to_json(NodeSpec(name="mimic", underlay=ME, networks=(NET,))))
        twin = keys.node("twin")
        await c.store.put(
            twin, to_json(NodeSpec(name="twin", underlay="198.18.0.2", networks=(NET,)))
        )
        mark = NodeSpec(name="mark", underlay="198.18.0.5", networks=(NET,))
        await c.store.put(keys.node("mark"), to_json(mark))  # on the same watch, after them
        await until(lambda: "mark" in me.nodes)
        assert vteps(me) == {"198.18.0.2", "198.18.0.5"} and me.nodes.keys() == {"b", "mark"}
        assert programmed(me, pod, "198.18.0.2")
        await until(lambda: reason(me, mine) == "underlay_self")
        await until(lambda: reason(me, twin) == "underlay_conflict")
        b = c.agents["b"]
        # On b the same records are refused for b's reasons: the same order everywhere.
        # (b reads the same watch on its own: wait for it, as for me above.)
        await until(lambda: reason(b, mine) == "underlay_conflict")
        await until(lambda: reason(b, twin) == "underlay_self")
        # The first claimant goes away: the next takes the underlay over.
        await b.stop()
        await until(lambda: me.nodes.keys() == {"twin", "mark"})
        assert vteps(me) == {"198.18.0.2", "198.18.0.5"} and pod.mac not in remotes(me)
        assert reason(me, mine) == "underlay_self"  # this node's own: never a member

    cluster_test(make_store, me_node, loop_kind, body)


@pytest.mark.root
def test_oversized_records_are_refused_and_cost_nothing(
    loop_kind: str, make_store: Callable[[], Store], me_node: Node
) -> None:
    async def body(c: Cluster) -> None:
        me = await c.start("b", "evil")
        huge = {f"k{i}": "v" * 60 for i in range(16_000)}  # ~1 MB of labels
        big = []
        for _ in range(20):
            mac = c.mac()
            rec = {"vni": NET, "mac": mac, "ips": [], "node": "evil", "labels": huge}
            big.append(await c.write("evil", endpoint_key("evil", mac), rec))
        pod = await c.pod("b")
        await until(lambda: programmed(me, pod, "198.18.0.2"))
        assert all(k.rsplit(b"/", 1)[-1].decode() not in me.endpoints[NET] for k in big)
        await until(lambda: all(reason(me, k) == "too_large" for k in big))

    cluster_test(make_store, me_node, loop_kind, body)


# -- the data plane: a claimed MAC diverts no traffic ------------------------------


@pytest.mark.root
@pytest.mark.parametrize("kind", ["memory", "etcd"])
def test_a_hostile_mac_claim_does_not_divert_traffic_between_real_pods(
    kind: str, overlay_topology: Topology, request: pytest.FixtureRequest
) -> None:
    from overlay.testing.cluster import underlay_ip
    from overlay.testing.traffic import ping

    ns = [overlay_topology.add_netns(f"n{i}") for i in range(3)]
    pods = [overlay_topology.add_netns(f"pod{i}") for i in range(2)]
    overlay_topology.lan(ns, [f"{underlay_ip(i)}/24" for i in range(3)])
    server = request.getfixturevalue("overlay_etcd") if kind == "etcd" else None
    nodes = [Node(underlay_ip(i), Encap.VXLAN, netns=n.path) for i, n in enumerate(ns)]

    async def main() -> None:
        if server is None:
            store: Store = MemoryStore()
        else:
            from overlay.control.etcd import EtcdStore

            store = EtcdStore([server.endpoint])
        await store.put(keys.network(NET), to_json(NetworkSpec(vni=NET, tenant="blue")))
        agents = [
            Agent(n, store, f"node{i}", networks=(NET,), ttl=TTL) for i, n in enumerate(nodes)
        ]
        tasks = [asyncio.create_task(a.run()) for a in agents]
        try:
            for n in nodes:
                n.start()
            eps = []
            for i in range(2):
                ep, port = await agents[i].add_endpoint(NET, name=f"pod{i}")
                port.move_to_netns(pods[i].path, "eth0")
                eps.append(ep)
            await until(lambda: eps[1].mac in nodes[0].network(NET).remotes, 10)
            # node2 claims pod1's MAC, with an address of its own lease.
            evil = agents[2]
            sub = await lease_subnet(store, evil.specs[NET], evil.name, evil.lease)
            ip = await AddressAllocator(
                store, evil.specs[NET], evil.name, sub, evil.lease
            ).allocate("02:00:00:00:ee:01")
            hostile = keys.ENDPOINTS + f"{NET}/node2/{eps[1].mac}".encode()
            rec = {"vni": NET, "mac": eps[1].mac, "ips": [ip], "node": "node2"}
            await evil.publish(hostile, json.dumps(rec).encode())
            # A record of node2's after the claim, on the same watch: once node0
            # has it, it has decided on the claim too.
            mark = Endpoint(vni=NET, mac="02:00:00:00:ee:02", ips=(), node="node2")
            await evil.publish_endpoint(mark)
            await until(lambda: mark.mac in nodes[0].network(NET).remotes, 10)
            assert str(nodes[0].network(NET).remotes[eps[1].mac][0]) == underlay_ip(1)
            loop = asyncio.get_running_loop()
            dst = str(ipaddress.ip_interface(eps[1].ips[0]).ip)
            r = await loop.run_in_executor(None, lambda: ping(pods[0], dst, count=3, interval=0.1))
            assert r.ok, r.output
            assert await store.get(hostile) is not None  # the record is still there
            assert reason(agents[0], hostile) == "mac_conflict"
            await until(lambda: reason(agents[1], hostile) == "mac_conflict", 10)
        finally:
            for a in agents:
                await a.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()

    try:
        run("asyncio", main, timeout=90)
    finally:
        for n in nodes:
            n.close()


# -- O(1) per change: counted, not timed --------------------------------------------


def _lines(fn: Callable[[], Any]) -> int:
    """How many Python lines fn() executes (C work such as dict growth is not counted)."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def _mac(i: int) -> str:
    return f"02:01:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"


def _ip(i: int) -> str:
    return str(ipaddress.ip_address("10.244.0.1") + i)  # i < 65000


@pytest.mark.root
def test_adding_and_removing_a_remote_costs_the_same_at_any_table_size(me_node: Node) -> None:
    net = me_node.add_network(NET, "blue")
    net.add_vtep("198.18.0.2")
    cost = []
    filled = 0
    for size in (1_000, 10_000):
        while filled < size:
            net.add_remote(_mac(filled), "198.18.0.2", _ip(filled))
            filled += 1
        one, n = _mac(60_000), _ip(60_000)

        def change(one: str = one, n: str = n) -> None:
            net.add_remote(one, "198.18.0.2", n)
            net.remove_remote(one)

        cost.append(_lines(change))
    assert cost[1] == cost[0], cost


def test_one_store_change_is_reconciled_with_the_same_work_at_any_table_size(
    loop_kind: str,
) -> None:
    """The agent's work for one more endpoint does not grow with the endpoints it has."""

    async def cost(size: int) -> int:
        store = MemoryStore(history=size + 100)
        await store.put(keys.network(NET), to_json(NetworkSpec(vni=NET, tenant="blue")))
        await store.put(
            keys.node("b"), to_json(NodeSpec(name="b", underlay="198.18.0.2", networks=(NET,)))
        )
        for i in range(size):
            ep = Endpoint(vni=NET, mac=_mac(i), ips=(_ip(i) + "/16",), node="b")
            await store.put(endpoint_key("b", ep.mac), to_json(ep))
        agent = Agent(RecordingNode(ME), store, "me", networks=(NET,), ttl=TTL)
        task = asyncio.create_task(agent.run())
        await until(lambda: len(remotes(agent)) == size, 30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await agent.stop()
        ep = Endpoint(vni=NET, mac=_mac(60_000), ips=(_ip(60_000) + "/16",), node="b")
        rev = await store.put(endpoint_key("b", ep.mac), to_json(ep))
        event = Event("put", endpoint_key("b", ep.mac), to_json(ep), rev)

        def change() -> None:
            agent._apply([event])
            agent.reconcile()

        lines = _lines(change)
        assert ep.mac in remotes(agent)
        await store.close()
        return lines

    async def main() -> None:
        small, large = await cost(1_000), await cost(10_000)
        assert large == small, (small, large)

    run(loop_kind, main, timeout=120)


# -- pieces -------------------------------------------------------------------------


def test_watch_events_carry_the_keys_create_revision(
    loop_kind: str, make_store: Callable[[], Store]
) -> None:
    async def main() -> None:
        store = make_store()
        try:
            _, rev = await store.get_prefix(b"/ovt-hostile/")
            watch = store.watch(b"/ovt-hostile/", rev + 1)
            created = await store.put(b"/ovt-hostile/k", b"1")
            again = await store.put(b"/ovt-hostile/k", b"2")
            await store.delete(b"/ovt-hostile/k")
            seen: list[Event] = []
            async for events in watch:
                seen += events
                if len(seen) >= 3:
                    break
            await watch.aclose()
            assert [(e.kind, e.mod_revision, e.create_revision) for e in seen] == [
                ("put", created, created),
                ("put", again, created),
                ("delete", again + 1, 0),
            ]
            kv = await store.get(b"/ovt-hostile/k")
            assert kv is None
        finally:
            await store.close()

    run(loop_kind, main)


def test_records_are_bounded_and_labels_follow_kubernetes() -> None:
    base = {"vni": 1, "mac": "02:00:00:00:00:01", "ips": ["10.244.1.2/16"], "node": "a"}

    def decode(**change: Any) -> Endpoint:
        return from_json(Endpoint, json.dumps({**base, **change}).encode())  # type: ignore[no-any-return]

    # What the product writes itself passes: the CNI plugin's labels, a pod name of 253.
    pod = "p" * 253
    ok = decode(
        name=f"default/{pod}",
        labels={
            "io.kubernetes.pod.name": pod,
            "io.kubernetes.pod.namespace": "default",
            "io.kubernetes.pod.uid": "0b5b2a3c-6f5e-4c3b-9f5e-2f1a3c4d5e6f",
            "app.kubernetes.io/name": "web",
            "tier": "",
        },
        ips=["10.244.1.2/16", "fd00::2/64"],
    )
    assert ok.labels["io.kubernetes.pod.name"] == pod
    for labels, error in (
        ({"a b": "c"}, ConfigError),
        ({"-app": "x"}, ConfigError),
        ({"Example.com/app": "x"}, ConfigError),
        ({"app": "has space"}, ConfigError),
        ({"app\n": "x"}, ConfigError),
        ({"app": "x\n"}, ConfigError),
        ({"n" * 64: "x"}, TooLarge),
        (({"p" * 254 + "/app": "x"}), TooLarge),
        ({"app": "v" * 254}, TooLarge),
        ({f"k{i}": "v" for i in range(65)}, TooLarge),
    ):
        with pytest.raises(error) as info:
            decode(labels=labels)
        assert info.value.field == "endpoint.labels"
    for change, field in (
        ({"ips": [f"10.244.1.{i}/16" for i in range(2, 11)]}, "endpoint.ips"),
        ({"ips": "10.244.1.2/16"}, "endpoint.ips"),
        ({"ips": ["10.244.1.2/16", "10.244.1.2/24"]}, "endpoint.ips"),
        ({"name": "n" * 400}, "endpoint.name"),
        ({"vni": True}, "endpoint.vni"),
        ({"mac": "02:00:00:00:00:01\n"}, "endpoint.mac"),  # `$` would match before "\n"
        ({"node": "a\n"}, "endpoint.node"),
    ):
        with pytest.raises(ConfigError) as info:
            decode(**change)
        assert info.value.field == field, change
    # A value over the record bound is refused before it is parsed (not a JSON error).
    with pytest.raises(TooLarge):
        from_json(Endpoint, b"[" * 40_000)
    with pytest.raises(ConfigError, match="node.underlay"):
        from_json(NodeSpec, b'{"name": "a", "underlay": 3323068417}')
    with pytest.raises(ConfigError, match="network.cidr"):
        from_json(NetworkSpec, b'{"vni": 1, "tenant": "a", "cidr": 167772160}')
    with pytest.raises(TooLarge, match="node.networks"):
        NodeSpec(name="a", underlay="198.18.0.1", networks=tuple(range(5000)))


def test_endpoint_keys_carry_their_node() -> None:
    assert keys.endpoint(7, "node-a", "02:00:00:00:00:01") == (
        b"/overlay/v1/endpoints/7/node-a/02:00:00:00:00:01"
    )
    assert keys.parse_endpoint(keys.endpoint(7, "node-a", "02:00:00:00:00:01")) == (
        7,
        "node-a",
        "02:00:00:00:00:01",
    )
    assert keys.parse_endpoint(b"/overlay/v1/endpoints/7/02:00:00:00:00:01") == (
        7,
        None,
        "02:00:00:00:00:01",
    )
    for bad in (
        b"/overlay/v1/endpoints/x/a/b",
        b"/overlay/v1/endpoints/7//b",
        b"/overlay/v1/endpoints/7/a/b/c",
    ):
        assert keys.parse_endpoint(bad) is None


def test_refusals_are_exported_as_a_counter_and_a_gauge_by_reason() -> None:
    from overlay.daemon.metrics import Metrics

    agent = Agent(RecordingNode(ME), MemoryStore(), "me", networks=(NET,))
    agent._apply([Event("put", endpoint_key("b", "02:00:00:00:00:09"), b"{nope", 5, 5)])
    agent._apply([Event("put", keys.node("x"), b'{"name": "y", "underlay": "198.18.0.7"}', 6, 6)])
    text = Metrics(lambda: {"store_rejected": agent.rejected_counts()}).render().decode()
    samples = {
        (s.name, s.labels.get("reason")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("overlay_store_records_rejected_total", "malformed")] == 1
    assert samples[("overlay_store_records_rejected_total", "key_mismatch")] == 1
    assert samples[("overlay_store_records_rejected_total", "mac_conflict")] == 0
    assert samples[("overlay_store_rejected_records", "malformed")] == 1
    agent._apply([Event("delete", endpoint_key("b", "02:00:00:00:00:09"), b"", 7)])
    text = Metrics(lambda: {"store_rejected": agent.rejected_counts()}).render().decode()
    samples = {
        (s.name, s.labels.get("reason")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("overlay_store_rejected_records", "malformed")] == 0
    assert samples[("overlay_store_records_rejected_total", "malformed")] == 1


def test_first_claim_wins_whatever_order_the_records_arrive_in() -> None:
    """The incremental decisions equal a full read's, for every arrival order."""
    import random

    from overlay.control.claims import Claims
    from overlay.control.store import KeyValue

    def node(name: str, underlay: str) -> tuple[bytes, bytes]:
        return keys.node(name), to_json(NodeSpec(name=name, underlay=underlay, networks=(NET,)))

    def ep(key_node: str, mac: str, ip: str, node: str | None = None) -> tuple[bytes, bytes]:
        e = Endpoint(vni=NET, mac=mac, ips=(ip,), node=node or key_node)
        return endpoint_key(key_node, mac), to_json(e)

    # In store order (the position is the create revision).
    records = [
        (keys.network(NET), to_json(NetworkSpec(vni=NET, tenant="blue"))),
        node("b", "198.18.0.2"),
        node("c", "198.18.0.3"),
        node("d", "198.18.0.2"),  # b's underlay, later: refused, so are its pods
        node("e", "::ffff:198.18.0.5"),
        node("f", ME),
        (keys.subnet(NET, "10.244.1.0/24"), b"b"),
        (keys.subnet(NET, "10.244.2.0/24"), b"c"),
        ep("b", "02:00:00:00:00:01", "10.244.1.2/16"),
        ep("c", "02:00:00:00:00:01", "10.244.2.2/16"),  # b's MAC, later
        ep("c", "02:00:00:00:00:02", "10.244.1.3/16"),  # in b's lease
        ep("b", "02:00:00:00:00:03", "10.244.9.9/16"),  # in no lease
        ep("c", "02:00:00:00:00:04", "10.244.9.9/16"),  # the same address, later
        ep("d", "02:00:00:00:00:05", "10.244.3.2/16"),
        ep("c", "02:00:00:00:00:06", "10.244.2.3/16", node="b"),  # names b
        ep("me", "02:00:00:00:00:07", "10.244.7.2/16"),  # this node's own
        ep("c", "02:00:00:00:00:07", "10.244.2.4/16"),  # our MAC
        ep("c", "02:00:00:00:00:08", "10.244.2.5/16"),  # fine
        (  # the earlier key layout, still read during an upgrade: c's, by its value
            keys.endpoints(NET) + b"02:00:00:00:00:09",
            to_json(Endpoint(vni=NET, mac="02:00:00:00:00:09", ips=("10.244.2.6/16",), node="c")),
        ),
        (keys.node("b") + b"/x", b"{}"),
    ]
    events = [Event("put", k, v, i + 2, i + 2) for i, (k, v) in enumerate(records)]

    def outcome(c: Claims) -> Any:
        return (
            {m: e.node for m, e in c.endpoints[NET].items()},
            set(c.nodes),
            {r.key: r.reason for r in c.rejected.values()},
            c.remotes(NET),
            c.vteps(NET),
        )

    def fresh() -> Claims:
        return Claims("me", ipaddress.ip_address(ME), [NET], programmed=lambda vni: None)

    whole = fresh()
    for prefix in (keys.NODES, keys.NETWORKS, keys.subnets(NET), keys.endpoints(NET)):
        kvs = [KeyValue(e.key, e.value, e.create_revision, e.mod_revision) for e in events]
        whole.load(
            prefix, sorted((kv for kv in kvs if kv.key.startswith(prefix)), key=lambda kv: kv.key)
        )
    whole.settle()
    want = outcome(whole)
    assert want[0] == {
        "02:00:00:00:00:01": "b",
        "02:00:00:00:00:03": "b",
        "02:00:00:00:00:07": "me",
        "02:00:00:00:00:08": "c",
        "02:00:00:00:00:09": "c",
    }
    assert want[1] == {"b", "c"}
    assert want[2] == {
        keys.node("d"): "underlay_conflict",
        keys.node("e"): "underlay_family",
        keys.node("f"): "underlay_self",
        endpoint_key("c", "02:00:00:00:00:01"): "mac_conflict",
        endpoint_key("c", "02:00:00:00:00:02"): "address_not_leased",
        endpoint_key("c", "02:00:00:00:00:04"): "address_conflict",
        endpoint_key("d", "02:00:00:00:00:05"): "node_rejected",
        endpoint_key("c", "02:00:00:00:00:06"): "key_mismatch",
        endpoint_key("c", "02:00:00:00:00:07"): "mac_conflict",
        keys.node("b") + b"/x": "bad_key",
    }
    rng = random.Random(9)
    for _ in range(30):
        c = fresh()
        for ev in rng.sample(events, len(events)):
            c.apply(ev)
            if rng.random() < 0.3:
                c.settle()
        c.settle()
        assert outcome(c) == want
    # And taking records away one by one leaves the same as never having had them.
    c = fresh()
    for ev in events:
        c.apply(ev)
    c.settle()
    gone = {endpoint_key("b", "02:00:00:00:00:01"), keys.node("b")}
    for key in gone:
        c.apply(Event("delete", key, b"", 99))
    c.settle()
    rest = fresh()
    for ev in events:
        if ev.key not in gone:
            rest.apply(ev)
    rest.settle()
    assert outcome(c) == outcome(rest)
    assert "d" in c.nodes and c.endpoints[NET]["02:00:00:00:00:01"].node == "c"
