"""Policies and namespaces in the store: one tenant's desired set, written once.

The records (``overlay.control.keys``)::

    policies/<tenant>/networkpolicy/<namespace>/<name>     the manifest (JSON)
    policies/<tenant>/adminnetworkpolicy/<name>
    policies/<tenant>/baselineadminnetworkpolicy/default
    namespaces/<tenant>/<name>                             {"labels": {...}}
    policy-status/<node>                                   what the node realised

Design notes.
- **Per tenant.** A tenant's policies apply to every network of that tenant
  (the ``tenant`` of its definition) on every node; they never select pods of
  another tenant, and nothing one tenant writes changes another's tables. A
  NetworkPolicy's namespace is the pods' ``io.kubernetes.pod.namespace``
  label (``overlay.model.NAMESPACE_LABEL``; "default" without it).
- **What is stored is what was checked.** ``parse`` reads manifests (YAML or
  JSON, several documents, Lists; Namespace objects too) with the strict
  loader of ``overlay.policy.load``: the first bad object refuses the whole
  request with the document and the field named, and nothing is written. A
  record stores the object as written (``apiVersion``, ``kind``,
  ``metadata.name``/``namespace``/``labels``, ``spec``), in canonical JSON,
  so that applying the same file twice writes nothing.
- **Every node checks again.** A record written by anyone else (etcdctl, an
  older release) is decoded with the same checks by each agent
  (``overlay.control.claims``): a bad one is refused there, logged and
  counted, and the rest of the set still applies.
- **One hash says "the same".** ``set_hash`` is a digest of a tenant's
  accepted records (keys and canonical values, policies and namespaces). Each
  agent publishes the hash and the store revision of the set it has put in
  force (``policy-status/<node>``); ``status`` compares them with the store's
  set now. Equal hashes mean equal inputs, so equal tables: the compiler is
  deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from overlay.control import keys
from overlay.control.store import KeyValue, Store
from overlay.errors import ConfigError, NotFoundError
from overlay.model import _NAME_RE
from overlay.policy.load import Document, PolicyObject, _one, documents
from overlay.policy.model import (
    NetworkPolicy,
    check_labels,
    check_namespace_name,
)

# A manifest kind -> its element in the key.
KIND_KEYS = {
    "NetworkPolicy": "networkpolicy",
    "AdminNetworkPolicy": "adminnetworkpolicy",
    "BaselineAdminNetworkPolicy": "baselineadminnetworkpolicy",
}
KEY_KINDS = {v: k for k, v in KIND_KEYS.items()}
# Also accepted in a manifest, by kubectl's short names on the command line.
KIND_ALIASES = {
    "networkpolicy": "NetworkPolicy",
    "networkpolicies": "NetworkPolicy",
    "netpol": "NetworkPolicy",
    "adminnetworkpolicy": "AdminNetworkPolicy",
    "adminnetworkpolicies": "AdminNetworkPolicy",
    "anp": "AdminNetworkPolicy",
    "baselineadminnetworkpolicy": "BaselineAdminNetworkPolicy",
    "baselineadminnetworkpolicies": "BaselineAdminNetworkPolicy",
    "banp": "BaselineAdminNetworkPolicy",
    "namespace": "Namespace",
    "namespaces": "Namespace",
    "ns": "Namespace",
}
RECORD_BYTES_MAX = 1024 * 1024  # one manifest; etcd's own request limit is 1.5 MiB


@dataclasses.dataclass(frozen=True)
class Namespace:
    """A Kubernetes Namespace of a tenant: its name and labels."""

    name: str
    labels: Mapping[str, str]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> Namespace:
        if d.get("apiVersion") != "v1":
            raise ConfigError(f"{where} apiVersion", d.get("apiVersion"), "v1 for Namespace")
        meta = d.get("metadata")
        if not isinstance(meta, Mapping):
            raise ConfigError(f"{where} metadata", meta, "a mapping with name")
        name = check_namespace_name(f"{where} metadata.name", meta.get("name"))
        labels = check_labels(f"{where} metadata.labels", meta.get("labels") or {})
        return cls(name, labels)


Object = PolicyObject | Namespace


def canonical(value: Any) -> bytes:
    """The one byte form of a record: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _kind_of(obj: Object) -> str:
    return "Namespace" if isinstance(obj, Namespace) else type(obj).__name__


def object_name(obj: Object) -> str:
    """How a record is named in answers: "NetworkPolicy x/web", "Namespace x"."""
    name = obj.key if isinstance(obj, NetworkPolicy) else obj.name
    return f"{_kind_of(obj)} {name}"


def record_key(tenant: str, obj: Object) -> bytes:
    if isinstance(obj, Namespace):
        return keys.namespace(tenant, obj.name)
    name = obj.key if isinstance(obj, NetworkPolicy) else obj.name
    return keys.policy(tenant, KIND_KEYS[type(obj).__name__], name)


