"""Several clusters, one policy set: compared by connectivity, applied to each, drift found.

Clusters are stores: ``MemoryStore`` objects where a test only needs stores,
two real etcd servers (``etcd://`` specs, an overlayd config file) where the
point is the cluster as an operator names it. Pods are endpoint records
written as agents write them (``overlay.model.Endpoint`` JSON under
``endpoints/<vni>/<node>/<mac>``, the network's ``NetworkSpec``); a node's
policy report is the record an agent publishes (``policies.status_value``).
No data plane: nothing here needs one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from policy_docs import ALLOW_A_TO_B as B_FROM_A
from policy_docs import DENY_ALL as DENY_X
from policy_docs import NAMESPACES

from overlay.control import clusters, keys, policies
from overlay.control.store import MemoryStore, Store
from overlay.errors import ConfigError
from overlay.gateway import ROLE_GATEWAY, ROLE_LABEL
from overlay.model import NAMESPACE_LABEL, POD_LABEL, Endpoint, NetworkSpec, NodeSpec, to_json
from overlay.testing.aio import run
from overlay.testing.etcd import EtcdServer, etcd_unavailable_reason

TENANT = "acme"
VNI = 100


# The same policy with one rule more: y's pods may open x/b on 443.
B_FROM_A_AND_Y = (
    B_FROM_A
    + """  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
    ports: [{port: 443}]
"""
)

SET_A = "\n---\n".join([NAMESPACES, DENY_X, B_FROM_A])
SET_B = "\n---\n".join([NAMESPACES, DENY_X, B_FROM_A_AND_Y])

EXTRA = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: by-hand, namespace: y}
spec: {podSelector: {}}
"""

BAD = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 0}]}]
"""

# Pod manifests of the same pods as the store's endpoint records (pods())
PODS = """
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {pod: c}}
status: {podIP: 10.244.2.2}
"""


# -- the store as agents write it -------------------------------------------------


async def put_network(store: Store, vni: int = VNI, tenant: str = TENANT) -> None:
    await store.put(keys.network(vni), to_json(NetworkSpec(vni=vni, tenant=tenant)))


async def put_pod(
    store: Store,
    node: str,
    index: int,
    ip: str,
    namespace: str | None,
    labels: dict[str, str] | None = None,
    *,
    name: str = "",
    vni: int = VNI,
    gateway: bool = False,
) -> Endpoint:
    lab = dict(labels or {})
    if namespace is not None:
        lab[NAMESPACE_LABEL] = namespace
    if name:
        lab[POD_LABEL] = name
    if gateway:
        lab[ROLE_LABEL] = ROLE_GATEWAY
    ep = Endpoint(
        vni=vni, mac=f"02:00:00:00:{index:02x}:02", ips=(f"{ip}/16",), node=node, labels=lab
    )
    await store.put(keys.endpoint(vni, node, ep.mac), to_json(ep))
    return ep


async def pods(store: Store) -> None:
    """x/a, x/b on node n1, y/c on node n2; each node's gateway."""
    await put_network(store)
    await put_pod(store, "n1", 1, "10.244.1.1", None, gateway=True)
    await put_pod(store, "n1", 2, "10.244.1.2", "x", {"pod": "a"}, name="a")
    await put_pod(store, "n1", 3, "10.244.1.3", "x", {"pod": "b"}, name="b")
    await put_pod(store, "n2", 4, "10.244.2.1", None, gateway=True)
    await put_pod(store, "n2", 5, "10.244.2.2", "y", {"pod": "c"}, name="c")


async def cluster_with(text: str) -> MemoryStore:
    store = MemoryStore()
    await pods(store)
    await policies.apply(store, TENANT, policies.parse(text))
    return store


