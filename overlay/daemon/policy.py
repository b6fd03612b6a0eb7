"""overlayd's policy room: a tenant's policies through the local API, what they
decide for one connection, the data plane's policy drops, and what the
metrics read of policy.

Design notes.
- **The store is the truth.** ``policy_apply`` and ``policy_delete`` check
  manifests and write records through ``overlay.control.policies``; nothing
  here programs a table. Every agent (this node's too) watches the records
  and its policy reconciler programs its own ports, then publishes what it
  has in force (``policy-status/<node>``), which ``policy_status`` compares
  with the store. So an apply answers once the store has the set, and
  ``overlay policy status`` says when every node has it. With the memory
  store (``store.kind = "memory"``) the store is this daemon's own: the
  policies apply to this node only (each node of a static cluster needs its
  own apply); a shared etcd distributes them.
- **All or nothing.** A manifest is parsed and checked in full before
  anything is written (``policies.parse``); a refusal is a 400 naming the
  document and the field, and the store is untouched. ``manifest`` is always
  text here, never a path: the daemon reads no file a client names.
  ``dry_run`` answers what an apply would do (``overlay.control.policies.plan``) without writing.
- **Which tenant.** A request that names none means the one tenant of the
  networks this node hosts; with several, it is refused naming ``tenant``
  and listing them (the status and verify views default to every tenant).
- **Two answers for one connection.** ``policy_explain`` gives the verdict
  of the policies (``Network.explain``: which tier, policy and rule decide,
  per direction) and, when the node has it, that of the tables in force
  (``Network.probe``: the engine's classifier, a dry run), and says whether
  they agree at the ends this node holds. Only this node's tables can be
  probed; a remote end is judged by the policies alone.
- **Drops are reports, kept in a ring.** The room drains the engine's event
  queue on the loop (``Node.watch_events``, from ``start``) and keeps the
  last ``RING`` policy verdicts (``Node.policy_events``: denies and audited
  denies) with increasing sequence numbers; ``policy_drops?since=N`` answers
  those from N and the next number to ask for, so a follower never sees one
  twice and knows how many it missed. The engine reports each (port,
  direction, rule, verdict) at most once a second, so these (and the
  ``overlay_policy_drops_total`` counter made of them) count reports, not
  packets: the packet counts are the drop counters ``policy_denied_*``.
- **Metrics labels are policy names.** ``snapshot`` sums rule hits over
  the node's ports and drop reports per rule; their labels are the VNI,
  tenant, direction and the rule's tier, policy and index, bounded by the
  policy set, never an address or a port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from overlay.control import policies
from overlay.daemon.api import Unavailable
from overlay.daemon.parts import Parts
from overlay.daemon.rooms import Room, handles
from overlay.errors import ConfigError
from overlay.policy.load import Document

if TYPE_CHECKING:
    from overlay.control.reconcilers.policy import Policies
    from overlay.control.store import Store
    from overlay.node import Network, Node, PolicyEvent

RING = 4096  # policy events kept for ``policy_drops``
PROTOCOL_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
APPLY_KEYS = frozenset({"tenant", "manifest", "objects", "namespace", "prune", "dry_run"})
DELETE_KEYS = frozenset({"tenant", "kind", "name", "namespace", "manifest", "objects"})


# -- what the handlers and the CLI share --------------------------------------------


def verify_summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The verification probe's findings out of ``policies.status`` rows: one
    entry per (node, tenant) (``checked`` None: the node has not reported a
    round yet) and the total of disagreements (exact, though each node
    publishes only the first few of them)."""
    nodes = []
    total = 0
    for row in rows:
        v = row.get("verify")
        if not isinstance(v, Mapping):
            v = {}
        found = v.get("disagreements")
        found = list(found) if isinstance(found, list) else []
        count = v.get("count")
        count = int(count) if isinstance(count, int) else len(found)
        total += count
        nodes.append(
            {
                "node": row.get("node"),
                "tenant": row.get("tenant"),
                "checked": v.get("checked"),
                "count": count,
                "disagreements": found,
                "skipped": v.get("skipped", []),
                "at": v.get("at"),
            }
        )
    return {"nodes": nodes, "disagreements": total}


def _decision(d: Any) -> dict[str, Any] | None:
    return None if d is None else dataclasses.asdict(d)


def _probed_end(end: Any) -> dict[str, Any] | None:
    if end is None:
        return None
    verdict, ref = end
    return {"verdict": verdict, "tier": ref.tier, "policy": ref.policy, "rule": ref.rule}


# -- the room ----------------------------------------------------------------------


