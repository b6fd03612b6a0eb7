"""Prometheus metrics of overlayd, read from one snapshot of the daemon per scrape.

Design notes
------------
- **Pull, don't mirror.** The data plane already counts everything (per
  engine, per network, per port; drops by reason). Copying those counters
  into client-library objects would need a timer and would lag; instead a
  custom collector asks the daemon for a ``snapshot()`` at scrape time and
  turns it into metric families. Only what the daemon itself measures (how
  long a reconcile takes, and a policy compile-and-apply) lives in
  client-library objects, Histograms.
- **One registry of our own.** ``Metrics.registry`` is a private
  ``CollectorRegistry``, so several daemons (or tests) in one process never
  share or collide, and nothing of the process-global default registry
  (process or platform collectors) is exported by accident.
- **Bounded labels.** No label comes from traffic: networks are labelled by
  VNI and tenant, ports by VNI, interface name and engine port id (pods'
  interfaces are all called ``eth0`` once moved into their namespaces, so the
  id keeps the series apart), peers by name, drops by their reason from
  ``native/counters.def``. Engine totals are one family per counter
  (``overlay_node_<name>_total``), since they mix packets, bytes and events and
  a ``sum()`` across them would mean nothing.
- **Where the scrape runs.** ``serve()`` answers scrapes on the asyncio loop,
  so ``snapshot()`` runs on the loop's thread, next to the state it reads:
  no locks needed.
- **A failing snapshot is not fatal.** It is logged and counted
  (``overlay_snapshot_errors_total``); the scrape still answers with the
  metrics that do not depend on it.

The snapshot, as the daemon provides it (every key optional)::

    {"node": "node-a",
     "counters": Node.counters(),     # offloads, node, drops, networks, ports
     "networks": [{"vni": 100, "tenant": "blue", "mode": "overlay"}],
     "endpoints": [{"vni": 100, "local": 3, "remote": 7}],
     "peers": [{"name": "node-b", "underlay": "198.18.0.2",
                "reachable": True, "rtt_ms": 0.4,       # None: not known
                "paths": [{"vni": 100, "path": "direct"}]}],  # routed/auto networks
     "store": {"kind": "etcd", "connected": True},
     "store_rejected": {"total": {"mac_conflict": 3, ...},      # every reason,
                        "current": {"mac_conflict": 1, ...}},   # Agent.rejected_counts()
     "bgp": {"running": True, "peers": [{"address": "198.18.0.254", "up": True,
             "routes_learned": 3, "routes_announced": 1}]},    # None: no [bgp]
     "policy": {                                       # overlay.daemon.policy.PolicyRoom
         "hits": [{"vni": "100", "tenant": "blue", "direction": "ingress",
                   "tier": "networkpolicy", "policy": "x/web", "rule": "0", "value": 7}],
         "drops": [{..., "verdict": "deny", "value": 2}],  # the same labels and verdict
         "conntrack_sessions": 12,                      # None: not known
         "realised": [{"tenant": "blue", "hash": "3f2a...", "revision": 42}]}}

Policy. Rule hits are the connections each rule decided, summed over the
node's ports (a port that goes takes its hits along, as a restarted process
would: Prometheus' ``rate`` treats it as a reset); drops are the data plane's
policy reports per rule (the engine reports each port, direction, rule and
verdict at most once a second, so they count reports, not packets: the
packets are ``overlay_drops_total{reason="policy_denied_*"}``). Labels are
policy names and rule indexes, bounded by the policy set. Audited denies
(``policy_audit``) and conntrack evictions (``conntrack_evicted``) are engine
counters, exported with the others as ``overlay_node_<name>_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from overlay.daemon.config import parse_address
from overlay.errors import ConfigError

try:  # the engine's help texts; the collector works on plain dicts without them
    from overlay.bindings import COUNTER_HELP
except ImportError:  # pragma: no cover - the native module is not built
    COUNTER_HELP = {}

log = logging.getLogger("overlay.metrics")

Snapshot = Callable[[], Mapping[str, Any]]

RECONCILE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
POLICY_APPLY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip
_FIELD = "metrics.address"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
_REQUEST_TIMEOUT = 10.0  # seconds a scraper may take to send its request
_HEADERS_MAX = 100


def _bind_error(address: str, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        why = "is in use: choose another port, or stop the process listening there"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "is not an address of this machine: use one of its addresses, like 127.0.0.1"
    elif exc.errno == errno.EACCES:
        why = "needs privileges to bind: use a port above 1023"
    else:
        why = f"cannot be bound ({exc.strerror or exc}): check the host and port"
    return ConfigError(_FIELD, address, why + '; or set metrics.address = "" to turn metrics off')


def _metric_name(name: str) -> str:
    return _NAME_BAD.sub("_", name)


def _num(value: Any) -> float:
    return float(value) if value is not None else 0.0


class SnapshotCollector(Collector):
    """Turns the daemon's snapshot into metric families at every scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.errors = 0  # snapshots that failed

    def collect(self) -> Iterable[Metric]:
        try:
            families = list(self._families(self.snapshot()))
        except Exception:  # a scrape never fails because of one bad snapshot
            log.warning("metrics: the daemon's snapshot failed", exc_info=True)
            self.errors += 1
            families = []
        errors = CounterMetricFamily(
            "overlay_snapshot_errors", "scrapes whose daemon snapshot failed (logged)"
        )
        errors.add_metric([], self.errors)
        return [*families, errors]

    def _families(self, snap: Mapping[str, Any]) -> Iterator[Metric]:
        counters: Mapping[str, Any] = snap.get("counters") or {}
        tenants = {int(n["vni"]): str(n.get("tenant", "")) for n in snap.get("networks") or ()}

        node = snap.get("node")
        if node is not None:
            info = GaugeMetricFamily("overlay_node_info", "this node (value 1)", labels=["node"])
            info.add_metric([str(node)], 1)
            yield info

        offloads = counters.get("offloads") or {}
        if offloads:
            off = GaugeMetricFamily(
                "overlay_offload_active",
                "1 when the offload is in use (asked for and supported by the kernel)",
                labels=["offload"],
            )
            for name, on in sorted(offloads.items()):
                off.add_metric([str(name)], 1 if on else 0)
            yield off

        for name, value in sorted((counters.get("node") or {}).items()):
            help_text = COUNTER_HELP.get(name, f"engine counter {name}")
            fam = CounterMetricFamily(f"overlay_node_{_metric_name(name)}", help_text)
            fam.add_metric([], _num(value))
            yield fam

        drops = counters.get("drops") or {}
        if drops:
            fam = CounterMetricFamily(
                "overlay_drops",
                "packets and frames the data plane dropped, by reason (native/counters.def)",
                labels=["reason"],
            )
            for reason, value in sorted(drops.items()):
                fam.add_metric([str(reason)], _num(value))
            yield fam

        yield from self._object_families(
            "network",
            "the network, by direction: rx read from its ports, tx written to them, "
            "encap sent to remote VTEPs, decap received from them",
            ["vni", "tenant"],
            (
                ([str(vni), tenants.get(int(vni), "")], c)
                for vni, c in sorted((counters.get("networks") or {}).items())
            ),
        )
        yield from self._object_families(
            "port",
            "the port, by direction: rx read from the pod, tx written to it, "
            "encap sent from it to remote VTEPs",
            ["vni", "ifname", "port"],
            (
                ([str(p.get("vni", "")), str(p.get("ifname", "")), str(pid)], p)
                for pid, p in sorted((counters.get("ports") or {}).items())
            ),
        )

        networks = GaugeMetricFamily("overlay_networks", "networks hosted on this node")
        networks.add_metric([], len(counters.get("networks") or tenants))
        yield networks
        modes = [n for n in snap.get("networks") or () if n.get("mode")]
        if modes:
            mode = GaugeMetricFamily(
                "overlay_network_mode",
                "each defined network's mode (overlay, routed, auto, underlay; value 1)",
                labels=["vni", "tenant", "mode"],
            )
            for n in sorted(modes, key=lambda n: int(n["vni"])):
                mode.add_metric([str(n["vni"]), str(n.get("tenant", "")), str(n["mode"])], 1)
            yield mode

        endpoints = snap.get("endpoints")
        if endpoints is not None:
            eps = GaugeMetricFamily(
                "overlay_endpoints",
                "endpoints (pods) per network, on this node (local) or elsewhere (remote)",
                labels=["vni", "location"],
            )
            for ep in sorted(endpoints, key=lambda e: int(e["vni"])):
                for location in ("local", "remote"):
                    eps.add_metric([str(ep["vni"]), location], _num(ep.get(location, 0)))
            yield eps

        peers = snap.get("peers")
        if peers is not None:
            yield from self._peer_families(peers)

        store = snap.get("store")
        if store is not None:
            conn = GaugeMetricFamily(
                "overlay_store_connected",
                "1 while the control-plane store is reachable",
                labels=["kind"],
            )
            conn.add_metric([str(store.get("kind", ""))], 1 if store.get("connected") else 0)
            yield conn

        rejected = snap.get("store_rejected")
        if rejected is not None:
            # Reasons are overlay.control.claims.REASONS: a fixed, bounded label set.
            total = CounterMetricFamily(
                "overlay_store_records_rejected",
                "store records the agent refused (skipped, logged once), by reason",
                labels=["reason"],
            )
            for reason, value in sorted((rejected.get("total") or {}).items()):
                total.add_metric([str(reason)], _num(value))
            now = GaugeMetricFamily(
                "overlay_store_rejected_records",
                "store records refused at present (not programmed), by reason",
                labels=["reason"],
            )
            for reason, value in sorted((rejected.get("current") or {}).items()):
                now.add_metric([str(reason)], _num(value))
            yield from (total, now)

        bgp = snap.get("bgp")
        if bgp is not None:
            yield from self._bgp_families(bgp)

        policy = snap.get("policy")
        if policy is not None:
            yield from self._policy_families(policy)

    @staticmethod
    def _object_families(
        kind: str,
        what: str,  # help text: "<frames of> the network, by direction: ..."
        labels: list[str],
        objects: Iterable[tuple[list[str], Mapping[str, Any]]],
    ) -> Iterator[Metric]:
        """packets/bytes by direction and drops, for networks or ports.

        The engine's per-object counters are ``<direction>_packets``,
        ``<direction>_bytes`` and ``drops``; directions are ``rx`` (read from
        the object's ports), ``tx`` (written to them), ``encap`` (sent to
        remote VTEPs) and ``decap`` (received from them).
        """
        by_dir = labels + ["direction"]
        packets = CounterMetricFamily(f"overlay_{kind}_packets", f"frames of {what}", labels=by_dir)
        octets = CounterMetricFamily(
            f"overlay_{kind}_bytes", f"frame bytes of {what}", labels=by_dir
        )
        drops = CounterMetricFamily(
            f"overlay_{kind}_drops", f"frames dropped in the {kind}", labels=labels
        )
        for values, c in objects:
            for name, value in c.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue  # ifname, mac, netns of a port
                if name.endswith("_packets"):
                    packets.add_metric(values + [name[: -len("_packets")]], float(value))
                elif name.endswith("_bytes"):
                    octets.add_metric(values + [name[: -len("_bytes")]], float(value))
                elif name == "drops":
                    drops.add_metric(values, float(value))
        yield from (packets, octets, drops)

    @staticmethod
    def _policy_families(policy: Mapping[str, Any]) -> Iterator[Metric]:
        """Rule hits and drop reports per rule, conntrack sessions, the sets in force."""
        rule = ["vni", "tenant", "direction", "tier", "policy", "rule"]
        hits = CounterMetricFamily(
            "overlay_policy_rule_hits",
            "connections a policy rule decided, summed over this node's ports (tier: "
            "node, admin, networkpolicy, baseline, isolation, default, pending; rule: "
            "its index in the policy's list for the direction, empty for implicit verdicts)",
            labels=rule,
        )
        for h in policy.get("hits") or ():
            hits.add_metric([str(h.get(k, "")) for k in rule], _num(h.get("value")))
        drops = CounterMetricFamily(
            "overlay_policy_drops",
            "policy verdict reports of the data plane per rule: deny (dropped) or audit "
            "(would be dropped; forwarded). Each port, direction, rule and verdict is "
            "reported at most once a second: these count reports, not packets",
            labels=[*rule, "verdict"],
        )
        for d in policy.get("drops") or ():
            drops.add_metric([str(d.get(k, "")) for k in (*rule, "verdict")], _num(d.get("value")))
        yield from (hits, drops)
        if policy.get("conntrack_sessions") is not None:
            sessions = GaugeMetricFamily(
                "overlay_conntrack_sessions",
                "sessions held by the workers' connection tracking tables",
            )
            sessions.add_metric([], _num(policy["conntrack_sessions"]))
            yield sessions
        revision = GaugeMetricFamily(
            "overlay_policy_realised_revision",
            "the store revision of the tenant's policy set this node has in force",
            labels=["tenant"],
        )
        in_force = GaugeMetricFamily(
            "overlay_policy_in_force",
            "1 for the hash of the tenant's policy set this node has in force "
            "(equal to overlay policy status' desired hash when in sync)",
            labels=["tenant", "hash"],
        )
        for r in policy.get("realised") or ():
            revision.add_metric([str(r["tenant"])], _num(r.get("revision")))
            in_force.add_metric([str(r["tenant"]), str(r.get("hash", ""))], 1)
        yield from (revision, in_force)

    @staticmethod
    def _bgp_families(bgp: Mapping[str, Any]) -> Iterator[Metric]:
        """The BGP speaker's sessions (one per configured router: a bounded label set)."""
        up = GaugeMetricFamily(
            "overlay_bgp_session_up",
            "1 while the BGP session with the router is established",
            labels=["peer"],
        )
        routes = GaugeMetricFamily(
            "overlay_bgp_routes",
            "routes over the BGP session: learned from the router (after the import "
            "filter) and announced to it",
            labels=["peer", "direction"],
        )
        for p in sorted(bgp.get("peers") or (), key=lambda p: str(p["address"])):
            peer = str(p["address"])
            up.add_metric([peer], 1 if p.get("up") else 0)
            routes.add_metric([peer, "learned"], _num(p.get("routes_learned", 0)))
            routes.add_metric([peer, "announced"], _num(p.get("routes_announced", 0)))
        running = GaugeMetricFamily("overlay_bgp_speaker_up", "1 while the BGP speaker (BIRD) runs")
        running.add_metric([], 1 if bgp.get("running") else 0)
        yield from (up, routes, running)

    @staticmethod
    def _peer_families(peers: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
        peers = sorted(peers, key=lambda p: str(p["name"]))
        count = GaugeMetricFamily("overlay_peers", "peer nodes this node knows")
        count.add_metric([], len(peers))
        up = GaugeMetricFamily(
            "overlay_peer_up",
            "1 when the peer answers health probes through the overlay, 0 when not "
            "(absent while unknown)",
            labels=["peer", "underlay"],
        )
        rtt = GaugeMetricFamily(
            "overlay_peer_rtt_seconds",
            "the last round trip of a health probe to the peer through the overlay",
            labels=["peer"],
        )
        path = GaugeMetricFamily(
            "overlay_peer_path",
            "1 for the path this node takes to the peer's pods in a routed, auto or "
            "underlay network: direct (kernel route over the underlay), tunnel "
            "(encapsulated), needs-bgp (no direct path: a route learned over BGP carries "
            "it) or segment (underlay network: pods on the physical segment)",
            labels=["peer", "vni", "path"],
        )
        for p in peers:
            for q in p.get("paths") or ():
                path.add_metric([str(p["name"]), str(q["vni"]), str(q["path"])], 1)
            if p.get("reachable") is not None:
                up.add_metric(
                    [str(p["name"]), str(p.get("underlay", ""))], 1 if p["reachable"] else 0
                )
            if p.get("rtt_ms") is not None:
                rtt.add_metric([str(p["name"])], float(p["rtt_ms"]) / 1000.0)
        yield from (count, up, rtt, path)


class Metrics:
    """overlayd's metrics: a registry, the reconcile and policy-apply histograms and
    an HTTP endpoint.

    ``snapshot`` is called at every scrape (and by ``render``); see the
    module's notes for its shape and for which thread calls it.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry()
        self.reconcile = Histogram(
            "overlay_reconcile_seconds",
            "time to reconcile the desired state into the node",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.policy_apply = Histogram(
            "overlay_policy_apply_seconds",
            "time to compile and apply a batch of policy changes (every network of the "
            "tenants concerned) into the data plane's tables",
            buckets=POLICY_APPLY_BUCKETS,
            registry=self.registry,
        )
        self.collector = SnapshotCollector(snapshot)
        self.registry.register(self.collector)
        self.bound: tuple[str, int] | None = None  # where the endpoint listens
        self._server: asyncio.AbstractServer | None = None

    def observe_reconcile(self, seconds: float) -> None:
        """Record one reconcile's duration."""
        self.reconcile.observe(seconds)

    def observe_policy_apply(self, seconds: float) -> None:
        """Record one batch of policy compiles and table swaps."""
        self.policy_apply.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.registry)

    # -- on the asyncio loop ---------------------------------------------------

    async def serve(self, address: str) -> None:
        """Answer ``GET /metrics`` at ``address`` ("host:port") from the running loop.

        Raises ConfigError naming metrics.address when it is malformed or
        cannot be bound. Returns once listening; ``close()`` stops.
        """
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already serving; close() it first")
        host, port = parse_address(address)
        try:
            server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            raise _bind_error(address, exc) from None
        self._server = server
        name = server.sockets[0].getsockname()
        self.bound = (str(name[0]), int(name[1]))

    async def close(self) -> None:
        """Stop the endpoint ``serve()`` started. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
            self.bound = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, headers, body = await asyncio.wait_for(self._respond(reader), _REQUEST_TIMEOUT)
            head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
            head += [f"{k}: {v}" for k, v in headers]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
        except Exception as exc:  # a scraper's mistake (or a slow one) never reaches the loop
            log.debug("metrics: scrape failed: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(
        self, reader: asyncio.StreamReader
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        request = (await reader.readline()).decode("latin-1").split()
        accept = ""
        for _ in range(_HEADERS_MAX):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == "accept":
                accept = value.strip()
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if len(request) != 3 or not request[2].startswith("HTTP/"):
            return "400 Bad Request", text, b"bad request\n"
        method, target = request[0], request[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text + [("Allow", "GET, HEAD")], b""
        if target not in ("/metrics", "/"):
            return "404 Not Found", text, b"metrics are at /metrics\n"
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        return "200 OK", [("Content-Type", content_type)], b"" if method == "HEAD" else body
