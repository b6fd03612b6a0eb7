"""Several clusters, one desired policy set: applied to each, compared by what it allows.

A *cluster* here is a store: ``etcd://HOST:PORT[,HOST:PORT...]`` (plain
HTTP), or the path of an overlayd configuration file whose ``[store]`` is
etcd (its endpoints, TLS and authentication settings are used), or a
``Store`` object (embedding programs and tests)::

    from overlay.control import clusters, policies

    docs = policies.parse("policies/")                 # checked once, for every cluster
    results = await clusters.apply_clusters(
        ["etcd://10.0.0.1:2379", "/etc/overlay/overlayd-west.toml"], "acme", docs
    )
    print(clusters.format_drift(results))              # "in sync", or what differs

    diffs = await clusters.diff("etcd://10.0.0.1:2379", "policies/", "acme")
    print(policy.format_report(diffs))                 # the connections judged differently

Design notes.

- **Compared by connectivity, in one world.** ``diff`` loads two *sides*
  (a cluster's accepted records, or a directory of manifests) and asks
  ``overlay.policy.diff`` which connections one set allows and the other
  denies. Both sets are judged among the same pods: the union of both
  sides' pods (a cluster's from its endpoint records, a directory's from its
  Pod manifests). A pod is its address; where both sides have one address,
  the first side's pod (namespace, labels, name) is the one, and likewise a
  namespace's labels and an address that is a node on one side and a pod on
  the other. So a difference reported means the *policies* differ, never
  the pods: two clusters running different pods but the same policies report
  nothing. Namespace labels are part of the world (the first side's win),
  not of the policies compared.
- **A cluster's pods are its store's.** ``world`` reads every endpoint
  record of every network of the tenant (the ``tenant`` of the network's
  definition), with the identity every agent gives it
  (``overlay.control.reconcilers.policy.peer_of``: its namespace is the
  ``io.kubernetes.pod.namespace`` label, "default" without; labels policy
  would not accept match no selector); a gateway endpoint's addresses are
  node addresses. Claims are taken in the store's own order (create
  revision, then key): a MAC or an address claimed twice is the first
  claim's, as the agents decide. Records that do not decode, or whose value
  contradicts its key, are skipped, as every agent refuses them. This is
  the store's view: it does not check subnet leases or node membership.
- **One checked set, every cluster.** ``apply_clusters`` takes documents
  already checked (``policies.parse``, or a source it parses first) and
  opens every cluster before writing anything, so a bad file or a bad
  cluster name touches no cluster. Clusters are then applied concurrently
  and independently: one that cannot be reached is reported (``error``),
  and the others are still applied.
- **Drift is measured, not assumed.** After writing, each cluster's set is
  read back and its hash (``policies.set_hash``) compared with the hash of
  the desired records; every record that explains a difference is named
  (refused, missing, changed, extra: a record nobody asked for is drift
  even without ``prune``). Then the nodes: ``policies.status`` is polled
  for up to ``wait`` seconds until every node reports the store's set, and
  a node still behind is drift too.
- **Who closes.** ``open_store`` returns a store the caller closes; the
  other functions close what they opened and never a ``Store`` they were
  given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import time
import tomllib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from overlay.control import keys, policies
from overlay.control.reconcilers.policy import peer_of
from overlay.control.store import Store, StoreError
from overlay.errors import ConfigError
from overlay.model import POD_LABEL, Endpoint, NetworkSpec, from_json
from overlay.policy.diff import Difference, PolicySet, world_from
from overlay.policy.diff import diff as policy_diff
from overlay.policy.load import Document, documents, split
from overlay.policy.model import Endpoint as PodEndpoint
from overlay.policy.model import World

Spec = str | os.PathLike[str] | Store

CLUSTER_FORMS = (
    "etcd://HOST:PORT[,HOST:PORT...] (plain HTTP), or the path of an overlayd config "
    "file whose [store] kind is etcd"
)
SIDE_FORMS = f"{CLUSTER_FORMS}, or a directory or file of manifests"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
POLL_S = 0.1  # how often apply_clusters reads the nodes' status while waiting


# -- clusters ------------------------------------------------------------------


def _label(spec: Spec) -> str:
    """How a cluster or side is named in results and errors."""
    if isinstance(spec, (str, os.PathLike)):
        return os.fspath(spec)
    endpoint = getattr(spec, "endpoint", None)
    return f"{type(spec).__name__} {endpoint}" if endpoint else type(spec).__name__


def _classify(spec: Spec) -> str:
    """ "store", "etcd", "config" or "manifests" (or "missing": no such path)."""
    if isinstance(spec, Store) and not isinstance(spec, (str, os.PathLike)):
        return "store"
    text = os.fspath(spec)
    if text.startswith("etcd://"):
        return "etcd"
    path = Path(text)
    if path.is_dir():
        return "manifests"
    if not path.is_file():
        return "missing"
    if path.suffix in MANIFEST_SUFFIXES:
        return "manifests"
    if path.suffix == ".toml":
        return "config"
    # No telling suffix: a TOML file with a [store] table is overlayd's; YAML
    # and JSON manifests are not valid TOML.
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "manifests"
    return "config" if isinstance(raw.get("store"), dict) else "manifests"


def _etcd_endpoints(spec: str, field: str) -> list[str]:
    from overlay.control.etcd_security import parse_endpoint

    rest = spec[len("etcd://") :]
    out = []
    for part in rest.split(","):
        part = part.strip()
        try:
            if not part or "/" in part or "@" in part:
                raise ConfigError(field, part, "")
            url = "http://" + part
            parse_endpoint(url, field)
        except ConfigError:
            raise ConfigError(field, spec, CLUSTER_FORMS) from None
        out.append(url)
    return out


def _etcd_store(
    endpoints: list[str], timeout: float, field: str, spec: str, **security: Any
) -> Store:
    try:
        from overlay.control.etcd import EtcdStore
    except ImportError:
        raise ConfigError(
            field, spec, "etcd support installed: pip install 'overlay[etcd]'"
        ) from None
    try:
        return EtcdStore(endpoints, timeout, **security)
    except ConfigError as exc:
        raise ConfigError(f"{field} ({spec}) {exc.field}", exc.value, exc.expected) from None


async def open_store(spec: Spec, *, timeout: float = 5.0, field: str = "cluster") -> Store:
    """The store of a cluster: ``etcd://HOST:PORT[,HOST:PORT...]``, the path of
    an overlayd config file whose ``[store]`` is etcd, or a ``Store`` (returned
    as is). Nothing is connected until the first call; the caller closes it.
    ``ConfigError`` naming ``field`` with the accepted forms otherwise."""
    kind = _classify(spec) if isinstance(spec, (str, os.PathLike, Store)) else "bad"
    if kind == "store":
        assert not isinstance(spec, (str, os.PathLike))
        return spec
    text = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else repr(spec)
    if kind == "etcd":
        return _etcd_store(_etcd_endpoints(text, field), timeout, field, text)
    if kind != "config":
        raise ConfigError(field, text, CLUSTER_FORMS)
    from overlay.daemon import config

    try:
        conf = config.load(text)
    except ConfigError as exc:
        raise ConfigError(f"{field} ({text}) {exc.field}", exc.value, exc.expected) from None
    s = conf.store
    if s.kind != "etcd":
        raise ConfigError(field, text, f"{CLUSTER_FORMS} (this file's [store] kind is {s.kind!r})")
    return _etcd_store(
        list(s.endpoints),
        timeout,
        field,
        text,
        ca_file=s.ca_file,
        cert_file=s.cert_file,
        key_file=s.key_file,
        username=s.username,
        password=None if s.password is None else str(s.password),
    )


@contextlib.asynccontextmanager
async def _opened(spec: Spec, field: str = "cluster") -> AsyncIterator[Store]:
    """``open_store(spec)``, closed on exit unless ``spec`` was a Store already."""
    store = await open_store(spec, field=field)
    try:
        yield store
    finally:
        if store is not spec:
            await store.close()


# -- a cluster's pods ------------------------------------------------------------


async def world(store: Store, tenant: str) -> World:
    """The tenant's pods as the store has them (see the module's notes):
    every endpoint record of every network of the tenant, gateways as node
    addresses, and the namespaces of the tenant's Namespace records plus
    every namespace a pod names."""
    return await _world(store, tenant, await policies.read(store, tenant))


async def _world(store: Store, tenant: str, ts: policies.TenantSet) -> World:
    namespaces: dict[str, dict[str, str]] = {
        o.name: dict(o.labels) for o in ts.objects() if isinstance(o, policies.Namespace)
    }
    nets, _ = await store.get_prefix(keys.NETWORKS)
    vnis: list[int] = []
    for kv in nets:
        try:
            spec = from_json(NetworkSpec, kv.value)
        except ConfigError:
            continue  # refused by every agent too
        if spec.tenant == tenant and kv.key == keys.network(spec.vni):
            vnis.append(spec.vni)
    claims: list[tuple[int, bytes, Endpoint]] = []
    for vni in sorted(vnis):
        kvs, _ = await store.get_prefix(keys.endpoints(vni))
        for kv in kvs:
            parsed = keys.parse_endpoint(kv.key)
            if parsed is None:
                continue
            try:
                ep = from_json(Endpoint, kv.value)
            except ConfigError:
                continue
            v, node, mac = parsed
            if ep.vni != v or ep.mac != mac or (node is not None and ep.node != node):
                continue  # contradicts its key: refused by every agent
            claims.append((kv.create_revision, kv.key, ep))
    claims.sort(key=lambda c: (c[0], c[1]))  # the store's order: first claim wins
    macs: set[tuple[int, str]] = set()
    taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    pods: list[PodEndpoint] = []
    nodes: set[str] = set()
    for _, _, ep in claims:
        if (ep.vni, ep.mac) in macs:
            continue
        macs.add((ep.vni, ep.mac))
        peer = peer_of(ep)
        name = ep.labels.get(POD_LABEL) or ep.name
        for ip in peer.ips:
            addr = ipaddress.ip_address(ip)
            if addr in taken:
                continue
            taken.add(addr)
            if peer.gateway:
                nodes.add(str(addr))
                continue
            ident = peer.identity
            namespaces.setdefault(ident.namespace, {})
            pods.append(
                PodEndpoint(
                    str(addr),
                    ident.namespace,
                    dict(ident.labels),
                    dict(ident.named_ports),
                    name=name,
                )
            )
    return World(namespaces, pods, nodes)


def merge_worlds(worlds: Iterable[World]) -> World:
    """One world of several: every namespace, pod and node address of any;
    the first world to name an address (as a pod or a node) or a namespace
    decides what it is."""
    namespaces: dict[str, Mapping[str, str]] = {}
    pods: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, PodEndpoint] = {}
    nodes: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for w in worlds:
        for ns, labels in w.namespaces.items():
            namespaces.setdefault(ns, labels)
        for ep in w.endpoints:
            addr = ep.address
            if addr not in pods and addr not in nodes:
                pods[addr] = ep
        for n in w.node_addresses:
            addr = ipaddress.ip_address(n)
            if addr not in pods:
                nodes.add(addr)
    return World(namespaces, list(pods.values()), {str(a) for a in nodes})


# -- the sides of a comparison ---------------------------------------------------


@dataclasses.dataclass
class Side:
    """One side of a comparison: its name as given, its policies as
    ``overlay.policy.diff`` takes them, its pods (None: a directory without
    Pod manifests), and for a cluster its set's hash and the records every
    node refuses (key -> why; not part of ``policies``)."""

    name: str
    policies: PolicySet
    world: World | None
    hash: str | None = None
    refused: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Pod:
    """A Pod of a manifest directory, for ``documents``' duplicate check only."""

    name: str