class PolicyRoom(Room):
    """The policy routes, the drop ring and the policy part of the metrics."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=RING)
        self.seq = 0  # the last sequence number given
        # (vni, tenant, direction, tier, policy, rule, verdict) -> reports
        self.drop_reports: dict[tuple[str, ...], int] = {}
        self._lock = asyncio.Lock()  # one writer of this daemon's policy records at a time
        self._watching: tuple[asyncio.AbstractEventLoop, Node] | None = None
        self._applies = 0  # the policy reconciler's applies when last looked at

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Drain the node's events on the running loop (once the node exists)."""
        node = self.parts.node
        if node is None or self._watching is not None:
            return
        loop = asyncio.get_running_loop()
        node.watch_events(loop, self._on_event)
        self._watching = (loop, node)

    def stop(self) -> None:
        """Stop draining (before the node is closed: its event descriptor goes)."""
        watching, self._watching = self._watching, None
        if watching is not None:
            loop, node = watching
            with contextlib.suppress(Exception):
                loop.remove_reader(node.event_fd)

    def _on_event(self, ev: Any) -> None:
        node = self.parts.node
        if node is None or getattr(ev, "kind", None) != "policy":
            return
        for pe in node.policy_events([ev]):
            self._record(pe)

    def _record(self, pe: PolicyEvent) -> None:
        node, agent = self.parts.node, self.parts.agent
        net = node.networks.get(pe.vni) if node is not None else None
        tenant = str(net.tenant) if net is not None else ""
        port = pe.port
        pod = None
        if port is not None and agent is not None:
            ep = agent.local.get((pe.vni, port.mac))
            pod = ep.name if ep is not None and ep.name else None
        self.seq += 1
        self.ring.append(
            {
                "seq": self.seq,
                "time": round(time.time(), 3),
                "verdict": pe.verdict,
                "direction": pe.direction,
                "vni": pe.vni,
                "tenant": tenant,
                "port": None
                if port is None
                else {"id": port.id, "ifname": port.ifname, "mac": port.mac},
                "pod": pod,
                "tier": pe.tier,
                "policy": pe.policy,
                "rule": pe.rule,
                "proto": pe.proto,
                "protocol": PROTOCOL_NAMES.get(pe.proto, str(pe.proto)),
                "src": pe.src,
                "dst": pe.dst,
                "sport": pe.sport,
                "dport": pe.dport,
            }
        )
        key = (
            str(pe.vni),
            tenant,
            pe.direction,
            pe.tier,
            pe.policy or "",
            "" if pe.rule is None else str(pe.rule),
            pe.verdict,
        )
        self.drop_reports[key] = self.drop_reports.get(key, 0) + 1

    # -- what the handlers share ---------------------------------------------------

    def _store(self) -> Store:
        store = self.parts.store
        if store is None:
            raise Unavailable("overlayd is starting (no store yet); try again shortly")
        return store

    def _hosted_tenants(self) -> list[str]:
        agent = self.parts.agent
        if agent is None:
            return []
        found = {spec.tenant for v in agent.spec.networks if (spec := agent.specs.get(v))}
        return sorted(found)

    def tenant(self, given: Any) -> str:
        """``given``, checked; or, when None, the one tenant of the hosted networks."""
        if given is not None:
            return policies.check_tenant(given)
        hosted = self._hosted_tenants()
        if len(hosted) == 1:
            return hosted[0]
        if not hosted:
            raise ConfigError(
                "tenant", None, "a tenant name: this node hosts no defined network to take it from"
            )
        raise ConfigError(
            "tenant", None, f"one of {', '.join(hosted)}: this node hosts networks of several"
        )

    @staticmethod
    def _body(body: Any, known: frozenset[str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ConfigError("body", body, "a JSON object")
        for k in body:
            if k not in known:
                raise ConfigError(str(k)[:64], body[k], f"no such field; known: {sorted(known)}")
        return body

    @staticmethod
    def _flag(body: Mapping[str, Any], key: str) -> bool:
        value = body.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value

    @staticmethod
    def _docs(body: Mapping[str, Any]) -> list[Document]:
        """The checked objects of ``manifest`` (text) or ``objects`` (a list)."""
        namespace = body.get("namespace", "default")
        if not isinstance(namespace, str):
            raise ConfigError("namespace", namespace, "a namespace name")
        has_text, has_list = "manifest" in body, "objects" in body
        if has_text == has_list:
            raise ConfigError(
                "manifest",
                None,
                'exactly one of "manifest" (YAML or JSON text) and "objects" (a list)',
            )
        if has_text:
            text = body["manifest"]
            if not isinstance(text, str):
                raise ConfigError("manifest", text, "YAML or JSON text")
            # Bytes: always text, never a path (see the module's notes).
            return policies.parse(text.encode(), namespace=namespace)
        objects = body["objects"]
        if not isinstance(objects, list):
            raise ConfigError("objects", objects, "a list of Kubernetes objects")
        return policies.parse(objects, namespace=namespace)

    # -- the routes ----------------------------------------------------------------

    @handles("policy_apply")
    async def apply(self, body: Any) -> dict[str, Any]:
        req = self._body(body, APPLY_KEYS)
        tenant = self.tenant(req.get("tenant"))
        prune, dry_run = self._flag(req, "prune"), self._flag(req, "dry_run")
        docs = self._docs(req)
        store = self._store()
        async with self._lock:
            if dry_run:
                p = policies.plan(await policies.read(store, tenant), docs, prune=prune)
                result, digest = p.result, p.hash
            else:
                result = await policies.apply(store, tenant, docs, prune=prune)
                digest = (await policies.read(store, tenant)).hash
        return {**result, "tenant": tenant, "hash": digest, "dry_run": dry_run}

    @handles("policy_get")
    async def get(self, tenant: str | None = None) -> dict[str, Any]:
        t = self.tenant(tenant)
        ts = await policies.read(self._store(), t)
        return {
            "tenant": t,
            "hash": ts.hash,
            "revision": ts.newest,
            "items": ts.manifests(),
            "refused": [
                {"key": k.decode(errors="replace"), "why": why}
                for k, why in sorted(ts.refused.items())
            ],
        }

    @handles("policy_delete")
    async def delete(self, body: Any) -> dict[str, Any]:
        req = self._body(body, DELETE_KEYS)
        tenant = self.tenant(req.get("tenant"))
        if "manifest" in req or "objects" in req:
            for k in ("kind", "name"):
                if k in req:
                    raise ConfigError(k, req[k], "either kind and name, or a manifest: not both")
            targets = [policies.record_key(tenant, d.obj) for d in self._docs(req)]
        else:
            kind, name = req.get("kind"), req.get("name")
            if kind is None or name is None:
                raise ConfigError(
                    "kind" if kind is None else "name",
                    None,
                    'the object to delete: "kind" and "name" (and "namespace" for a '
                    'NetworkPolicy), or "manifest"/"objects"',
                )
            if not isinstance(kind, str):
                raise ConfigError("kind", kind, "a kind: NetworkPolicy, anp, banp, ns, ...")
            namespace = req.get("namespace", "default")
            if not isinstance(namespace, str):
                raise ConfigError("namespace", namespace, "a namespace name")
            targets = [policies.key_of(tenant, kind, name, namespace)]
        store = self._store()
        async with self._lock:
            deleted = await policies.delete(store, tenant, targets)
            digest = (await policies.read(store, tenant)).hash
        return {"tenant": tenant, "deleted": deleted, "hash": digest}

    @handles("policy_explain")
    def explain(
        self,
        src: str | None = None,
        dst: str | None = None,
        port: int | None = None,
        protocol: str | None = None,
        vni: int | None = None,
    ) -> dict[str, Any]:
        for field, value, what in (
            ("src", src, "the address that opens the connection"),
            ("dst", dst, "the address it goes to"),
            ("port", port, "the destination port (0 for ICMP)"),
        ):
            if value is None:
                raise ConfigError(field, None, what)
        assert src is not None and dst is not None and port is not None
        proto = protocol or "TCP"
        net = self._network_of(src, dst, vni)
        v = net.explain(src, dst, port, proto)
        out: dict[str, Any] = {
            "vni": net.vni,
            "tenant": str(net.tenant),
            "src": src,
            "dst": dst,
            "port": port,
            "protocol": proto,
            "allowed": v.allowed,
            "tier": v.tier,
            "policy": v.policy,
            "rule": v.rule,
            "direction": v.direction,
            "egress": _decision(v.egress),
            "ingress": _decision(v.ingress),
            "dataplane": None,
            "agree": None,
        }
        probe = getattr(net, "probe", None)
        if probe is None:
            return out
        p = probe(src, dst, port, proto)
        out["dataplane"] = {
            "allowed": p.allowed,
            "egress": _probed_end(p.egress),
            "ingress": _probed_end(p.ingress),
        }
        # At each end this node holds, do the tables say what the policies say?
        # (A deny that audit forwards is still a deny of the policies.)
        compared = []
        for end, decided in ((p.egress, v.egress), (p.ingress, v.ingress)):
            if end is None or decided is None:
                continue
            compared.append((end[0] not in ("deny", "audit")) == decided.allowed)
        out["agree"] = all(compared) if compared else None
        return out

    def _network_of(self, src: str, dst: str, vni: int | None) -> Network:
        """The hosted network that has ``src`` or ``dst`` (or ``vni``, checked)."""
        node, agent = self.parts.node, self.parts.agent
        if node is None or agent is None:
            raise Unavailable("overlayd is starting; try again shortly")
        hosted = [v for v in agent.spec.networks if v in node.networks]
        if vni is not None:
            if vni not in hosted:
                raise ConfigError("vni", vni, f"a network this node hosts: {hosted or 'none'}")
            return node.networks[vni]
        wanted = {ipaddress.ip_address(src), ipaddress.ip_address(dst)}
        found = []
        for v in hosted:
            addrs = {
                ipaddress.ip_interface(a).ip
                for ep in agent.endpoints.get(v, {}).values()
                for a in ep.ips
            }
            addrs |= {i.ip for p in node.networks[v].ports for i in p.ips}
            if addrs & wanted:
                found.append(v)
        if len(found) == 1:
            return node.networks[found[0]]
        if not found:
            raise ConfigError(
                "vni", None, f"the network of src or dst: no hosted network ({hosted}) has either"
            )
        raise ConfigError("vni", None, f"one of {found}: each has src or dst")

    @handles("policy_drops")
    def drops(self, since: int | None = None) -> dict[str, Any]:
        start = since or 0
        first = self.ring[0]["seq"] if self.ring else self.seq + 1
        events = [e for e in self.ring if e["seq"] >= start]
        return {
            "next": self.seq + 1,
            # Reports from ``since`` on that the ring no longer holds.
            "missed": max(0, first - max(start, 1)) if start <= self.seq else 0,
            "events": events,
        }

    @handles("policy_status")
    async def status(self, tenant: str | None = None) -> dict[str, Any]:
        return {"rows": await policies.status(self._store(), tenant)}

    @handles("policy_verify")
    async def verify(self, tenant: str | None = None) -> dict[str, Any]:
        return verify_summary(await policies.status(self._store(), tenant))

    @handles("policy_repair")
    async def repair(self) -> dict[str, Any]:
        """Every policy table of this node set again from what the policies
        compile to (a table changed behind the control plane's back is put
        right; nothing else changes), then one verification round, published
        like the periodic ones and answered."""
        from overlay.control.verify import PolicyVerifier

        agent, node = self.parts.agent, self.parts.node
        if agent is None or node is None:
            raise Unavailable("starting: no node yet")
        tables = 0
        async with self.parts.lock:
            for vni in agent.spec.networks:
                net = node.networks.get(vni)
                if net is not None and net.policy_active:
                    tables += net.update_policy(force=True)
        found = PolicyVerifier(agent).run_once()
        await agent.report_policy(verify=found)
        return {"node": self.parts.node_name, "tables": tables, "verify": found}

    # -- what the metrics read -------------------------------------------------------

    def _reconciler(self) -> Policies | None:
        from overlay.control.reconcilers import Policies

        agent = self.parts.agent
        if agent is None:
            return None
        return next((r for r in agent.reconcilers if isinstance(r, Policies)), None)

    def apply_seconds(self) -> float | None:
        """The seconds the policy reconciler's last batch of compiles took, when it
        compiled since the last call (the agent's reconcile hook asks after every
        batch; ``overlay_policy_apply_seconds``); None when it did not."""
        pol = self._reconciler()
        if pol is None or pol.applies == self._applies:
            return None
        self._applies = pol.applies
        return float(pol.last_apply_s)

    def snapshot(self) -> dict[str, Any]:
        """Policy in the metrics snapshot: rule hits summed over the node's ports,
        drop reports per rule, conntrack sessions, each tenant's set in force."""
        node, agent = self.parts.node, self.parts.agent
        hits: dict[tuple[str, ...], int] = {}
        sessions = None
        if node is not None:
            for vni, net in node.networks.items():
                for port in net.ports:
                    if port.gateway or port.uplink:
                        continue  # the node's own ports have no tables
                    for direction in ("ingress", "egress"):
                        try:
                            counted = port.policy_hits(direction)
                        except Exception:  # a port removed meanwhile
                            continue
                        for ref, n in counted.items():
                            key = (
                                str(vni),
                                str(net.tenant),
                                direction,
                                ref.tier,
                                ref.policy or "",
                                "" if ref.rule is None else str(ref.rule),
                            )
                            hits[key] = hits.get(key, 0) + n
            with contextlib.suppress(Exception):
                sessions = int(node.engine.conntrack_sessions())
        realised = []
        if agent is not None:
            for t, r in sorted(agent.policy_report.items()):
                realised.append({"tenant": t, "hash": r.hash, "revision": r.revision})
        label = ("vni", "tenant", "direction", "tier", "policy", "rule")
        return {
            "hits": [{**dict(zip(label, k, strict=True)), "value": n} for k, n in hits.items()],
            "drops": [
                {**dict(zip((*label, "verdict"), k, strict=True)), "value": n}
                for k, n in self.drop_reports.items()
            ],
            "conntrack_sessions": sessions,
            "realised": realised,
        }


__all__ = ["RING", "PolicyRoom", "verify_summary"]