async def put_report(store: Store, node: str, digest: str, revision: int) -> None:
    """A node hosting the network, and its policy report (as an agent publishes it)."""
    await store.put(
        keys.node(node), to_json(NodeSpec(name=node, underlay="198.18.0.9", networks=(VNI,)))
    )
    value = policies.status_value(
        {TENANT: policies.Realised(digest, revision, 0.0, (VNI,), 2)}, None
    )
    await store.put(keys.policy_status(node), value)


def verdicts(diffs: list[Any]) -> set[tuple[str, str, int, str, bool, bool]]:
    return {
        (d.source, d.destination, d.probe.port, d.probe.protocol, d.a.allowed, d.b.allowed)
        for d in diffs
    }


# -- a cluster's world ---------------------------------------------------------------


def test_world_is_the_tenants_endpoint_records(loop_kind: str) -> None:
    async def main() -> None:
        store = await cluster_with(SET_A)
        # Not the tenant's: another tenant's network, with a pod at an address of ours.
        await put_network(store, 200, "other")
        await put_pod(store, "n1", 9, "10.244.9.9", "z", vni=200)
        # A record that does not decode, and one contradicting its key: skipped.
        await store.put(keys.endpoint(VNI, "n1", "02:00:00:00:aa:02"), b"{not json")
        bad = Endpoint(vni=VNI, mac="02:00:00:00:bb:02", ips=("10.244.7.7/16",), node="n2")
        await store.put(keys.endpoint(VNI, "n1", bad.mac), to_json(bad))
        # A second claim of x/a's address, later: the first claim keeps it.
        await put_pod(store, "n2", 6, "10.244.1.2", "y", {"pod": "thief"})
        # A pod without a namespace label is in "default"; a namespace no record declares.
        await put_pod(store, "n2", 7, "10.244.2.7", None, {"app": "d"})
        await put_pod(store, "n2", 8, "10.244.2.8", "q", {"app": "e"})

        w = await clusters.world(store, TENANT)
        got = {
            (e.ip, e.namespace, e.name, e.labels.get("pod") or e.labels.get("app"))
            for e in w.endpoints
        }
        assert got == {
            ("10.244.1.2", "x", "a", "a"),
            ("10.244.1.3", "x", "b", "b"),
            ("10.244.2.2", "y", "c", "c"),
            ("10.244.2.7", "default", "", "d"),
            ("10.244.2.8", "q", "", "e"),
        }
        a = w.endpoint("10.244.1.2")
        assert a is not None and a.labels[NAMESPACE_LABEL] == "x"  # the record's labels
        assert {str(n) for n in w.node_addresses} == {"10.244.1.1", "10.244.2.1"}
        assert set(w.namespaces) == {"x", "y", "default", "q"}
        assert w.namespaces["x"]["team"] == "web"  # the Namespace record's labels
        await store.close()

    run(loop_kind, main)


# -- comparing by connectivity -----------------------------------------------------------


def test_two_stores_differing_by_one_rule_differ_by_that_rules_verdicts(loop_kind: str) -> None:
    async def main() -> None:
        a, b = await cluster_with(SET_A), await cluster_with(SET_B)
        diffs = await clusters.diff(a, b, TENANT)
        # Exactly the new rule's connections: y's pod to x/b on 443, and nothing else.
        assert verdicts(diffs) == {("y/c", "x/b", 443, "TCP", False, True)}
        (d,) = diffs
        assert (d.a.tier, d.a.policy, d.a.rule) == ("networkpolicy", "x/b-from-a", None)
        assert (d.b.tier, d.b.policy, d.b.rule) == ("networkpolicy", "x/b-from-a", 1)
        assert "x/b-from-a rule 1" in d.line()
        # The other way round: the verdicts swap sides.
        assert verdicts(await clusters.diff(b, a, TENANT)) == {
            ("y/c", "x/b", 443, "TCP", True, False)
        }
        # The same set: nothing.
        assert await clusters.diff(a, a, TENANT) == []
        # Refused records are not policies: a broken record in b changes nothing.
        await b.put(policies.key_of(TENANT, "netpol", "junk", "y"), b"{}")
        side = await clusters.load_side(b, TENANT)
        assert list(side.refused) == [policies.key_of(TENANT, "netpol", "junk", "y").decode()]
        assert len(await clusters.diff(a, b, TENANT)) == 1
        await a.close()
        await b.close()

    run(loop_kind, main)


