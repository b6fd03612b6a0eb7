"""A node's way in and out: the node-side rules of its networks' gateways.

A network's gateway on a node is a port of the network (a TAP, made by
``Network.add_gateway``) whose other end is the node's own IP stack, in the
namespace that holds the underlay. It owns the first address of the node's
subnet with the network's prefix length, so the node has a connected route to
every pod of the network, local or remote (ARP/ND suppression answers for all
of them), and pods route everything else through it. This module holds what
the kernel must do with what arrives there, as one nftables table of the
project's own, ``inet overlay``:

- **isolation**: the node never forwards between two gateways (one tenant's
  pod cannot reach another network through the host; ``forward`` chain);
- **egress**: traffic from a network's addresses leaving through anything but
  a gateway is masqueraded to the outgoing interface's address, per network
  (``masquerade``, on by default, as flannel's ``ipMasq``); conntrack turns
  the replies back;
- **Services**: a connection DNATed in this node (a kube-proxy-style rule in
  the node's namespace, a table of its own) that leaves through the gateway it
  came in by is masqueraded to the gateway's address, so that its backend,
  which answers over the overlay straight to whoever is the source, answers
  the gateway and conntrack reverses both translations. Without it the reply
  would reach the pod from the backend's address, not the ClusterIP's.

Design notes.
- **nftables, through libnftables' JSON interface** (``overlay.nft``): one
  transaction replaces the whole table (``replace_table``), so applying is
  idempotent, a restarted daemon that applies the same rules leaves no moment
  without them, and conntrack keeps the translations of established
  connections across the replacement (they live in conntrack, not in the
  rules). A table of our own never touches another program's rules (kube-proxy,
  a firewall); the table's chains accept what they do not drop, so another
  table's drop still wins.
- **Rules per gateway interface**, not per address: two networks' gateways are
  told apart by their device (``iifname``/``oifname``), which stays true
  whatever their addresses are.
- **Overlapping address ranges cannot share a namespace**: two gateways with
  the same connected prefix would make the node's routing ambiguous. The
  daemon refuses such a configuration by name (``gateway``); this module
  refuses it too (``check``).
- Kernel settings the gateway needs in the node's namespace
  (``prepare_forwarding``): ``ip_forward`` (and IPv6 ``forwarding`` for IPv6
  ranges), and no ICMP redirects out of a gateway (a Service's hairpin goes
  out the interface it came in by, which would otherwise make the kernel tell
  the pod to go to the backend directly).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from overlay.errors import ConfigError
from overlay.nft import Nft
from overlay.nsenter import (
    call_in,
    create_netns,
    delete_link,
    iproute,
    link_index,
    netns_path,
    remove_netns,
)

__all__ = [
    "FAMILY",
    "ROLE_GATEWAY",
    "ROLE_LABEL",
    "TABLE",
    "GatewayRule",
    "NodeRules",
    "check",
    "is_gateway",
    "prepare_forwarding",
    "apply_router",
    "make_router",
    "remove_router",
    "render",
    "render_router",
    "router_netns",
    "transit",
]

# A gateway is announced as an endpoint of its network (so that every node's
# ARP/ND suppression answers for it), marked by this label; views of pods
# leave those out.
ROLE_LABEL = "overlay.io/role"
ROLE_GATEWAY = "gateway"

FAMILY = "inet"
TABLE = "overlay"
IFNAME_PREFIX = "ovg"  # a gateway's TAP: ovg<vni> (overlay.node.Network.add_gateway)
UPLINK_PREFIX = "ovx"  # an isolated gateway's veth to the node: ovx<vni>, both ends
# Isolated gateways reach the node over a /30 of link-local space each, chosen by
# VNI (never 169.254.169.0/24 and above, where clouds keep their metadata).
TRANSIT = ipaddress.ip_network("169.254.0.0/17")
TRANSIT_SLOTS = TRANSIT.num_addresses // 4
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclasses.dataclass(frozen=True)
class GatewayRule:
    """One network's gateway on this node, as the node's rules need it."""

    ifname: str  # the gateway's TAP in the node's namespace
    cidrs: tuple[str, ...]  # the network's address ranges
    masquerade: bool = True  # egress to the outside is masqueraded to the node
    hairpin: bool = True  # Services DNATed in the node answer through it

    def __post_init__(self) -> None:
        if not isinstance(self.ifname, str) or not _IFNAME.fullmatch(self.ifname):
            raise ConfigError("ifname", self.ifname, "an interface name, 1-15 of [A-Za-z0-9_.-]")
        nets = []
        for c in self.cidrs:
            try:
                nets.append(str(ipaddress.ip_network(c, strict=False)))
            except (TypeError, ValueError):
                raise ConfigError("cidrs", c, "an address range like 10.244.0.0/16") from None
        if not nets:
            raise ConfigError("cidrs", self.cidrs, "at least one address range")
        object.__setattr__(self, "cidrs", tuple(nets))


def is_gateway(labels: dict[str, str]) -> bool:
    """An endpoint with these labels is a node's gateway, not a pod."""
    return labels.get(ROLE_LABEL) == ROLE_GATEWAY


