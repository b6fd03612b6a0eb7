"""overlayd's routes: how this node's kernel reaches the pods of routed and auto
networks on other nodes, and what it accepts from them.

The path of a routed packet: pod -> engine -> the network's gateway TAP
``ovg<vni>`` -> the node's routing table -> the underlay, plain IP; on the
far node the other way round (its node subnet is its gateway's connected
route). The TAP keeps its TSO/GSO offloads, so the kernel forwards
super-frames. This room keeps three things equal to the checked state:

- **Kernel routes** (``proto`` ``RTPROT_OVERLAY``, table main): for every
  routed or auto network this node hosts, every other node holding a subnet
  lease whose path (``overlay.control.paths``) is *direct* gets
  ``<subnet> via <its underlay>``. A *tunnel* peer of an auto network needs no
  route (its pods are on-link through the gateway's network-wide prefix and
  the engine encapsulates to it); a *needs-bgp* peer of a routed network gets
  nothing from here: a route learned over BGP (another ``proto``, which this
  room never touches) carries it. A routed network's whole range also gets a
  ``blackhole`` route of ours: a subnet nobody announced is dropped here
  rather than sent to the default route, and the anti-spoofing check below
  then refuses it as a source. Only routes of our own ``proto`` are ever
  changed or removed, so BGP's, the operator's and the connected routes are
  safe; on a restart the routes in the table are compared, not flushed.
- **Proxy ARP on the gateways of auto networks.** An auto network's pods keep
  the network's prefix: its tunnel peers' pods must stay on-link, because the
  gateway port may not forward a packet whose source is one of the network's
  own endpoints (the engine's anti-spoofing, ``encap.c``), so tunnel traffic
  cannot pass through the node's kernel. A direct peer's pods are on-link for
  a pod too, so it ARPs for them: the engine's suppression does not know them
  (they are no remotes) and floods the request, and the gateway TAP, with
  ``proxy_arp`` on (and ``proxy_delay`` 0: no random wait), answers with its
  own MAC, since the node routes that address out of another interface (the
  underlay). A tunnel peer's pods and this node's own are on the gateway's
  connected prefix, so the kernel never answers for them. The engine lets a
  gateway answer ARP only for addresses no endpoint of the network holds
  (``gateway_proxies_arp``, the rule ``gateway_forwards`` applies to IP).
  Why not a route per pod (``<direct subnet> via <gateway>`` in each pod's
  namespace, as this room did first): one sysctl per gateway replaces a
  netlink walk through every pod's namespace at each sync, and it holds for
  pods whose addresses overlayd did not give.
- **Anti-spoofing** (nftables table ``inet overlay-routes``, its own table so
  it is replaced in one transaction with the routes it checks, independently
  of the gateways' table ``inet overlay``): a packet entering the node from
  anywhere but a gateway, with a source in a routed or auto network's range,
  must have arrived by the interface the node's route to that source points
  to (strict reverse-path check, ``fib saddr . iif oif``). So a pod address is
  accepted only from where its subnet is routed: a direct peer's subnet from
  the underlay, a BGP-learned one from where BGP learned it, this node's own
  subnet never from outside. Not covered: two member nodes on one segment
  share an interface, so one of them can still send with a source in the
  other's subnet (telling them apart needs the sender's link-layer address or
  an encapsulation; use a tunnel network where member nodes are not trusted).

Why a daemon room and not a reconciler: the kernel routing table and the
nftables table belong to the node's namespace, not to the engine's tables
that reconcilers program through ``overlay.control.nodeapi``; an embedding
program keeps its host's routes its own. The room runs after the gateways'
sync (routes need the gateway of each network) and then every two seconds,
so that a new subnet lease, a node that went and a gateway made again are
followed; each run compares and changes only what differs.

The hook for BGP: ``announced()`` says which subnets of routed networks this
node hosts (what it announces), and the kernel routes it learns never
collide with ours (``proto`` differs, and a learned route is never needed
where ours exists: direct peers are one hop away).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from overlay.control.claims import _sub_text
from overlay.control.paths import DIRECT, ROUTED_MODES, IPNetwork, Path, peer_path, underlay_network
from overlay.daemon.parts import Parts
from overlay.daemon.rooms import Room
from overlay.errors import OverlayError
from overlay.nft import Nft
from overlay.nsenter import call_in, iproute

log = logging.getLogger("overlay.daemon")

RTPROT_OVERLAY = 160
"""The ``proto`` of the routes this room programs (``ip route show proto 160``);
userspace numbers are above 4, bird uses 12, BGP 186."""

TABLE_MAIN = 254
NFT_FAMILY = "inet"
NFT_TABLE = "overlay-routes"

Route = tuple[str, str | None]  # (destination CIDR, next hop; None: blackhole)


def _rule(comment: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {
        "add": {
            "rule": {
                "family": NFT_FAMILY,
                "table": NFT_TABLE,
                "chain": "prerouting",
                "expr": list(expr),
                "comment": comment,
            }
        }
    }


def antispoof_rules(networks: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The anti-spoofing table's body for ``networks`` ((gateway ifname, cidr) of
    each routed or auto network; module notes): from anything but a gateway, a
    source in the range must pass the strict reverse-path check."""
    body: list[dict[str, Any]] = [
        {
            "add": {
                "chain": {
                    "family": NFT_FAMILY,
                    "table": NFT_TABLE,
                    "name": "prerouting",
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -150,
                    "policy": "accept",
                }
            }
        }
    ]
    gateways = sorted({g for g, _ in networks})
    for ifname, cidr in sorted(networks):
        net = ipaddress.ip_network(cidr)
        proto = "ip" if net.version == 4 else "ip6"
        body.append(
            _rule(
                f"rpf {ifname} {cidr}",
                {
                    "match": {
                        "op": "!=",
                        "left": {"meta": {"key": "iifname"}},
                        "right": {"set": gateways},
                    }
                },
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": proto, "field": "saddr"}},
                        "right": {
                            "prefix": {"addr": str(net.network_address), "len": net.prefixlen}
                        },
                    }
                },
                {
                    "match": {
                        "op": "==",
                        "left": {"fib": {"result": "oif", "flags": ["saddr", "iif"]}},
                        "right": False,
                    }
                },
                {"counter": None},
                {"drop": None},
            )
        )
    return body