def _pod(obj: Mapping[str, Any], where: str) -> _Pod:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
        ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"
        return _Pod(f"{ns}/{meta['name']}")
    return _Pod(where)  # world_from names what is wrong with it


def _manifest_side(path: str) -> Side:
    """Policies of a directory or file of manifests (Namespace and Pod objects
    make its world; Pods alone are not read as policies)."""
    # The checks of ``policies.parse`` (one BaselineAdminNetworkPolicy, named
    # default; no name twice), with Pods taken aside for the world.
    docs = documents(path, extra={"Namespace": policies.Namespace.from_dict, "Pod": _pod})
    objs = [d.obj for d in docs if not isinstance(d.obj, (policies.Namespace, _Pod))]
    w: World | None = None
    if any(isinstance(d.obj, _Pod) for d in docs):
        kept = [d for d in docs if isinstance(d.obj, (policies.Namespace, _Pod))]
        try:
            w = world_from([dict(d.raw) for d in kept])
        except ConfigError as exc:
            field = exc.field
            for i, d in enumerate(kept):  # name the document, not the list index
                if field.startswith(f"objects[{i}]"):
                    field = d.where + field[len(f"objects[{i}]") :]
                    break
            raise ConfigError(field, exc.value, exc.expected) from None
    return Side(path, split(objs), w)


