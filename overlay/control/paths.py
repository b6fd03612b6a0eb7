"""The path to each peer of a network: direct, tunnel, BGP or the segment.

Design notes (flannel's host-gw and DirectRouting, Calico's CrossSubnet).
- **Decided per peer, from the underlay alone.** A peer whose underlay
  address lies on this node's underlay subnet (the connected prefix of the
  interface holding the node's underlay address) is one hop away: its pods'
  subnet is reached by a plain route ``<subnet> via <its underlay>`` (direct).
  Any other peer is behind a router: in an ``auto`` network it is reached
  through the tunnel as in an overlay network; in a ``routed`` network it
  needs a route this node cannot program itself (a router must know where
  the peer's subnet is: BGP's job, ``needs-bgp``). An ``overlay`` network
  tunnels to every peer. An ``underlay`` network encapsulates nothing either:
  its pods are stations of the physical segment, and so are the peer's
  (``segment``; behind the segment's router when the peer is on another).
- **One answer everywhere.** The peers reconciler (which peers are member
  VTEPs), overlayd's route programming (``overlay.daemon.routing``) and the
  views ask this module, so what is programmed and what is shown agree.
- **Unknown underlay subnet: tunnel.** When the node's underlay prefix
  cannot be read (an embedding program's fake node, an address on no
  interface), every peer of an auto network is a tunnel peer: the overlay's
  behaviour, which always works.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

DIRECT = "direct"
TUNNEL = "tunnel"
NEEDS_BGP = "needs-bgp"
SEGMENT = "segment"
PATHS = (DIRECT, TUNNEL, NEEDS_BGP, SEGMENT)

# Modes whose traffic between nodes may leave without encapsulation.
ROUTED_MODES = ("routed", "auto")


@dataclasses.dataclass(frozen=True)
class Path:
    """How this node reaches one peer's pods in one network, and why."""

    kind: str  # PATHS
    why: str


def peer_path(mode: str, local: IPNetwork | None, peer: IPAddress | str) -> Path:
    """The path to a peer with underlay ``peer`` in a network of ``mode``, for a
    node whose underlay subnet is ``local`` (None: not known)."""
    addr = ipaddress.ip_address(str(peer))
    same = local is not None and addr.version == local.version and addr in local
    if mode == "underlay":
        where = (
            "on this node's segment"
            if same
            else "on another segment: behind the segment's router"
            if local
            else "on the physical network"
        )
        return Path(SEGMENT, f"underlay network: pods are stations {where}, not encapsulated")
    if mode not in ROUTED_MODES:
        return Path(TUNNEL, f"{mode} network: encapsulated to every peer")
    if same:
        return Path(DIRECT, f"{addr} is on this node's underlay subnet {local}")
    where = (
        f"{addr} is not on this node's underlay subnet {local}"
        if local
        else ("this node's underlay subnet is not known")
    )
    if mode == "auto":
        return Path(TUNNEL, f"{where}: encapsulated")
    return Path(NEEDS_BGP, f"{where}: no direct path, needs BGP (a router must carry the route)")


def is_member_vtep(mode: str, local: IPNetwork | None, peer: IPAddress | str) -> bool:
    """Whether the peer is a member VTEP of a network of ``mode`` (the engine
    floods to it and accepts its packets): only when its path is the tunnel."""
    return peer_path(mode, local, peer).kind == TUNNEL


def underlay_network(netns: str | None, underlay: IPAddress | str) -> IPNetwork | None:
    """The connected subnet of the interface holding ``underlay`` in namespace
    ``netns`` (a path; None: ours), or None when no interface holds it. Blocks
    for one netlink dump: call it off the event loop, once."""
    from overlay.nsenter import iproute, off_loop

    want = ipaddress.ip_address(str(underlay))

    def lookup() -> IPNetwork | None:
        with iproute(netns) as ipr:
            for a in ipr.get_addr():
                text = a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL")
                if text is None:
                    continue
                iface = ipaddress.ip_interface(f"{text}/{a['prefixlen']}")
                if iface.ip == want:
                    return iface.network
        return None

    try:
        return off_loop(lookup)
    except (OSError, ValueError):
        return None
