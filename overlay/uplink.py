"""An underlay network's way onto the physical segment: the uplink.

An underlay network has no VNI on the wire and no VTEPs. Its pods sit on the
physical L2 segment of the node's underlay interface, as a macvlan's would,
but every frame still crosses the engine: port security, counters and (later)
policy hold exactly as in an overlay network. The segment is one more port of
the network, the *uplink*: a packet socket (``AF_PACKET``, ``SOCK_RAW``)
bound to the interface, adopted by the engine (``Engine.port_add_fd`` with
``uplink=True``).

Design notes.
- **A packet socket, not a kernel device.** macvlan/ipvlan would put the pod
  on the segment by themselves, around the engine: no port security of ours,
  no counters. A packet socket keeps the engine the only way in and out, and
  the node's interface stays as it is (no enslaving to a bridge, no address
  moved): the node's own IP stack keeps working beside the pods, because a
  packet socket's receive is a copy of what the stack also gets.
- **PACKET_VNET_HDR.** A segment peer over a veth (or a NIC with GRO) hands
  super-frames of up to 64 KiB with an open checksum; without the
  virtio-net header the socket would read them cut to the buffer and with
  checksums unfinished (the veth checksum trap of tests/README.md). With it,
  the socket speaks exactly what a TAP with ``IFF_VNET_HDR`` speaks, in both
  directions: super-frames from the segment go to pods as such, TSO bursts
  from pods leave as one GSO send and the kernel (or the NIC) cuts them.
- **PACKET_IGNORE_OUTGOING.** The socket reads only what arrives: not the
  node's own sends (else the node's MAC would be learned behind the uplink)
  and not what the engine wrote to it.
- **Promiscuous** (``PACKET_MR_PROMISC``, a membership the kernel drops with
  the socket): a NIC filters unicast by MAC, and the pods' MACs are not the
  interface's. The host stack still ignores frames for other MACs (they are
  ``PACKET_OTHERHOST``; ``ip_rcv`` drops them) and answers ARP only for its
  own addresses, so it never answers for or forwards a pod's traffic.
- **Bound with protocol 0 first**, options set, then bound to the interface
  with ``ETH_P_ALL``: a socket opened with ``ETH_P_ALL`` would queue frames of
  every interface of the namespace until bound.
- **What the engine does with it** (``OVL_PORT_UPLINK``): no port security
  (the uplink speaks for every station of the segment; their MACs are learned
  behind it), and a unicast frame for a MAC that is no pod's here belongs to
  another station: ignored and counted (``uplink_foreign``), never flooded to
  the pods. Broadcast and multicast from the segment reach the pods; ARP for
  a pod's address is answered from the neighbour table with the pod's MAC.
- **Limits.** The pods cannot reach the node's own address on that interface
  (frames written to a packet socket leave by the wire, the node's stack never
  sees them), as with macvlan's parent. One uplink per interface and node:
  two networks on one segment would share every broadcast.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from overlay.errors import ConfigError, NotFoundError
from overlay.nsenter import call_in, iproute

__all__ = ["UplinkSocket", "interface_of", "open_uplink"]

ETH_P_ALL = 0x0003
ARPHRD_ETHER = 1
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
RCVBUF_BYTES = 4 << 20  # room for a burst of 64 KiB super-frames
SNDBUF_BYTES = 4 << 20


@dataclass
class UplinkSocket:
    """An open packet socket on ``ifname``: its fd (the caller's until adopted),
    the interface's index and MAC."""

    fd: int
    ifname: str
    ifindex: int
    mac: str


def _open(ifname: str) -> UplinkSocket:
    """In the current namespace: the packet socket of an uplink on ``ifname``."""
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        raise NotFoundError(f"interface {ifname!r} does not exist") from None
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        for opt, force, want in (
            (socket.SO_RCVBUF, SO_RCVBUFFORCE, RCVBUF_BYTES),
            (socket.SO_SNDBUF, SO_SNDBUFFORCE, SNDBUF_BYTES),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, want)  # past rmem_max, as root
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, want)
        sock.bind((ifname, ETH_P_ALL))
        _, _, _, hatype, addr = sock.getsockname()
        if hatype != ARPHRD_ETHER or len(addr) != 6:
            raise ConfigError(
                "uplink", ifname, "an Ethernet interface (a NIC, veth or bond), not another kind"
            )
        mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        mac = ":".join(f"{b:02x}" for b in addr)
        return UplinkSocket(sock.detach(), ifname, ifindex, mac)
    except BaseException:
        sock.close()
        raise


def open_uplink(ifname: str, netns: str | None = None) -> UplinkSocket:
    """Open the packet socket of an uplink on ``ifname`` in namespace ``netns``
    (a path; None: the caller's). The caller owns the fd until the engine adopts it."""
    if not isinstance(ifname, str) or not 1 <= len(ifname.encode()) <= 15:
        raise ConfigError("uplink", ifname, "an interface name, 1-15 bytes")
    try:
        return call_in(netns, _open, ifname)
    except NotFoundError:
        raise NotFoundError(
            f"uplink: interface {ifname!r} does not exist in {netns or 'the host namespace'}"
        ) from None


def interface_of(address: str, netns: str | None = None) -> str:
    """The interface holding ``address`` in namespace ``netns`` (None: ours): the
    node's underlay interface when its underlay address is given."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError("underlay", address, "an IPv4 or IPv6 address") from None
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    with iproute(netns) as ipr:
        for msg in ipr.get_addr(family=family):
            if msg.get_attr("IFA_ADDRESS") == str(addr) or msg.get_attr("IFA_LOCAL") == str(addr):
                links = ipr.get_links(msg["index"])
                if links:
                    return str(links[0].get_attr("IFLA_IFNAME"))
    raise NotFoundError(
        f"no interface holds {addr} in {netns or 'the host namespace'}: "
        "set [node] interface to the underlay interface"
    )
