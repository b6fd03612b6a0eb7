"""The read-only answers of overlayd: status, health, networks, endpoints, peers,
FDB, counters, and the snapshot the metrics read.

Design notes. Views answer from memory (the agent's view of the store, the
node's tables, the prober's results, the attach room's records) on the
daemon's loop, at once and without locks: nothing here awaits, so an answer
is one consistent moment. They never fail for want of a part: before the
node or the agent is up, a view answers empty (the status says why it is not
ready). ``snapshot`` is what ``metrics.Metrics`` reads at every scrape, built
from the same views so that the API and the metrics never disagree. A new
resource (gateways, routes, policies) adds its views in its own room, with
its own lines in the route table.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from typing import Any

from overlay import __version__
from overlay.daemon.attach import Attachments
from overlay.daemon.bgp import Bgp
from overlay.daemon.gateways import Gateways
from overlay.daemon.health import HEALTH_TENANT
from overlay.daemon.parts import Parts
from overlay.daemon.policy import PolicyRoom
from overlay.daemon.rooms import Room, handles
from overlay.daemon.routing import Routing
from overlay.daemon.underlay import Uplinks
from overlay.gateway import is_gateway
from overlay.model import Endpoint


class Views(Room):
    """What the API's GET routes and the metrics answer."""

    def __init__(
        self,
        parts: Parts,
        attachments: Attachments,
        gateways: Gateways,
        routing: Routing | None = None,
        bgp: Bgp | None = None,
        uplinks: Uplinks | None = None,
        policy: PolicyRoom | None = None,
    ) -> None:
        self.parts = parts
        self.attachments = attachments
        self.gateways = gateways
        self.routing = routing
        self.bgp = bgp
        self.uplinks = uplinks
        self.policy = policy  # the policy room: what the metrics read of policy

    def _peer_results(self) -> dict[str, dict[str, Any]]:
        prober = self.parts.prober
        if prober is None:
            return {}
        return {r["name"]: r for r in prober.results()}

    def _local_remote(self, endpoints: Iterable[Endpoint]) -> tuple[int, int]:
        """How many of ``endpoints`` are this node's pods, and how many other nodes'
        (gateways are not pods: ``networks`` shows them)."""
        local = remote = 0
        for ep in endpoints:
            if is_gateway(ep.labels):
                continue
            if ep.node == self.parts.node_name:
                local += 1
            else:
                remote += 1
        return local, remote

    @handles("status")
    def status(self) -> dict[str, Any]:
        p = self.parts
        c, agent, node = p.config, p.agent, p.node
        peers = self.peers()
        return {
            "node": c.node.name,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - p.started, 3),
            "ready": p.serving(),
            "reason": p.not_serving_reason(),
            "underlay": str(node.underlay) if node else None,
            "encap": c.node.encap,
            "port": node.port if node else c.node.port,
            "mtu": c.node.mtu,
            "store": {
                "kind": c.store.kind,
                "endpoints": list(c.store.endpoints),
                "connected": p.store_connected,
                "error": p.store_error,
                "rejected_records": len(agent.claims.rejected) if agent else 0,
            },
            "networks": len(agent.spec.networks) if agent else 0,
            "attachments": len(self.attachments.attached),
            "endpoints": sum(len(e) for e in agent.endpoints.values()) if agent else 0,
            "peers": len(peers),
            "peers_reachable": sum(1 for q in peers if q.get("reachable")),
            "reloads": p.reloads,
            # The BGP speaker of [bgp] (None without): sessions, routes learned/announced.
            "bgp": self.bgp.view() if self.bgp else None,
        }

    @handles("networks")
    def networks(self) -> list[dict[str, Any]]:
        agent, node = self.parts.agent, self.parts.node
        if agent is None or node is None:
            return []
        out = []
        for vni in agent.spec.networks:
            spec = agent.specs.get(vni)
            net = node.networks.get(vni)
            local, remote = self._local_remote(agent.endpoints.get(vni, {}).values())
            out.append(
                {
                    "vni": vni,
                    "tenant": spec.tenant if spec else None,
                    "cidr": spec.cidr if spec else None,
                    "mode": spec.mode if spec else None,
                    # the tunnel's encapsulation (and port) where the network has one
                    "encap": net.encap.name.lower()
                    if net is not None and spec and spec.mode in ("overlay", "auto")
                    else None,
                    "learning": spec.learning if spec else None,
                    "gateway": self.gateways.view(vni),
                    # An underlay network's way onto the segment: interface, MAC and
                    # counters (or why it is missing); None in other modes.
                    "uplink": self.uplinks.view(vni) if self.uplinks else None,
                    "router": (spec.router or None) if spec else None,
                    "subnet": agent.subnets.get(vni),
                    "pod_mtu": node.pod_mtu(net) if net else None,
                    "vteps": sorted(str(v) for v in net.vteps) if net else [],
                    "local_endpoints": local,
                    "remote_endpoints": remote,
                    "defined": spec is not None,
                }
            )
        return out

    @handles("endpoints")
    def endpoints(self, vni: int | None = None) -> list[dict[str, Any]]:
        agent = self.parts.agent
        if agent is None:
            return []
        by_mac = self.attachments.by_mac()
        out = []
        for v, eps in sorted(agent.endpoints.items()):
            if vni is not None and v != vni:
                continue
            for ep in sorted(eps.values(), key=lambda e: e.mac):
                if is_gateway(ep.labels):
                    continue  # a node's gateway: see networks
                d = dataclasses.asdict(ep)
                d["local"] = ep.node == self.parts.node_name
                rec = by_mac.get((v, ep.mac))
                if rec is not None:
                    d.update(container_id=rec.container_id, ifname=rec.ifname, netns=rec.netns)
                out.append(d)
        return out

    @handles("peers")
    def peers(self) -> list[dict[str, Any]]:
        agent, node = self.parts.agent, self.parts.node
        if agent is None:
            return []
        health = self._peer_results()
        hosted = set(agent.spec.networks)
        out = []
        for n in sorted(agent.nodes.values(), key=lambda n: n.name):
            h = health.get(n.name, {})
            out.append(
                {
                    "name": n.name,
                    "underlay": n.underlay,
                    "port": n.port or (node.port if node else 0),
                    "networks": sorted(set(n.networks) & hosted),
                    "reachable": h.get("reachable"),
                    "rtt_ms": h.get("rtt_ms"),
                    "rtt_avg_ms": h.get("rtt_avg_ms"),
                    "last_reply_age_s": h.get("last_reply_age_s"),
                    "probes_sent": h.get("sent"),
                    "probes_received": h.get("received"),
                    # Per routed or auto network: direct, tunnel or needs-bgp, and why.
                    "paths": self.routing.peer_paths(n.name) if self.routing else [],
                }
            )
        return out

    @handles("fdb")
    def fdb(self, vni: int | None = None) -> list[dict[str, Any]]:
        node = self.parts.node
        if node is None:
            return []
        now = time.monotonic_ns()
        out = []
        for e in node.fdb():
            if vni is not None and e.vni != vni:
                continue
            d = dataclasses.asdict(e)
            d["age_s"] = round(max(0, now - e.updated_ns) / 1e9, 3) if e.updated_ns else None
            out.append(d)
        return sorted(out, key=lambda d: (d["vni"], d["mac"]))

    @handles("counters")
    def counters(self) -> dict[str, Any]:
        node = self.parts.node
        return node.counters() if node else {}

    @handles("health")
    def health(self) -> dict[str, Any]:
        p = self.parts
        return {
            "ready": p.serving(),
            "store_connected": p.store_connected,
            "store_error": p.store_error,
            "probing": p.prober is not None,
            "peers": self.peers(),
        }

    def snapshot(self) -> dict[str, Any]:
        """What the metrics collector reads."""
        p = self.parts
        agent, node = p.agent, p.node
        eps = []
        for v, group in agent.endpoints.items() if agent else []:
            local, remote = self._local_remote(group.values())
            eps.append({"vni": v, "local": local, "remote": remote})
        return {
            "node": p.node_name,
            "counters": node.counters() if node else {},
            "networks": [
                {"vni": n["vni"], "tenant": n["tenant"], "mode": n["mode"]} for n in self.networks()
            ]
            + (
                [{"vni": p.config.health.vni, "tenant": HEALTH_TENANT}]
                if p.prober is not None
                else []
            ),
            "endpoints": eps,
            "peers": [
                {
                    "name": q["name"],
                    "underlay": q["underlay"],
                    "reachable": q["reachable"],
                    "rtt_ms": q["rtt_ms"],
                    "paths": q["paths"],
                }
                for q in self.peers()
            ],
            "store": {"kind": p.config.store.kind, "connected": p.store_connected},
            # Store records the agent refuses (overlay.control.claims), by reason.
            "store_rejected": agent.rejected_counts() if agent else None,
            "bgp": self.bgp.view() if self.bgp else None,
            # Rule hits, drop reports per rule, conntrack, sets in force (PolicyRoom).
            "policy": self.policy.snapshot() if self.policy else None,
        }