def record_value(doc: Document) -> bytes:
    """What is stored for a checked object: the manifest as written, reduced to
    what policy reads (a NetworkPolicy gets its namespace)."""
    obj, raw = doc.obj, doc.raw
    if isinstance(obj, Namespace):
        return canonical({"labels": dict(obj.labels)})
    meta_in = raw.get("metadata") or {}
    meta: dict[str, Any] = {"name": obj.name}
    if isinstance(obj, NetworkPolicy):
        meta["namespace"] = obj.namespace
    if isinstance(meta_in, Mapping) and isinstance(meta_in.get("labels"), Mapping):
        meta["labels"] = dict(meta_in["labels"])
    return canonical(
        {
            "apiVersion": raw.get("apiVersion"),
            "kind": raw.get("kind"),
            "metadata": meta,
            "spec": raw.get("spec"),
        }
    )


def check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not _NAME_RE.fullmatch(tenant):
        raise ConfigError(
            "tenant", tenant, "a tenant name (letters, digits, '_', '.', '-'; up to 63)"
        )
    return tenant


def parse(
    source: str | bytes | os.PathLike[str] | list[Any], *, namespace: str = "default"
) -> list[Document]:
    """The checked objects of a manifest (text, a path, a directory, or a list
    of decoded objects): NetworkPolicy, AdminNetworkPolicy,
    BaselineAdminNetworkPolicy and Namespace. Raises ``ConfigError`` naming the
    document and the field of the first bad object; nothing else is returned."""
    check_namespace_name("namespace", namespace)
    docs = documents(source, namespace=namespace, extra={"Namespace": Namespace.from_dict})
    for d in docs:
        if len(record_value(d)) > RECORD_BYTES_MAX:
            raise ConfigError(d.where, object_name(d.obj), f"at most {RECORD_BYTES_MAX} bytes")
    return docs


def decode(tenant: str, key: bytes, value: bytes) -> Object:
    """A stored record, checked as ``parse`` checks a manifest; ``ConfigError``
    when it does not decode, breaks a rule, or contradicts its key."""
    if len(value) > RECORD_BYTES_MAX:
        raise ConfigError("value", f"{len(value)} bytes", f"at most {RECORD_BYTES_MAX} bytes")
    try:
        raw = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("value", "<record>", f"JSON ({exc})") from None
    if key.startswith(keys.NAMESPACES):
        name = keys.last(key)
        if not isinstance(raw, Mapping):
            raise ConfigError("value", raw, '{"labels": {...}}')
        labels = check_labels("labels", raw.get("labels") or {})
        check_namespace_name("key", name)
        return Namespace(name, labels)
    obj = _one(raw, "value", "default")
    want = record_key(tenant, obj)
    if want != key:
        raise ConfigError("key", key.decode(errors="replace"), f"{want.decode()} for this value")
    return obj


def set_hash(records: Mapping[bytes, bytes], tenant: str) -> str:
    """The digest of a tenant's accepted records (key -> value, policies and
    namespaces): equal for equal sets, whatever order they were read in."""
    h = hashlib.sha256()
    for prefix in (keys.policies(tenant), keys.namespaces(tenant)):
        for key in sorted(k for k in records if k.startswith(prefix)):
            h.update(key[len(keys.PREFIX) :])
            h.update(b"\0")
            h.update(records[key])
            h.update(b"\0")
    return h.hexdigest()[:16]


EMPTY_HASH = set_hash({}, "-")


# -- a tenant's set as the store holds it -------------------------------------


@dataclasses.dataclass
class TenantSet:
    """One tenant's records read from the store: the accepted ones (key ->
    (value, object, mod revision)), those refused (key -> why), the revision
    they were read at, the newest change among them, and the set's hash."""

    tenant: str
    records: dict[bytes, tuple[bytes, Object, int]]
    refused: dict[bytes, str]
    revision: int
    newest: int
    hash: str

    def objects(self) -> list[Object]:
        return [o for _, o, _ in self.records.values()]

    def manifests(self) -> list[dict[str, Any]]:
        """The policies as Kubernetes objects, then the namespaces (``kind: Namespace``)."""
        out: list[dict[str, Any]] = []
        for key in sorted(self.records):
            value, obj, _ = self.records[key]
            data = json.loads(value)
            if isinstance(obj, Namespace):
                meta: dict[str, Any] = {"name": obj.name}
                if obj.labels:
                    meta["labels"] = dict(obj.labels)
                out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
            else:
                out.append(data)
        return out


async def read(store: Store, tenant: str) -> TenantSet:
    """A tenant's policies and namespaces, checked as every agent checks them."""
    check_tenant(tenant)
    pol, rev1 = await store.get_prefix(keys.policies(tenant))
    nss, rev2 = await store.get_prefix(keys.namespaces(tenant))
    return _tenant_set(tenant, [*pol, *nss], max(rev1, rev2))


