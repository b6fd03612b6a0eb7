"""Policies through the store: written once, compiled by every agent for its own
ports, applied incrementally, reported as realised.

Three real nodes with agents on one MemoryStore (the etcd runs are in
tests/daemon/test_policy_daemon.py); pods are added through the agent with
their namespace label, as overlayd's attach does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from policy_docs import ALLOW_A_TO_B, DENY_ALL, NAMESPACES

from overlay.control import keys, policies
from overlay.control.agent import Agent
from overlay.control.reconcilers import Policies
from overlay.control.store import MemoryStore
from overlay.errors import ConfigError
from overlay.model import NAMESPACE_LABEL, NetworkSpec, to_json
from overlay.node import Encap, Node
from overlay.testing import aio
from overlay.testing.cluster import underlay_ip
from overlay.testing.netns import Topology

pytestmark = pytest.mark.root

VNI = 100
TENANT = "acme"


class Site:
    def __init__(self, topo: Topology, store: MemoryStore, mode: str = "overlay") -> None:
        self.store = store
        self.mode = mode
        ns = [topo.add_netns(f"n{i}") for i in range(3)]
        topo.lan(ns, [f"{underlay_ip(i)}/24" for i in range(3)])
        self.nodes = [Node(underlay_ip(i), Encap.VXLAN, netns=n.path) for i, n in enumerate(ns)]
        self.agents: list[Agent[Any]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.pods: dict[str, tuple[int, str]] = {}  # name -> (node, ip)

    async def start(self) -> None:
        spec = NetworkSpec(vni=VNI, tenant=TENANT, mode=self.mode)
        await self.store.put(keys.network(VNI), to_json(spec))
        for i, node in enumerate(self.nodes):
            a = Agent(node, self.store, f"node{i}", networks=(VNI,), ttl=5.0)
            self.agents.append(a)
            self.tasks.append(asyncio.create_task(a.run()))
            node.start()
        for a in self.agents:
            await asyncio.wait_for(a.synced.wait(), 10)

    async def add_pod(
        self,
        i: int,
        name: str,
        ns: str = "x",
        named_ports: dict[str, tuple[int, str]] | None = None,
    ) -> str:
        labels = {"pod": name, NAMESPACE_LABEL: ns}
        ep, _ = await self.agents[i].add_endpoint(
            VNI, name=f"{ns}/{name}", labels=labels, named_ports=named_ports
        )
        ip = ep.ips[0].split("/")[0]
        self.pods[name] = (i, ip)
        return ip

    def policy(self, i: int) -> Policies:
        return next(r for r in self.agents[i].reconcilers if isinstance(r, Policies))

    def port(self, name: str) -> Any:
        i, ip = self.pods[name]
        net = self.nodes[i].network(VNI)
        return next(p for p in net.ports if str(p.ips[0].ip) == ip)

    def swaps(self) -> list[int]:
        return [n.network(VNI).policy_swaps for n in self.nodes]

    async def close(self) -> None:
        for a in self.agents:
            await a.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for n in self.nodes:
            n.close()


def synced(site: Site, digest: str) -> bool:
    return all(site.policy(i).realised.get(TENANT, ("",))[0] == digest for i in range(3))


def test_policies_from_the_store_reach_every_node_incrementally(
    overlay_topology: Topology,
) -> None:
    store = MemoryStore()
    site = Site(overlay_topology, store)

    async def main() -> None:
        try:
            await site.start()
            for i, name in enumerate(("a", "b", "c")):
                await site.add_pod(i, name)
            await site.add_pod(0, "d", ns="y")
            await aio.until(lambda: all(len(n.network(VNI).remotes) == 3 for n in site.nodes[1:]))
            # No policy anywhere: ports carry none.
            assert site.nodes[0].network(VNI).policy_table(site.port("a"), "ingress") is None

            got = await policies.apply(store, TENANT, policies.parse(DENY_ALL + "---" + NAMESPACES))
            assert got["created"] == [
                "NetworkPolicy x/deny-all",
                "Namespace x",
                "Namespace y",
            ]
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            for name in ("a", "b", "c"):
                i, _ = site.pods[name]
                t = site.nodes[i].network(VNI).policy_table(site.port(name), "ingress")
                assert t is not None and t.isolated, name
            d_table = site.nodes[0].network(VNI).policy_table(site.port("d"), "ingress")
            assert d_table is not None and not d_table.isolated

            # Status: every node reports the store's hash.
            await aio.until(
                lambda: all(a.published.get(keys.policy_status(a.name)) for a in site.agents)
            )
            rows = await policies.status(store, TENANT)
            assert [(r["node"], r["in_sync"]) for r in rows] == [
                ("node0", True),
                ("node1", True),
                ("node2", True),
            ]

            # One policy selecting b (on node1): only b's ingress table is set.
            before = site.swaps()
            await policies.apply(store, TENANT, policies.parse(ALLOW_A_TO_B))
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            after = site.swaps()
            assert [x - y for x, y in zip(after, before, strict=True)] == [0, 1, 0]
            _, a_ip = site.pods["a"]
            _, b_ip = site.pods["b"]
            _, c_ip = site.pods["c"]
            v = site.nodes[1].network(VNI).explain(a_ip, b_ip, 80)
            assert v.allowed and v.policy == "x/b-from-a"
            assert not site.nodes[1].network(VNI).explain(c_ip, b_ip, 80).allowed

            # The same file again writes nothing and sets nothing.
            before = site.swaps()
            rev = store.revision
            again = await policies.apply(store, TENANT, policies.parse(ALLOW_A_TO_B))
            assert again["unchanged"] == ["NetworkPolicy x/b-from-a"] and store.revision == rev

            # A change that changes no table (a namespace label nothing selects)
            # is compiled everywhere and sets nothing.
            before = site.swaps()
            relabel = NAMESPACES.replace("{name: y}", "{name: y, labels: {tier: back}}")
            await policies.apply(store, TENANT, policies.parse(relabel))
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            assert site.swaps() == before

            # A pod started after the policies is judged from its first packet.
            e_ip = await site.add_pod(2, "e")
            t = site.nodes[2].network(VNI).policy_table(site.port("e"), "ingress")
            assert t is not None and t.isolated
            # a's node learns e's identity: x/b-from-a does not let e in.
            await aio.until(
                lambda: (
                    e_ip
                    in {
                        str(a)
                        for _, ips in site.nodes[1].network(VNI).remotes.values()
                        for a in ips
                    }
                )
            )
            assert not site.nodes[1].network(VNI).explain(e_ip, b_ip, 80).allowed

            # A record written by hand that does not check is refused on every
            # node; the rest of the set stays in force.
            bad = keys.policy(TENANT, "networkpolicy", "x/bad")
            await store.put(
                bad,
                json.dumps(
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "NetworkPolicy",
                        "metadata": {"name": "bad", "namespace": "x"},
                        "spec": {"podSelector": {"matchLabels": {"a": "-bad-"}}},
                    }
                ).encode(),
            )
            await aio.until(lambda: all(bad in a.claims.rejected for a in site.agents))
            assert site.nodes[1].network(VNI).explain(a_ip, b_ip, 80).allowed
            ts = await policies.read(store, TENANT)
            assert bad in ts.refused
            await store.delete(bad)

            # Deleting everything: tables allow all again, still active.
            await policies.delete(
                store,
                TENANT,
                [
                    policies.key_of(TENANT, "netpol", "deny-all", "x"),
                    policies.key_of(TENANT, "netpol", "b-from-a", "x"),
                ],
            )
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            assert site.nodes[1].network(VNI).explain(c_ip, b_ip, 80).allowed
        finally:
            await site.close()

    aio.run("asyncio", main, 90)


def test_routed_network_knows_remote_pods_by_their_records(overlay_topology: Topology) -> None:
    """A routed network has no remotes, yet a policy selecting pods of other
    nodes by label judges their addresses by the endpoint records."""
    store = MemoryStore()
    site = Site(overlay_topology, store, mode="routed")

    async def main() -> None:
        try:
            await site.start()
            a_ip = await site.add_pod(0, "a")
            c_ip = await site.add_pod(0, "c")
            b_ip = await site.add_pod(1, "b")
            await policies.apply(store, TENANT, policies.parse(ALLOW_A_TO_B))
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            net1 = site.nodes[1].network(VNI)
            assert not net1.remotes
            assert net1.explain(a_ip, b_ip, 80).allowed
            assert not net1.explain(c_ip, b_ip, 80).allowed
        finally:
            await site.close()

    aio.run("asyncio", main, 90)


B_HTTP_FROM_A = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-http-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: http}]
"""