def test_the_world_is_one_pods_differing_between_sides_change_nothing(loop_kind: str) -> None:
    async def main() -> None:
        a, b = await cluster_with(SET_A), await cluster_with(SET_A)
        # b's x/a has other labels and b has a pod more: the policies are the
        # same, so the union of pods (a's labels for a's pod) gives no difference.
        await put_pod(b, "n1", 2, "10.244.1.2", "x", {"pod": "other"}, name="a")
        await put_pod(b, "n2", 10, "10.244.2.10", "y", {"pod": "d"}, name="d")
        assert await clusters.diff(a, b, TENANT) == []
        # The union has b's extra pod: a rule about it is judged on it.
        await policies.apply(b, TENANT, policies.parse(SET_B))
        assert verdicts(await clusters.diff(a, b, TENANT)) == {
            ("y/c", "x/b", 443, "TCP", False, True),
            ("y/d", "x/b", 443, "TCP", False, True),
        }
        await a.close()
        await b.close()

    run(loop_kind, main)


def test_a_store_against_a_directory_of_manifests(loop_kind: str, tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    (new / "ns.yaml").write_text(NAMESPACES)
    (new / "policies.yaml").write_text(DENY_X + "---\n" + B_FROM_A_AND_Y)
    same = tmp_path / "same"
    same.mkdir()
    (same / "all.yaml").write_text(SET_A)
    with_pods = tmp_path / "with-pods"
    with_pods.mkdir()
    (with_pods / "cluster.yaml").write_text(NAMESPACES + "---\n" + PODS)
    (with_pods / "policies.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": []})
    )

    async def main() -> None:
        store = await cluster_with(SET_A)
        # The directory's world: none (no Pods); the store's pods are the world.
        side = await clusters.load_side(str(new), TENANT)
        assert side.world is None and len(side.policies[0]) == 2
        diffs = await clusters.diff(store, str(new), TENANT)
        assert verdicts(diffs) == {("y/c", "x/b", 443, "TCP", False, True)}
        assert await clusters.diff(store, str(same), TENANT) == []
        assert await clusters.diff(str(same), store, TENANT) == []
        # A directory with Pod manifests (and policies beside them: none here)
        # against one without: its pods are the world.
        side = await clusters.load_side(str(with_pods), TENANT)
        assert side.world is not None and len(side.world.endpoints) == 3
        assert side.policies == ([], [], None)
        # No policies at all against SET_B: every connection SET_B isolates.
        diffs = await clusters.diff(str(with_pods), str(new), TENANT)
        assert {(d.source, d.destination) for d in diffs} == {
            ("x/a", "x/b"),
            ("y/c", "x/a"),
            ("y/c", "x/b"),
            ("x/b", "x/a"),
        }
        assert all(d.a.allowed and not d.b.allowed for d in diffs)
        # Two directories without Pods: no world to judge in, and both named.
        with pytest.raises(ConfigError) as exc:
            await clusters.diff(str(new), str(same), TENANT)
        assert (
            exc.value.field == "a, b" and str(new) in str(exc.value) and str(same) in str(exc.value)
        )
        # Neither a cluster nor manifests.
        with pytest.raises(ConfigError) as exc:
            await clusters.diff(store, str(tmp_path / "nothing"), TENANT)
        assert exc.value.field == "b" and "etcd://" in exc.value.expected
        await store.close()

    run(loop_kind, main)