def _tenant_set(tenant: str, kvs: Iterable[KeyValue], revision: int) -> TenantSet:
    records: dict[bytes, tuple[bytes, Object, int]] = {}
    refused: dict[bytes, str] = {}
    newest = 0
    for kv in kvs:
        newest = max(newest, kv.mod_revision)
        try:
            records[kv.key] = (kv.value, decode(tenant, kv.key, kv.value), kv.mod_revision)
        except ConfigError as exc:
            refused[kv.key] = str(exc)
    h = set_hash({k: v for k, (v, _, _) in records.items()}, tenant)
    return TenantSet(tenant, records, refused, revision, newest, h)


async def tenants(store: Store) -> list[str]:
    """Every tenant that has a network, a policy or a namespace in the store."""
    out: set[str] = set()
    nets, _ = await store.get_prefix(keys.NETWORKS)
    for kv in nets:
        try:
            t = json.loads(kv.value).get("tenant")
        except (ValueError, AttributeError):
            continue
        if isinstance(t, str):
            out.add(t)
    for prefix in (keys.POLICIES, keys.NAMESPACES):
        kvs, _ = await store.get_prefix(prefix)
        for kv in kvs:
            t = keys.tenant_of(kv.key, prefix)
            if t:
                out.add(t)
    return sorted(out)