def test_a_named_port_of_a_remote_pod_resolves_on_every_node(overlay_topology: Topology) -> None:
    """b's named ports travel in its endpoint record: a's node, judging b's
    ingress from b's record, and b's node, from its own port, agree that
    ``port: http`` is 8080; the verifier (which reads the records) agrees too."""
    from overlay.control.verify import PolicyVerifier

    store = MemoryStore()
    site = Site(overlay_topology, store)

    async def main() -> None:
        try:
            await site.start()
            # A bad named port is refused before anything is taken.
            with pytest.raises(ConfigError) as err:
                await site.agents[1].add_endpoint(VNI, named_ports={"HTTP": (8080, "TCP")})
            assert err.value.field == "named_ports['HTTP']"
            assert not site.nodes[1].network(VNI).ports and VNI not in site.agents[1].subnets
            a_ip = await site.add_pod(0, "a")
            b_ip = await site.add_pod(1, "b", named_ports={"http": (8080, "tcp")})
            [kv] = [
                kv
                for kv in (await store.get_prefix(keys.ENDPOINTS))[0]
                if b"/node1/" in kv.key and b'"pod":"b"' in kv.value
            ]
            assert json.loads(kv.value)["ports"] == {"http": [8080, "TCP"]}
            await policies.apply(store, TENANT, policies.parse(B_HTTP_FROM_A + "---" + NAMESPACES))
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            await aio.until(lambda: len(site.nodes[0].network(VNI).remotes) == 1)
            for i in (0, 1):  # a's node (b is a remote there) and b's
                net = site.nodes[i].network(VNI)
                v = net.explain(a_ip, b_ip, 8080)
                assert v.allowed and v.policy == "x/b-http-from-a", (i, v)
                assert not net.explain(a_ip, b_ip, 8081).allowed, i
                assert not net.explain(a_ip, b_ip, 8080, "UDP").allowed, i
            probed = site.nodes[1].network(VNI).probe(a_ip, b_ip, 8080)
            assert probed.allowed, probed
            assert not site.nodes[1].network(VNI).probe(a_ip, b_ip, 8081).allowed
            for agent in site.agents[:2]:
                got = PolicyVerifier(agent).run_once()[TENANT]
                assert got["checked"] > 0 and got["count"] == 0, (agent.name, got)
        finally:
            await site.close()

    aio.run("asyncio", main, 90)