def _kernel_routes(ipr: Any) -> dict[str, Any]:
    """Our routes in the main table: destination CIDR -> the route message."""
    out: dict[str, Any] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=TABLE_MAIN):
            if r["proto"] != RTPROT_OVERLAY:
                continue
            dst = r.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            out[f"{dst}/{r['dst_len']}"] = r
    return out


def _next_hop(r: Any) -> str | None:
    gw = r.get_attr("RTA_GATEWAY")
    return str(gw) if gw else None


def program_routes(netns: str | None, wanted: dict[str, str | None]) -> tuple[int, int]:
    """Make our routes in ``netns`` exactly ``wanted`` (CIDR -> next hop, None for a
    blackhole). Returns (changed, removed). Blocks for netlink."""
    changed = removed = 0
    with iproute(netns) as ipr:
        have = _kernel_routes(ipr)
        for dst, r in have.items():
            if dst not in wanted:
                ipr.route(
                    "del",
                    dst=dst,
                    table=TABLE_MAIN,
                    proto=RTPROT_OVERLAY,
                    type=r["type"],
                )
                removed += 1
        for dst, via in wanted.items():
            r = have.get(dst)
            if r is not None and _next_hop(r) == via and (via is not None or r["type"] == 6):
                continue
            if via is None:
                ipr.route(
                    "replace", dst=dst, table=TABLE_MAIN, proto=RTPROT_OVERLAY, type="blackhole"
                )
            else:
                ipr.route(
                    "replace",
                    dst=dst,
                    gateway=via,
                    table=TABLE_MAIN,
                    proto=RTPROT_OVERLAY,
                    type="unicast",
                )
            changed += 1
    return changed, removed


def _proxy_arp_values(ifname: str) -> dict[str, str]:
    return {
        f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp": "1",
        f"/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay": "0",
    }


def _set_sysctls(values: dict[str, str]) -> int:
    """Write each value that differs (run inside the namespace); how many did."""
    changed = 0
    for path, value in values.items():
        with open(path) as f:
            if f.read().strip() == value:
                continue
        with open(path, "w") as f:
            f.write(value + "\n")
        changed += 1
    return changed


def enable_proxy_arp(netns: str | None, ifnames: list[str]) -> int:
    """Proxy ARP, answered at once, on each gateway in ``ifnames`` (module notes);
    returns how many settings changed. Blocks."""
    values: dict[str, str] = {}
    for ifname in ifnames:
        values.update(_proxy_arp_values(ifname))
    return call_in(netns, _set_sysctls, values) if values else 0