async def load_side(spec: Spec, tenant: str, *, field: str = "side") -> Side:
    """A side of a comparison: a cluster (as ``open_store``; its accepted
    records, its pods from ``world``) or a directory or file of manifests (its
    policies; its world from its Pod and Namespace manifests, None without Pods)."""
    policies.check_tenant(tenant)
    kind = _classify(spec) if isinstance(spec, (str, os.PathLike, Store)) else "bad"
    if kind == "manifests" and isinstance(spec, (str, os.PathLike)):
        return _manifest_side(os.fspath(spec))
    if kind not in ("store", "etcd", "config"):
        raise ConfigError(field, _label(spec) if kind != "bad" else spec, SIDE_FORMS)
    async with _opened(spec, field) as store:
        ts = await policies.read(store, tenant)
        objs = [o for o in ts.objects() if not isinstance(o, policies.Namespace)]
        return Side(
            _label(spec),
            split(objs),
            await _world(store, tenant, ts),
            ts.hash,
            {k.decode(errors="replace"): why for k, why in ts.refused.items()},
        )


async def diff(
    a: Spec, b: Spec, tenant: str, probes: Iterable[object] | None = None
) -> list[Difference]:
    """The connections one side's policies allow and the other's deny, both
    judged among the union of both sides' pods (the first side's where both
    have an address). ``ConfigError`` naming the sides when neither has pods."""
    sa = await load_side(a, tenant, field="a")
    sb = await load_side(b, tenant, field="b")
    worlds = [w for w in (sa.world, sb.world) if w is not None]
    if not worlds:
        raise ConfigError(
            "a, b",
            f"{sa.name}, {sb.name}",
            "at least one side with pods: a cluster, or a directory with Pod (and "
            "Namespace) manifests",
        )
    return policy_diff(merge_worlds(worlds), sa.policies, sb.policies, probes=probes)