def test_bad_manifests_are_refused_with_the_field_and_nothing_applied() -> None:
    store = MemoryStore()

    async def main() -> None:
        bad = {
            "unknown kind": ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "kind"),
            "bad selector": (
                DENY_ALL.replace("{podSelector: {}}", "{podSelector: {matchLabels: {'a b': c}}}"),
                "spec.podSelector.matchLabels",
            ),
            "except outside cidr": (
                DENY_ALL.replace(
                    "{podSelector: {}}",
                    "{podSelector: {}, ingress: [{from: [{ipBlock: "
                    "{cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
                ),
                "except",
            ),
            "endPort without port": (
                DENY_ALL.replace(
                    "{podSelector: {}}",
                    "{podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}",
                ),
                "endPort",
            ),
        }
        for what, (text, field) in bad.items():
            with pytest.raises(ConfigError) as exc:
                policies.parse(ALLOW_A_TO_B + "---\n" + text)
            assert "document 2" in exc.value.field and field in exc.value.field, what
        assert (await store.get_prefix(keys.POLICIES))[0] == []

    aio.run("asyncio", main, 90)


def test_verifier_agrees_then_catches_a_table_changed_by_hand(overlay_topology: Topology) -> None:
    from overlay.bindings.policy import encode_rules
    from overlay.control.verify import PolicyVerifier

    store = MemoryStore()
    site = Site(overlay_topology, store)

    async def main() -> None:
        try:
            await site.start()
            for i, name in enumerate(("a", "b", "c")):
                await site.add_pod(i, name)
            await site.add_pod(1, "d", ns="y")
            docs = policies.parse(DENY_ALL + "---" + ALLOW_A_TO_B + "---" + NAMESPACES)
            await policies.apply(store, TENANT, docs)
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            await aio.until(
                lambda: all(
                    len(n.network(VNI).remotes) + len(n.network(VNI).ports) == 4 for n in site.nodes
                )
            )
            verifiers = [PolicyVerifier(a) for a in site.agents]
            for v in verifiers:
                got = v.run_once()[TENANT]
                assert got["checked"] > 0 and got["count"] == 0, got

            # b's ingress table on node1 replaced by hand with "allow everything".
            b = site.port("b")
            site.nodes[1].engine.port_policy_set(
                b.id, "ingress", encode_rules([]), isolated=False, audit=False
            )
            found = [v.run_once()[TENANT] for v in verifiers]
            assert found[0]["count"] == 0 and found[2]["count"] == 0
            assert found[1]["count"] > 0
            _, b_ip = site.pods["b"]
            _, c_ip = site.pods["c"]
            lines = [d["line"] for d in found[1]["disagreements"]]
            assert all(f" {b_ip} ingress" in line for line in lines), lines
            assert any(
                d["peer"] == c_ip and d["port"] == 80 and d["policies"].startswith("deny")
                for d in found[1]["disagreements"]
            ), lines
            # Published with the node's status: `overlay policy verify` reads it.
            for a, f in zip(site.agents, found, strict=True):
                await a.report_policy(verify={TENANT: f})
            rows = {r["node"]: r for r in await policies.status(store, TENANT)}
            assert rows["node1"]["verify"]["count"] > 0
            assert rows["node0"]["verify"]["count"] == 0
            # Repair (overlay policy repair): every table set again, verified clean.
            assert site.nodes[1].network(VNI).update_policy(force=True) >= 2
            assert verifiers[1].run_once()[TENANT]["count"] == 0
            site.nodes[1].engine.port_policy_set(
                b.id, "ingress", encode_rules([]), isolated=False, audit=False
            )
            # A change of the set puts the right table back too.
            await policies.apply(store, TENANT, policies.parse(ALLOW_A_TO_B.replace("80", "81")))
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            assert verifiers[1].run_once()[TENANT]["count"] == 0
        finally:
            await site.close()

    aio.run("asyncio", main, 90)