def test_a_bad_manifest_side_is_refused_naming_the_document(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.yaml").write_text(NAMESPACES + "---\n" + PODS + "---\n" + BAD)

    async def main() -> None:
        with pytest.raises(ConfigError) as exc:
            await clusters.load_side(str(d), TENANT)
        assert (
            "a.yaml document 6" in exc.value.field and "NetworkPolicy x/broken" in exc.value.field
        )
        (d / "a.yaml").write_text(
            NAMESPACES + "---\n" + PODS.replace("namespace: y", "namespace: nowhere")
        )
        with pytest.raises(ConfigError) as exc:
            await clusters.load_side(str(d), TENANT)
        assert exc.value.field == f"{d / 'a.yaml'} document 5 metadata.namespace"

    run("asyncio", main)


# -- one set, every cluster (stores) ---------------------------------------------------------


def test_a_bad_document_or_cluster_touches_no_cluster() -> None:
    async def main() -> None:
        a, b = MemoryStore(), MemoryStore()
        for source in (SET_A + "---\n" + BAD, [{"kind": "Pod", "apiVersion": "v1"}]):
            with pytest.raises(ConfigError):
                await clusters.apply_clusters([a, b], TENANT, source)
        with pytest.raises(ConfigError) as exc:
            await clusters.apply_clusters([a, "etcd://", b], TENANT, policies.parse(SET_A))
        assert exc.value.field == "cluster" and "etcd://HOST:PORT" in exc.value.expected
        with pytest.raises(ConfigError) as exc:
            await clusters.apply_clusters([a, b], "no/such tenant", SET_A)
        assert exc.value.field == "tenant"
        for s in (a, b):
            assert (await policies.read(s, TENANT)).records == {}
        await a.close()
        await b.close()

    run("asyncio", main)


def test_apply_clusters_to_stores_reports_nodes_behind(loop_kind: str) -> None:
    async def main() -> None:
        a, b = MemoryStore(), MemoryStore()
        docs = policies.parse(SET_A)
        want = policies.set_hash(clusters.desired(TENANT, docs), TENANT)
        # a's node already has the set; b's node reports an older one.
        await put_report(a, "n1", want, 1)
        await put_report(b, "n2", policies.EMPTY_HASH, 3)
        results = await clusters.apply_clusters([a, b], TENANT, docs, wait=0.3)
        ra, rb = results
        assert ra["drift"] == [] and ra["hash"] == want
        assert [r["in_sync"] for r in ra["status"]] == [True]
        assert rb["hash"] == want
        assert rb["drift"] == [
            f"node n2 at revision 3, not in sync (has {policies.EMPTY_HASH}, the store's set "
            f"is {want} at revision {rb['status'][0]['desired_revision']})"
        ]
        text = clusters.format_drift(results)
        assert ra["cluster"] == "MemoryStore #1" and rb["cluster"] == "MemoryStore #2"
        assert text.startswith("MemoryStore #1: in sync (hash ") and "1 node)" in text
        assert "MemoryStore #2: drift; created 4\n  node n2 at revision 3, not in sync" in text
        await a.close()
        await b.close()

    run(loop_kind, main)


# -- real etcds -----------------------------------------------------------------------


@pytest.fixture
def second_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """Another fresh etcd beside ``overlay_etcd``: a second cluster."""
    reason = etcd_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("aetcd")
    server = EtcdServer(tmp_path / "etcd2", name="overlay-test-2")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def etcd_spec(server: EtcdServer) -> str:
    return "etcd://" + server.endpoint.removeprefix("http://")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_apply_to_two_etcds_then_drift_by_hand(
    loop_kind: str, overlay_etcd: EtcdServer, second_etcd: EtcdServer
) -> None:
    one, two = etcd_spec(overlay_etcd), etcd_spec(second_etcd)

    async def main() -> None:
        docs = policies.parse(SET_A)
        want = policies.set_hash(clusters.desired(TENANT, docs), TENANT)
        results = await clusters.apply_clusters([one, two], TENANT, docs, wait=0)
        assert [r["cluster"] for r in results] == [one, two]
        for r in results:
            assert r["result"]["created"] and r["drift"] == [] and r["status"] == []
        for spec in (one, two):
            store = await clusters.open_store(spec)
            try:
                assert (await policies.read(store, TENANT)).hash == want
            finally:
                await store.close()
        assert clusters.format_drift(results).count(": in sync (hash ") == 2

        # A policy written by hand into the second cluster: drift there only,
        # without prune (the desired set is the file's)...
        store = await clusters.open_store(two)
        try:
            (extra,) = policies.parse(EXTRA)
            await store.put(policies.record_key(TENANT, extra.obj), policies.record_value(extra))
            await pods(store)
        finally:
            await store.close()
        r1, r2 = await clusters.apply_clusters([one, two], TENANT, SET_A, wait=0)
        assert r1["drift"] == [] and r1["result"]["unchanged"]
        assert r2["drift"] == ["extra: NetworkPolicy y/by-hand (not in the desired set)"]
        assert r2["hash"] != want
        assert "  extra: NetworkPolicy y/by-hand" in clusters.format_drift([r1, r2])
        # ... and the clusters compared: the extra policy's verdicts, named.
        diffs = await clusters.diff(one, two, TENANT)
        assert diffs and all(d.destination == "y/c" and d.b.policy == "y/by-hand" for d in diffs)
        # With prune the file is the whole set: gone, and both in sync again.
        results = await clusters.apply_clusters([one, two], TENANT, SET_A, prune=True, wait=0)
        assert results[1]["result"]["pruned"] == ["NetworkPolicy y/by-hand"]
        assert [r["drift"] for r in results] == [[], []]
        assert await clusters.diff(one, two, TENANT) == []

    run(loop_kind, main)


def test_an_unreachable_cluster_is_reported_and_the_other_applied(
    overlay_etcd: EtcdServer,
) -> None:
    pytest.importorskip("aetcd")
    dead = f"etcd://127.0.0.1:{free_port()}"
    live = etcd_spec(overlay_etcd)

    async def main() -> None:
        results = await clusters.apply_clusters([dead, live], TENANT, SET_A, wait=0)
        assert results[0]["cluster"] == dead and "unavailable" in results[0]["error"]
        assert "result" not in results[0]
        assert results[1]["drift"] == [] and len(results[1]["result"]["created"]) == 4
        text = clusters.format_drift(results)
        assert text.startswith(f"{dead}: not applied: etcd at http://127.0.0.1:")
        assert f"{live}: in sync" in text

    run("asyncio", main)


def test_open_store_takes_an_overlayd_config_file(overlay_etcd: EtcdServer, tmp_path: Path) -> None:
    pytest.importorskip("aetcd")
    conf = tmp_path / "overlayd.toml"
    conf.write_text(
        '[node]\nname = "n"\nunderlay = "198.18.0.1"\n\n'
        f'[store]\nkind = "etcd"\nendpoints = ["{overlay_etcd.endpoint}"]\n'
    )
    plain = tmp_path / "overlayd.conf"  # no telling suffix: read as TOML with [store]
    plain.write_text(conf.read_text())
    memory = tmp_path / "memory.toml"
    memory.write_text('[node]\nname = "n"\nunderlay = "198.18.0.1"\n[store]\nkind = "memory"\n')

    async def main() -> None:
        results = await clusters.apply_clusters([str(conf)], TENANT, SET_A, wait=0)
        assert results[0]["cluster"] == str(conf) and results[0]["drift"] == []
        store = await clusters.open_store(str(plain))
        try:
            assert (await policies.read(store, TENANT)).records
            await pods(store)
        finally:
            await store.close()
        assert await clusters.diff(str(plain), str(conf), TENANT) == []
        for bad in (str(memory), "etcd://host", "http://127.0.0.1:2379", str(tmp_path)):
            with pytest.raises(ConfigError) as exc:
                await clusters.open_store(bad)
            assert exc.value.field == "cluster" and "etcd://HOST:PORT" in exc.value.expected

    run("asyncio", main)