def check(gateways: Sequence[GatewayRule]) -> None:
    """Refuse gateways that cannot share one namespace: the same device twice,
    or overlapping address ranges (ConfigError naming ``gateway``)."""
    seen: dict[str, GatewayRule] = {}
    for g in gateways:
        if g.ifname in seen:
            raise ConfigError("ifname", g.ifname, "one gateway per interface")
        for other in seen.values():
            for a in g.cidrs:
                for b in other.cidrs:
                    if ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b)):
                        raise ConfigError(
                            "gateway",
                            g.ifname,
                            f"a gateway whose range {a} does not overlap {b} of "
                            f"{other.ifname}: networks with overlapping addresses cannot "
                            "both have a gateway in the node's namespace; turn the gateway "
                            "off for one of them (gateway = false)",
                        )
        seen[g.ifname] = g


# ---- the table, as libnftables JSON ----------------------------------------------


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _prefix(cidr: str) -> dict[str, Any]:
    net = ipaddress.ip_network(cidr)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _addr(cidr: str, field: str) -> dict[str, Any]:
    proto = "ip" if ipaddress.ip_network(cidr).version == 4 else "ip6"
    return {"payload": {"protocol": proto, "field": field}}


def _rule(chain: str, comment: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {
        "add": {
            "rule": {
                "family": FAMILY,
                "table": TABLE,
                "chain": chain,
                "expr": list(expr),
                "comment": comment,
            }
        }
    }


def _chain(name: str, type_: str, hook: str, prio: int) -> dict[str, Any]:
    return {
        "add": {
            "chain": {
                "family": FAMILY,
                "table": TABLE,
                "name": name,
                "type": type_,
                "hook": hook,
                "prio": prio,
                "policy": "accept",
            }
        }
    }


def _names(ifnames: Iterable[str]) -> dict[str, Any]:
    return {"set": sorted(ifnames)}


def render(gateways: Iterable[GatewayRule]) -> list[dict[str, Any]]:
    """The table's chains and rules for these gateways (``Nft.replace_table``'s body).

    Gateways are told apart by their devices: what comes in by one never leaves
    by another (``isolate``), and egress is what leaves by none of them."""
    gws = sorted(gateways, key=lambda g: g.ifname)
    body = [
        _chain("forward", "filter", "forward", 0),
        _chain("postrouting", "nat", "postrouting", 100),
    ]
    counter: dict[str, Any] = {"counter": None}
    every = [g.ifname for g in gws]
    for g in gws:
        others = [n for n in every if n != g.ifname]
        if not others:
            continue
        body.append(
            _rule(
                "forward",
                f"isolate {g.ifname}",
                _match(_meta("iifname"), g.ifname),
                _match(_meta("oifname"), _names(others)),
                counter,
                {"drop": None},
            )
        )
    for g in gws:
        if g.hairpin:
            # Services: a DNATed connection that leaves by the gateway it came in by.
            body.append(
                _rule(
                    "postrouting",
                    f"service hairpin {g.ifname}",
                    _match(_meta("iifname"), g.ifname),
                    _match(_meta("oifname"), g.ifname),
                    _match({"ct": {"key": "status"}}, "dnat", "in"),
                    counter,
                    {"masquerade": None},
                )
            )
        if not g.masquerade:
            continue
        for cidr in g.cidrs:
            # Egress: the network's addresses leaving the overlay.
            body.append(
                _rule(
                    "postrouting",
                    f"egress {g.ifname} {cidr}",
                    _match(_meta("iifname"), g.ifname),
                    _match(_addr(cidr, "saddr"), _prefix(cidr)),
                    # (to the network's own pods on other nodes, routed without
                    # encapsulation, it is not egress: never masqueraded)
                    _match(_addr(cidr, "daddr"), _prefix(cidr), "!="),
                    _match(_meta("oifname"), _names(every), "!="),
                    counter,
                    {"masquerade": None},
                )
            )
    return body


def render_router(gateway: str, uplink: str) -> list[dict[str, Any]]:
    """The table of an isolated gateway's router namespace: everything from the
    gateway leaves by ``uplink`` masqueraded; nothing new comes in (egress only)."""
    counter: dict[str, Any] = {"counter": None}
    return [
        _chain("forward", "filter", "forward", 0),
        _chain("postrouting", "nat", "postrouting", 100),
        _rule(
            "forward",
            f"egress only {gateway}",
            _match(_meta("iifname"), uplink),
            _match({"ct": {"key": "state"}}, "new", "in"),
            counter,
            {"drop": None},
        ),
        _rule(
            "postrouting",
            f"egress {gateway}",
            _match(_meta("iifname"), gateway),
            _match(_meta("oifname"), uplink),
            counter,
            {"masquerade": None},
        ),
    ]


class NodeRules:
    """The ``inet overlay`` table of one namespace (``netns``: name or path; None: ours)."""

    def __init__(self, netns: str | None = None) -> None:
        self.nft = Nft(netns)

    def apply(self, gateways: Sequence[GatewayRule]) -> None:
        """Make the table say exactly this (atomically); with no gateways, remove it."""
        check(gateways)
        if not gateways:
            self.nft.delete_table(FAMILY, TABLE)
            return
        self.nft.replace_table(FAMILY, TABLE, render(gateways))

    def remove(self) -> bool:
        """Remove the table; whether it was there."""
        return self.nft.delete_table(FAMILY, TABLE)

    def counters(self) -> dict[str, int]:
        """Packets each rule matched, by its comment ("egress ovg100 10.244.0.0/16", ...)."""
        return self.nft.counters(FAMILY, TABLE)


def _write_sysctls(values: dict[str, str]) -> None:
    for path, value in values.items():
        with open(path, "w") as f:
            f.write(value + "\n")


def prepare_forwarding(netns: str | None, ifname: str, families: Iterable[int]) -> None:
    """The node's namespace forwards (IPv4, and IPv6 when a range is IPv6), and
    the gateway ``ifname`` sends no ICMP redirects."""
    if not isinstance(ifname, str) or not _IFNAME.fullmatch(ifname) or ifname in (".", ".."):
        raise ConfigError("ifname", ifname, "an interface name")
    fams = set(families)
    values: dict[str, str] = {}
    if 4 in fams:
        values["/proc/sys/net/ipv4/ip_forward"] = "1"
        values[f"/proc/sys/net/ipv4/conf/{ifname}/send_redirects"] = "0"
    if 6 in fams:
        values["/proc/sys/net/ipv6/conf/all/forwarding"] = "1"
    call_in(netns_path(netns) if netns else None, _write_sysctls, values)


# ---- isolated gateways: a router namespace per network ------------------------------
#
# A tenant whose addresses overlap another's cannot have its gateway in the
# node's namespace (the node's routing would be ambiguous), and this kernel has
# no VRF device. So its gateway lives in a router namespace of its own, joined
# to the node's by a veth pair with a link-local /30 (``transit``): the router
# masquerades its pods to its end of the pair (``render_router``), and the node
# masquerades that address again on the way out (an ordinary ``GatewayRule`` on
# the veth, without the Services hairpin). Replies come back through both
# translations; nothing new comes in. What this gives up, by construction: the
# node does not reach those pods, and Services in the node are not served to
# them; egress is what an isolated tenant gets.


def transit(vni: int) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
    """The node's and the router's ends of network ``vni``'s transit /30."""
    base = int(TRANSIT.network_address) + (vni % TRANSIT_SLOTS) * 4
    node = ipaddress.IPv4Interface(f"{ipaddress.IPv4Address(base + 1)}/30")
    router = ipaddress.IPv4Interface(f"{ipaddress.IPv4Address(base + 2)}/30")
    return node, router


def router_netns(node_netns: str | None, vni: int) -> str:
    """The path of network ``vni``'s router namespace: named after the node's
    namespace (``<node ns>-r<vni>``), or ``overlay-r<vni>`` for the daemon's own."""
    base = os.path.basename(netns_path(node_netns)) if node_netns else "overlay"
    return netns_path(f"{base}-r{vni}")


def make_router(node_netns: str | None, vni: int) -> str:
    """Network ``vni``'s router namespace and its veth to the node, made where
    missing (idempotent: a restarted daemon finds them as they were); its path."""
    path = router_netns(node_netns, vni)
    if not os.path.exists(path):
        create_netns(os.path.basename(path))
    node_end, router_end = transit(vni)
    name = f"{UPLINK_PREFIX}{vni}"
    node_path = netns_path(node_netns) if node_netns else None

    def veth() -> None:
        with iproute(node_path) as ipr:
            if ipr.link_lookup(ifname=name):
                return
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link("add", ifname=name, kind="veth", peer={"ifname": name, "net_ns_fd": fd})
            finally:
                os.close(fd)
            idx = link_index(ipr, name, node_path)
            ipr.addr("add", index=idx, address=str(node_end.ip), prefixlen=30)
            ipr.link("set", index=idx, state="up")
        with iproute(path) as ipr:
            lo = link_index(ipr, "lo", path)
            ipr.link("set", index=lo, state="up")
            idx = link_index(ipr, name, path)
            ipr.addr("add", index=idx, address=str(router_end.ip), prefixlen=30)
            ipr.link("set", index=idx, state="up")
            ipr.route("replace", dst="0.0.0.0/0", gateway=str(node_end.ip), oif=idx)

    call_in(None, veth)
    return path


def remove_router(node_netns: str | None, vni: int) -> None:
    """Remove network ``vni``'s router namespace and its veth (nothing when gone)."""
    delete_link(netns_path(node_netns) if node_netns else None, f"{UPLINK_PREFIX}{vni}")
    remove_netns(os.path.basename(router_netns(node_netns, vni)))


def apply_router(router: str, gateway: str, uplink: str) -> None:
    """The router namespace's own table (``render_router``), atomically."""
    Nft(router).replace_table(FAMILY, TABLE, render_router(gateway, uplink))