# -- one set, every cluster --------------------------------------------------------


def _checked(docs: object) -> list[Document]:
    if isinstance(docs, list) and all(isinstance(d, Document) for d in docs):
        return docs
    if isinstance(docs, (str, bytes, os.PathLike, list)):
        return policies.parse(docs)
    raise ConfigError(
        "docs", docs, "policies.parse's documents, or a manifest (path, directory or text)"
    )


def desired(tenant: str, docs: Sequence[Document]) -> dict[bytes, bytes]:
    """The records ``docs`` are written as (key -> value)."""
    return {policies.record_key(tenant, d.obj): policies.record_value(d) for d in docs}


def _record_name(ts: policies.TenantSet, key: bytes, want: Mapping[bytes, Document]) -> str:
    if key in want:
        return policies.object_name(want[key].obj)
    got = ts.records.get(key)
    if got is not None:
        return policies.object_name(got[1])
    return policies._name_of_key(key)


def drift(
    tenant: str, docs: Sequence[Document], ts: policies.TenantSet, rows: Iterable[Mapping[str, Any]]
) -> list[str]:
    """What differs between the desired set and a cluster's records and nodes:
    one line per record refused, missing, changed or extra, and per node not
    in sync."""
    want = desired(tenant, docs)
    by_key = {policies.record_key(tenant, d.obj): d for d in docs}
    out: list[str] = []
    for key in sorted(ts.refused):
        why = ts.refused[key]
        out.append(f"refused: {key.decode(errors='replace')} ({why})")
    for key in sorted(want):
        if key in ts.refused:
            continue
        got = ts.records.get(key)
        if got is None:
            out.append(f"missing: {_record_name(ts, key, by_key)}")
        elif got[0] != want[key]:
            out.append(f"changed: {_record_name(ts, key, by_key)} (differs from the desired one)")
    for key in sorted(ts.records):
        if key not in want:
            out.append(f"extra: {_record_name(ts, key, by_key)} (not in the desired set)")
    desired_hash = policies.set_hash(want, tenant)
    if ts.hash != desired_hash and not out:
        out.append(f"set hash {ts.hash}, desired {desired_hash}")
    for r in rows:
        if r.get("in_sync"):
            continue
        if r.get("revision") is None:
            why = r.get("reason") or "no report"
            out.append(f"node {r['node']}: {why}")
        else:
            out.append(
                f"node {r['node']} at revision {r['revision']}, not in sync "
                f"(has {r.get('hash')}, the store's set is {r.get('desired_hash')} "
                f"at revision {r.get('desired_revision')})"
            )
    return out