# -- writing -------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """What applying documents to a tenant's set does: the object names by what
    happens to them (created, configured, unchanged, pruned), the records to
    write and to delete, and the hash the set then has."""

    result: dict[str, list[str]]
    puts: dict[bytes, bytes]
    deletes: list[bytes]
    hash: str


def plan(have: TenantSet, docs: Iterable[Document], *, prune: bool = False) -> Plan:
    """What ``apply`` of ``docs`` does to the set ``have``; nothing is written
    (``--dry-run`` answers from it)."""
    tenant = have.tenant
    out: dict[str, list[str]] = {"created": [], "configured": [], "unchanged": [], "pruned": []}
    after = {k: v for k, (v, _, _) in have.records.items()}
    want: dict[bytes, bytes] = {}
    puts: dict[bytes, bytes] = {}
    for d in docs:
        key, value = record_key(tenant, d.obj), record_value(d)
        want[key] = value
        old = have.records.get(key)
        if old is not None and old[0] == value:
            out["unchanged"].append(object_name(d.obj))
        else:
            heading = "configured" if old is not None or key in have.refused else "created"
            out[heading].append(object_name(d.obj))
            puts[key] = value
        after[key] = value
    deletes: list[bytes] = []
    if prune:
        for key in sorted(set(have.records) | set(have.refused)):
            if key not in want:
                deletes.append(key)
                after.pop(key, None)
                obj = have.records.get(key)
                out["pruned"].append(object_name(obj[1]) if obj else key.decode(errors="replace"))
    return Plan(out, puts, deletes, set_hash(after, tenant))


async def apply(
    store: Store, tenant: str, docs: list[Document], *, prune: bool = False
) -> dict[str, list[str]]:
    """Write checked objects (``parse``) as the tenant's records: only those
    that differ from the store's are written. With ``prune``, the tenant's
    records not in ``docs`` are deleted (the file is the whole set). Returns
    the object names by what happened: created, configured, unchanged, pruned."""
    check_tenant(tenant)
    p = plan(await read(store, tenant), docs, prune=prune)
    for key, value in p.puts.items():
        await store.put(key, value)
    for key in p.deletes:
        await store.delete(key)
    return p.result


def kind_name(kind: str) -> str:
    """A kind as a user types it (``netpol``, ``anp``, ``NetworkPolicy``) -> its
    manifest kind; ConfigError naming ``kind`` otherwise."""
    got = KIND_ALIASES.get(kind.lower()) if isinstance(kind, str) else None
    if got is None:
        raise ConfigError(
            "kind",
            kind,
            "NetworkPolicy (netpol), AdminNetworkPolicy (anp), "
            "BaselineAdminNetworkPolicy (banp) or Namespace (ns)",
        )
    return got


def key_of(tenant: str, kind: str, name: str, namespace: str = "default") -> bytes:
    """The record key of (kind, name[, namespace]) as a user names it."""
    check_tenant(tenant)
    k = kind_name(kind)
    if k == "Namespace":
        check_namespace_name("name", name)
        return keys.namespace(tenant, name)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError("name", name, "the object's metadata.name")
    if k == "NetworkPolicy":
        check_namespace_name("namespace", namespace)
        return keys.policy(tenant, KIND_KEYS[k], f"{namespace}/{name}")
    return keys.policy(tenant, KIND_KEYS[k], name)


async def delete(store: Store, tenant: str, targets: Iterable[bytes]) -> list[str]:
    """Delete records by key; NotFoundError naming the first that is not there
    (before anything is deleted). Returns what was deleted, by name."""
    targets = list(targets)
    have = await read(store, tenant)
    for key in targets:
        if key not in have.records and key not in have.refused:
            raise NotFoundError(f"{_name_of_key(key)} is not in tenant {tenant}'s policies")
    out = []
    for key in targets:
        await store.delete(key)
        out.append(_name_of_key(key))
    return out


def _name_of_key(key: bytes) -> str:
    text = key.decode(errors="replace")
    for prefix in (keys.POLICIES, keys.NAMESPACES):
        p = prefix.decode()
        if text.startswith(p):
            rest = text[len(p) :].split("/", 1)[1] if "/" in text[len(p) :] else ""
            if prefix == keys.NAMESPACES:
                return f"Namespace {rest}"
            kind, _, name = rest.partition("/")
            return f"{KEY_KINDS.get(kind, kind)} {name}"
    return text


# -- what nodes realised ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Realised:
    """What one node has in force for one tenant: the set's hash, the store
    revision it was read at, when, on which networks and ports."""

    hash: str
    revision: int
    at: float  # time.time() of the apply
    networks: tuple[int, ...] = ()
    ports: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "revision": self.revision,
            "at": round(self.at, 3),
            "networks": list(self.networks),
            "ports": self.ports,
        }


def status_value(realised: Mapping[str, Realised], verify: Mapping[str, Any] | None) -> bytes:
    """The value of ``policy-status/<node>``."""
    return canonical(
        {
            "tenants": {t: r.to_dict() for t, r in sorted(realised.items())},
            "verify": dict(verify or {}),
        }
    )


async def status(store: Store, tenant: str | None = None) -> list[dict[str, Any]]:
    """One row per (node, tenant) that a node reports on: in sync with the
    store's set (equal hash) or not, how many revisions behind, the age of the
    node's report and what its verification probe found. A node hosting the
    tenant's networks without a report is listed as not in sync."""
    tenant_list = [tenant] if tenant is not None else await tenants(store)
    sets = {t: await read(store, t) for t in tenant_list}
    reports, _ = await store.get_prefix(keys.POLICY_STATUS)
    nodes, _ = await store.get_prefix(keys.NODES)
    nets, _ = await store.get_prefix(keys.NETWORKS)
    net_tenant: dict[int, str] = {}
    for kv in nets:
        try:
            d = json.loads(kv.value)
            net_tenant[int(d["vni"])] = str(d["tenant"])
        except (ValueError, KeyError, TypeError):
            continue
    hosts: dict[str, set[str]] = {}  # node -> tenants of the networks it hosts
    for kv in nodes:
        try:
            d = json.loads(kv.value)
            name = str(d["name"])
            hosts[name] = {net_tenant[v] for v in d.get("networks", ()) if v in net_tenant}
        except (ValueError, KeyError, TypeError):
            continue
    now = time.time()
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for kv in reports:
        node = keys.last(kv.key)
        try:
            d = json.loads(kv.value)
            realised = d.get("tenants", {})
            verify = d.get("verify", {})
        except (ValueError, AttributeError):
            continue
        for t, ts in sets.items():
            r = realised.get(t)
            if r is None and t not in hosts.get(node, set()):
                continue
            seen.add((node, t))
            rows.append(_row(node, ts, r, verify.get(t), now))
    for node, ts_of in sorted(hosts.items()):
        for t in sorted(ts_of):
            if t in sets and (node, t) not in seen and sets[t].records:
                rows.append(_row(node, sets[t], None, None, now))
    return sorted(rows, key=lambda r: (r["tenant"], r["node"]))


def _row(
    node: str, ts: TenantSet, r: Mapping[str, Any] | None, verify: Any, now: float
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node": node,
        "tenant": ts.tenant,
        "desired_hash": ts.hash,
        "desired_revision": ts.newest,
        "policies": sum(1 for k in ts.records if k.startswith(keys.POLICIES)),
        "refused": len(ts.refused),
    }
    if r is None:
        row.update(hash=None, revision=None, in_sync=False, behind=None, age=None)
        row["reason"] = "no report from the node (not running, or not reached the store)"
    else:
        in_sync = r.get("hash") == ts.hash
        rev = int(r.get("revision", 0))
        row.update(
            hash=r.get("hash"),
            revision=rev,
            in_sync=in_sync,
            behind=0 if in_sync else max(ts.newest - rev, 1),
            age=round(max(0.0, now - float(r.get("at", now))), 3),
            networks=r.get("networks", []),
            ports=r.get("ports", 0),
        )
    if isinstance(verify, Mapping):
        row["verify"] = dict(verify)
    return row