class Routing(Room):
    """Kernel routes, proxy ARP and anti-spoofing of routed and auto networks."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.errors: dict[int, str] = {}  # vni -> why its routes are not as wanted (-1: table)
        self.paths: dict[int, list[dict[str, Any]]] = {}  # vni -> one row per peer subnet
        self.routes: dict[str, str | None] = {}  # what was programmed last
        self._local: tuple[IPNetwork | None] | None = None
        self._rules: list[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    def local_underlay(self) -> IPNetwork | None:
        """This node's underlay subnet (read once)."""
        node = self.parts.node
        if self._local is None and node is not None:
            self._local = (underlay_network(node.netns, node.underlay),)
        return self._local[0] if self._local else None

    def announced(self) -> dict[int, str]:
        """VNI -> this node's subnet, for every routed network it hosts (what BGP
        announces)."""
        agent = self.parts.agent
        if agent is None:
            return {}
        return {
            vni: sub
            for vni, sub in sorted(agent.subnets.items())
            if (spec := agent.specs.get(vni)) is not None
            and spec.mode == "routed"
            and vni in agent.spec.networks
        }

    def plan(
        self,
    ) -> tuple[dict[str, str | None], dict[int, list[dict[str, Any]]], dict[int, list[str]]]:
        """(routes wanted, path rows per VNI, direct subnets per auto VNI) from the
        agent's checked state; no I/O but the underlay lookup (once)."""
        agent, node = self.parts.agent, self.parts.node
        routes: dict[str, str | None] = {}
        rows: dict[int, list[dict[str, Any]]] = {}
        auto: dict[int, list[str]] = {}
        if agent is None or node is None:
            return routes, rows, auto
        local = self.local_underlay()
        for vni in agent.spec.networks:
            spec = agent.specs.get(vni)
            net = agent.claims.nets.get(vni)
            if spec is None or net is None:
                continue
            if spec.mode not in ROUTED_MODES and spec.mode != "underlay":
                continue
            if spec.mode == "routed":
                routes[str(spec.network)] = None
            elif spec.mode == "auto":
                auto[vni] = []
            out = rows.setdefault(vni, [])  # underlay: the rows only (no routes of ours)
            for sub, owner in sorted(net.leases.items()):
                if owner == agent.name:
                    continue
                cidr = _sub_text(sub)
                peer = agent.nodes.get(owner)
                if peer is None or vni not in peer.networks:
                    why = "not a member node of the network" if peer else "no such node"
                    path = Path("none", f"{owner}: {why}")
                    underlay = None
                else:
                    underlay = peer.underlay
                    path = peer_path(spec.mode, local, underlay)  # underlay: segment
                    if path.kind == DIRECT:
                        routes[cidr] = str(underlay)
                        if vni in auto:
                            auto[vni].append(cidr)
                out.append(
                    {
                        "peer": owner,
                        "underlay": underlay,
                        "subnet": cidr,
                        "path": path.kind,
                        "why": path.why,
                    }
                )
        return routes, rows, auto

    def _rule_networks(self) -> list[tuple[str, str]]:
        agent, node = self.parts.agent, self.parts.node
        out = []
        for vni in agent.spec.networks if agent else ():
            spec = agent.specs.get(vni) if agent else None
            have = node.networks.get(vni) if node else None
            if spec is None or spec.mode not in ROUTED_MODES or have is None:
                continue
            if have.gateway is not None:
                out.append((have.gateway.ifname, spec.cidr))
        return out

    async def sync(self) -> None:
        """Make routes and the anti-spoofing table match the checked state."""
        node = self.parts.node
        if node is None or self.parts.agent is None:
            return
        async with self._lock:
            if self._local is None:
                await asyncio.to_thread(self.local_underlay)
            routes, rows, auto = self.plan()
            self.paths = rows
            try:
                changed, removed = await asyncio.to_thread(program_routes, node.netns, routes)
                if changed or removed:
                    log.info(
                        "overlayd: routes: %d programmed, %d removed (%d of ours now)",
                        changed,
                        removed,
                        len(routes),
                    )
                self.routes = routes
                self.errors.pop(0, None)
            except (OSError, OverlayError) as exc:
                self._fail(0, f"kernel routes: {exc}")
            await self._proxy_arp(auto)
            nets = self._rule_networks()
            rules = antispoof_rules(nets) if nets else []
            if rules != self._rules:
                try:
                    nft = Nft(node.netns)
                    if rules:
                        await asyncio.to_thread(nft.replace_table, NFT_FAMILY, NFT_TABLE, rules)
                    else:
                        await asyncio.to_thread(nft.delete_table, NFT_FAMILY, NFT_TABLE)
                    self._rules = rules
                    self.errors.pop(-1, None)
                except OverlayError as exc:
                    self._fail(-1, f"anti-spoofing table: {exc}")

    async def _proxy_arp(self, auto: dict[int, list[str]]) -> None:
        """The gateway of each auto network answers ARP for its direct peers' pods
        (module notes). A setting is checked at each sync: a gateway made again
        (a new TAP) gets it back."""
        node = self.parts.node
        if node is None:
            return
        ifnames = []
        for vni in sorted(auto):
            net = node.networks.get(vni)
            if net is not None and net.gateway is not None and net.gateway.netns is None:
                ifnames.append(net.gateway.ifname)
        try:
            changed = await asyncio.to_thread(enable_proxy_arp, node.netns, ifnames)
            if changed:
                log.info("overlayd: routes: proxy ARP on %s", ", ".join(ifnames))
            self.errors.pop(1, None)
        except OSError as exc:
            self._fail(1, f"proxy ARP on {', '.join(ifnames)}: {exc}")

    def _fail(self, key: int, why: str) -> None:
        if self.errors.get(key) != why:
            log.error("overlayd: routes: %s", why)
        self.errors[key] = why

    # -- views ----------------------------------------------------------------------

    def peer_paths(self, name: str) -> list[dict[str, Any]]:
        """The path to peer ``name`` in each routed, auto or underlay network
        (``overlay peers``; an underlay network's peers are on the segment)."""
        out = []
        for vni, rows in sorted(self.paths.items()):
            for r in rows:
                if r["peer"] == name:
                    out.append({"vni": vni, **{k: r[k] for k in ("subnet", "path", "why")}})
        return out

    def counters(self) -> dict[str, int]:
        """Packets each anti-spoofing rule dropped, by its comment."""
        node = self.parts.node
        if node is None or not self._rules:
            return {}
        return Nft(node.netns).counters(NFT_FAMILY, NFT_TABLE)