async def _settled(store: Store, tenant: str, wait: float) -> list[dict[str, Any]]:
    """``policies.status`` rows once every node is in sync, or after ``wait`` s."""
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        rows = await policies.status(store, tenant)
        left = deadline - time.monotonic()
        if all(r.get("in_sync") for r in rows) or left <= 0:
            return rows
        await asyncio.sleep(min(POLL_S, left))


async def _apply_one(
    label: str, store: Store, tenant: str, docs: list[Document], prune: bool, wait: float
) -> dict[str, Any]:
    try:
        result = await policies.apply(store, tenant, docs, prune=prune)
        rows = await _settled(store, tenant, wait)
        ts = await policies.read(store, tenant)
    except StoreError as exc:
        return {"cluster": label, "error": str(exc) or type(exc).__name__}
    return {
        "cluster": label,
        "result": result,
        "status": rows,
        "hash": ts.hash,
        "desired_hash": policies.set_hash(desired(tenant, docs), tenant),
        "drift": drift(tenant, docs, ts, rows),
    }


async def apply_clusters(
    specs: Sequence[Spec],
    tenant: str,
    docs: object,
    prune: bool = False,
    wait: float = 5.0,
) -> list[dict[str, Any]]:
    """Apply one checked set (``policies.parse``'s documents, or a manifest
    it parses first) to every cluster, then report per cluster, in order:
    ``{"cluster", "result": policies.apply's answer, "status": policies.status
    rows after waiting up to ``wait`` s for every node to be in sync, "hash",
    "desired_hash", "drift": [lines]}``, or ``{"cluster", "error"}`` for a
    cluster that could not be reached (the others are still applied).
    A bad document, tenant or cluster name raises ``ConfigError`` before any
    cluster is touched."""
    policies.check_tenant(tenant)
    checked = _checked(docs)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not wait >= 0:
        raise ConfigError("wait", wait, "seconds >= 0")
    if isinstance(specs, (str, os.PathLike)) or not specs:
        raise ConfigError("clusters", specs, f"a list of one or more clusters: {CLUSTER_FORMS}")
    names = [_label(s) for s in specs]
    # Two stores of one kind: say which is which (by place in the list).
    labels = [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    opened: list[Store] = []
    try:
        for spec in specs:  # every cluster named right before any is written
            opened.append(await open_store(spec))
        return list(
            await asyncio.gather(
                *(
                    _apply_one(label, store, tenant, checked, prune, wait)
                    for label, store in zip(labels, opened, strict=True)
                )
            )
        )
    finally:
        for spec, store in zip(specs, opened, strict=False):
            if store is not spec:
                await store.close()


def format_drift(results: Iterable[Mapping[str, Any]]) -> str:
    """One block per cluster: its name, then "in sync" (with the set's hash and
    how many nodes have it) or its drift lines, or why it was not reached."""
    blocks = []
    for r in results:
        name = r.get("cluster")
        if "error" in r:
            blocks.append(f"{name}: not applied: {r['error']}\n")
            continue
        res = r.get("result") or {}
        done = ", ".join(f"{k} {len(v)}" for k, v in res.items() if v)
        nodes = len(r.get("status") or [])
        lines = r.get("drift") or []
        head = f"{name}: " + (
            f"in sync (hash {r.get('hash')}, {nodes} node{'s' if nodes != 1 else ''})"
            if not lines
            else "drift"
        )
        if done:
            head += f"; {done}"
        blocks.append(head + "\n" + "".join(f"  {line}\n" for line in lines))
    return "".join(blocks)


__all__ = [
    "CLUSTER_FORMS",
    "Side",
    "apply_clusters",
    "desired",
    "diff",
    "drift",
    "format_drift",
    "load_side",
    "merge_worlds",
    "open_store",
    "world",
]