def test_nodes_that_missed_updates_while_etcd_was_away_converge(
    overlay_topology: Topology, overlay_etcd: Any
) -> None:
    """etcd is killed under three agents; when it is back, a change is written
    and the history compacted before any agent has resumed: each one's watch
    is too old, reads everything again and puts the new set in force."""
    from overlay.control.etcd import EtcdStore

    store = EtcdStore([overlay_etcd.endpoint], timeout=2.0)
    site = Site(overlay_topology, store)  # type: ignore[arg-type]

    async def main() -> None:
        try:
            await site.start()
            for i, name in enumerate(("a", "b", "c")):
                await site.add_pod(i, name)
            await policies.apply(store, TENANT, policies.parse(DENY_ALL))
            first = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, first), timeout=15)

            await asyncio.to_thread(overlay_etcd.kill)
            await aio.until(lambda: not any(a.connected for a in site.agents), timeout=20)
            await asyncio.to_thread(overlay_etcd.start)
            writer = EtcdStore([overlay_etcd.endpoint], timeout=5.0)
            try:
                await policies.apply(writer, TENANT, policies.parse(ALLOW_A_TO_B))
                second = (await policies.read(writer, TENANT)).hash
                _, rev = await writer.get_prefix(keys.VERSION_KEY)
                await writer.compact(rev)
                assert second != first
                await aio.until(lambda: synced(site, second), timeout=30)
                await aio.until(
                    lambda: all(a.published.get(keys.policy_status(a.name)) for a in site.agents)
                )
                await aio.until(lambda: all(a.connected for a in site.agents), timeout=30)
                rows = await policies.status(writer, TENANT)
                assert [r["in_sync"] for r in rows] == [True, True, True], rows
            finally:
                await writer.close()
            _, a_ip = site.pods["a"]
            _, b_ip = site.pods["b"]
            assert site.nodes[1].network(VNI).explain(a_ip, b_ip, 80).allowed
        finally:
            await site.close()
            await store.close()

    aio.run("asyncio", main, 90)


def test_the_set_is_the_same_whatever_order_its_records_arrived_in() -> None:
    """Every node compiles the same set (the same isolating policy named in its
    tables) whatever order its watch delivered the records in."""
    import ipaddress

    from overlay.control.claims import Claims
    from overlay.control.store import Event

    docs = policies.parse(DENY_ALL + "---" + ALLOW_A_TO_B + "---" + NAMESPACES)
    events = [
        Event("put", policies.record_key(TENANT, d.obj), policies.record_value(d), r + 2, r + 2)
        for r, d in enumerate(docs)
    ]
    sets = []
    for order in (events, events[::-1], events[1:] + events[:1]):
        c = Claims("n", ipaddress.ip_address("198.18.0.1"), [], programmed=lambda v: None)
        for ev in order:
            c.apply(ev)
        sets.append(c.tenant_policies(TENANT))
    assert sets[0].policies == sets[1].policies == sets[2].policies
    assert sets[0].hash == sets[1].hash == sets[2].hash


def test_a_set_written_record_by_record_is_compiled_a_few_times(
    overlay_topology: Topology,
) -> None:
    """Thirty policies written one by one, a few milliseconds apart (as
    ``overlay policy apply`` writes a file): each agent compiles them in a few
    batches, not once per record (``agent.POLICY_SETTLE_S``)."""
    store = MemoryStore()
    site = Site(overlay_topology, store)

    async def main() -> None:
        try:
            await site.start()
            await site.add_pod(0, "a")
            await policies.apply(store, TENANT, policies.parse(DENY_ALL))
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            before = [site.policy(i).applies for i in range(3)]
            for k in range(30):
                text = ALLOW_A_TO_B.replace("b-from-a", f"p{k}").replace("80", str(1000 + k))
                await policies.apply(store, TENANT, policies.parse(text))
                await asyncio.sleep(0.002)
            want = (await policies.read(store, TENANT)).hash
            await aio.until(lambda: synced(site, want))
            compiles = [site.policy(i).applies - before[i] for i in range(3)]
            assert all(1 <= n <= 6 for n in compiles), compiles
        finally:
            await site.close()

    aio.run("asyncio", main, 90)
