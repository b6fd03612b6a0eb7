"""The embedding API: a Node is one VTEP with its networks, ports and peers.

``Node`` owns an ``Engine`` (the C data plane) and keeps a plain-Python view
of what it was told (networks and their tenants, ports, remote MACs), so that
every call can be validated completely *before* the data plane is touched:
a bad argument raises an error naming it and changes nothing.

Netlink work (finding the TAP, moving it into a pod's namespace, addresses,
MTU, routes) goes through pyroute2; the TAP fd itself is opened in C.

    from overlay import Node, Encap
    with Node(underlay="198.18.0.1", encap=Encap.VXLAN, netns="node-a") as node:
        blue = node.add_network(vni=100, tenant="blue")
        pod = blue.add_port(mac="02:00:00:00:01:02", ips=["10.244.1.2/24"])
        pod.move_to_netns("/var/run/netns/pod-a", ifname="eth0")
        blue.add_vtep("198.18.0.2")
        blue.add_remote(mac="02:00:00:00:02:02", vtep="198.18.0.2", ip="10.244.1.3")
        node.start()

A pod's TAP made with ``add_port(..., persist=True)`` outlives its node. After
a restart a new node takes it back where it now lives, and the pod never
loses its interface:

    pod = blue.attach_port(mac="02:00:00:00:01:02", ips=["10.244.1.2/24"],
                           ifname="eth0", netns="/var/run/netns/pod-a")
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlay import bindings as _bindings
from overlay import model
from overlay.bindings import Engine, Event, FdbEntry, mac_bytes, mac_str
from overlay.bindings.policy import probe_protocol
from overlay.cni import validate
from overlay.errors import ConfigError, ConflictError, NotFoundError
from overlay.gateway import prepare_forwarding
from overlay.nsenter import move_link, netns_path, setup_link
from overlay.policy.compile import PortTable
from overlay.policy.engine import (
    DIRECTIONS as POLICY_DIRECTIONS,
)
from overlay.policy.engine import (
    Identity,
    Member,
    NetworkPolicies,
    Peer,
    PolicySet,
    RuleRef,
    check_identity,
    check_namespace,
    parse_policies,
)
from overlay.policy.evaluate import Verdict
from overlay.uplink import open_uplink

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class Encap(enum.Enum):
    """A tunnel encapsulation: a node's default, chosen per network (``add_network``)."""

    VXLAN = _bindings.ENCAP_VXLAN
    GENEVE = _bindings.ENCAP_GENEVE

    @property
    def default_port(self) -> int:
        return 4789 if self is Encap.VXLAN else 6081

    def overhead(self, family: int, options_len: int = 0) -> int:
        """Bytes encapsulation adds on the underlay: outer IP, UDP, tunnel, inner Ethernet."""
        ip = 20 if family == 4 else 40
        return ip + 8 + 8 + (options_len if self is Encap.GENEVE else 0) + 14


@dataclass(frozen=True)
class GeneveOption:
    """A Geneve TLV option (RFC 8926 section 3.5): class, type (bit 7: critical), data."""

    cls: int
    type: int
    data: bytes = b""

    @property
    def critical(self) -> bool:
        return bool(self.type & 0x80)

    def encode(self) -> bytes:
        if not 0 <= self.cls <= 0xFFFF:
            raise ConfigError("geneve_options.cls", self.cls, "0-0xffff")
        if not 0 <= self.type <= 0xFF:
            raise ConfigError(
                "geneve_options.type", self.type, "0-0xff (bit 0x80 marks it critical)"
            )
        if len(self.data) % 4 or len(self.data) > 124:
            raise ConfigError(
                "geneve_options.data", self.data.hex(), "a multiple of 4 bytes, at most 124"
            )
        return self.cls.to_bytes(2, "big") + bytes([self.type, len(self.data) // 4]) + self.data


def _parse_ip(value: object, field: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ConfigError(field, value, "an IPv4 or IPv6 address") from None


def _parse_iface(value: object, field: str) -> IPInterface:
    try:
        return ipaddress.ip_interface(str(value))
    except ValueError:
        raise ConfigError(field, value, "an address with prefix, like 10.244.1.2/24") from None


def _check_ifname(ifname: str) -> None:
    """A pod interface name by the kernel's and the CNI spec's rule (one rule for
    the embedding API, overlayd's API and the plugin: ``overlay.cni.validate``)."""
    try:
        validate.ifname(ifname)
    except validate.Invalid as exc:
        raise ConfigError("ifname", ifname, exc.expected) from None


def _check_unicast_mac(mac: str | bytes, field: str) -> bytes:
    raw = mac_bytes(mac, field)
    if raw[0] & 1 or raw == bytes(6):
        raise ConfigError(field, mac, "a unicast MAC, not multicast or all zeros")
    return raw


@dataclass(frozen=True)
class PolicyEvent:
    """A policy verdict of the data plane: ``verdict`` "deny" (dropped) or
    "audit" (a deny only counted), at ``port`` in ``direction``, given by
    ``tier``/``policy``/``rule`` (``RuleRef``: "isolation" when the port is
    isolated and no NetworkPolicy rule allowed it, "pending" before its
    policy was set), for the packet ``src``:``sport`` -> ``dst``:``dport``
    of IP protocol ``proto``."""

    verdict: str
    direction: str
    vni: int
    port: Port | None
    tier: str
    policy: str | None
    rule: int | None
    proto: int
    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True)
class Probed:
    """What the data plane's tables in force decide for one connection
    (``Network.probe``): at the egress of the local pod that opens it and at
    the ingress of the local pod it goes to, each the verdict ("allow",
    "deny", "audit": a deny that audit forwards, "none": no table, no policy)
    and the rule that gave it (``RuleRef``; "isolation", "default" or
    "pending" for the implicit verdicts), or None where that end is no local
    pod. ``allowed``: no end denies."""

    allowed: bool
    egress: tuple[str, RuleRef] | None
    ingress: tuple[str, RuleRef] | None


class Port:
    """A pod's interface: a TAP device in a network, with its MAC and addresses."""

    def __init__(
        self,
        network: Network,
        port_id: int,
        ifname: str,
        mac: bytes,
        ips: list[IPInterface],
        port_security: bool,
        persist: bool,
    ) -> None:
        self.network = network
        self.id = port_id
        self.ifname = ifname
        self.mac = mac_str(mac)
        self.ips = ips
        self.port_security = port_security
        self.persist = persist
        self.router = False  # may send router advertisements and redirects (RA guard)
        self.gateway = False  # the node's IP stack (Network.add_gateway)
        self.uplink = False  # the physical segment (Network.add_uplink)
        self.netns: str | None = None  # the pod's namespace once moved
        self.identity = Identity()  # namespace, labels, named ports (network policy)

    @property
    def namespace(self) -> str:
        """The pod's Kubernetes namespace (network policy; default ``default``)."""
        return self.identity.namespace

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.identity.labels)

    def set_labels(self, labels: dict[str, str]) -> None:
        """Give the pod new labels; the network's policy is recompiled at once
        (what selected the pod by its old labels no longer does). A bad label
        raises ConfigError and changes nothing."""
        new = check_identity(self.identity.namespace, labels, self.identity.named_ports)
        old, self.identity = self.identity, new
        try:
            self.network._policy_changed()
        except BaseException:
            self.identity = old
            raise

    def policy_hits(self, direction: str) -> dict[RuleRef, int]:
        """Connections decided per rule in ``direction`` (``ingress`` or
        ``egress``) of this port's table, by what the rule is (``RuleRef``)."""
        hits = self.network.node.engine.port_policy_hits(self.id, direction)
        out: dict[RuleRef, int] = {}
        for rid, n in hits.items():
            ref = self.network.policy_rule(rid)
            out[ref] = out.get(ref, 0) + n
        return out

    def __repr__(self) -> str:
        return f"Port({self.ifname!r}, vni={self.network.vni}, mac={self.mac})"

    def move_to_netns(
        self,
        netns: str,
        ifname: str = "eth0",
        *,
        mtu: int | None = None,
        gateway: str | None = None,
    ) -> None:
        """Move the TAP into a pod's namespace as ``ifname`` and configure it.

        Sets the MAC, the addresses (IPv6 without DAD), the MTU (default: the
        node's underlay MTU less the encapsulation overhead), brings the link
        up and, with ``gateway``, adds a default route through it.
        """
        _check_ifname(ifname)
        path = netns_path(netns)
        if not os.path.exists(path):
            raise ConfigError("netns", netns, "an existing network namespace (name or path)")
        mtu, gw = self._link_args(mtu, gateway)
        src = self.netns if self.netns else self.network.node.netns
        try:
            move_link(
                self.ifname,
                src,
                path,
                new_name=ifname,
                mac=self.mac,
                mtu=mtu,
                addresses=self.ips,
                gateway=gw,
            )
        except LookupError as exc:
            raise NotFoundError(f"port {self.ifname!r}: {exc}") from None
        self.ifname = ifname
        self.netns = path

    def configure(self, *, mtu: int | None = None, gateway: str | None = None) -> None:
        """Configure the TAP where it is (a port created with ``add_port(netns=...)``):
        the addresses (IPv6 without DAD), the MTU (default: the node's underlay MTU
        less the encapsulation overhead), link up and, with ``gateway``, a default
        route. Blocks for the netlink calls: from a coroutine, run it in a thread."""
        mtu, gw = self._link_args(mtu, gateway)
        try:
            setup_link(
                self.netns or self.network.node.netns,
                self.ifname,
                mtu=mtu,
                addresses=self.ips,
                gateway=gw,
            )
        except LookupError as exc:
            raise NotFoundError(f"port {self.ifname!r}: {exc}") from None

    def _link_args(
        self, mtu: int | None, gateway: str | None
    ) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
        node = self.network.node
        mtu = node.pod_mtu(self.network) if mtu is None else mtu
        if not 68 <= mtu <= node.frame_max - 14:
            raise ConfigError("mtu", mtu, f"68-{node.frame_max - 14} bytes")
        return mtu, _parse_ip(gateway, "gateway") if gateway is not None else None

    def counters(self) -> dict[str, int]:
        return self.network.node.engine.port_counters(self.id)

    def remove(self) -> None:
        self.network.remove_port(self)


class Network:
    """One VNI, owned by one tenant. Frames never leave it."""

    def __init__(
        self,
        node: Node,
        vni: int,
        tenant: str,
        options: tuple[GeneveOption, ...],
        learning: bool,
        tunnel: bool = True,
        encap: Encap | None = None,
    ) -> None:
        self.node = node
        self.vni = vni
        self.encap = encap or node.encap  # its tunnel's: header, port, pods' MTU
        self.tenant = tenant
        self.geneve_options = options
        self.learning = learning
        self.tunnel = tunnel  # False: no VTEPs, frames up to the underlay MTU (add_network)
        self.ports: list[Port] = []
        self.vteps: set[IPAddress] = set()
        self.remotes: dict[str, tuple[IPAddress, list[IPAddress]]] = {}
        # Design note: the addresses in use (a local port's, or a remote's MAC)
        # and the ports by MAC are indexes kept as the tables change, so that
        # every check of add_port/add_remote costs O(its own addresses), not
        # O(the table): rebuilding them per call made programming N remotes
        # O(N^2) (30,000 took 30 s; see bench/test_control_scale.py).
        self._in_use: dict[IPAddress, Port | str] = {}
        self._port_macs: dict[str, Port] = {}
        # Network policy: namespaces, the policy set, compiled tables; the
        # identity of remote pods by MAC, and the remotes that are other
        # nodes' gateways (their addresses are node addresses).
        self._policy = NetworkPolicies()
        self._remote_ids: dict[str, Identity] = {}
        self._remote_gateways: set[str] = set()
        # Other nodes' pods as policy knows them (update_policy), by MAC: they
        # win over a remote's own identity, and also name pods that are not
        # remotes here (routed and underlay networks have none).
        self._peers: dict[str, Peer] = {}
        self.policy_swaps = 0  # port tables put in force (a no-op change adds none)
        self.policy_compiles = 0

    def __repr__(self) -> str:
        return f"Network(vni={self.vni}, tenant={self.tenant!r})"

    def address_user(self, ip: IPAddress) -> str | None:
        """Who uses ip in this network: "port <ifname>", "remote <mac>", or None."""
        user = self._in_use.get(ip)
        if user is None:
            return None
        return f"port {user.ifname}" if isinstance(user, Port) else f"remote {user}"

    def port_by_mac(self, mac: str) -> Port | None:
        """The local port with this MAC (lower case, colon separated), or None."""
        return self._port_macs.get(mac)

    def _check_port(
        self, mac: str, ips: Sequence[str], ifname: str | None
    ) -> tuple[bytes, list[IPInterface]]:
        """The checks every new port passes before the data plane is touched:
        its MAC and addresses are valid and free in this network, its name valid."""
        raw = _check_unicast_mac(mac, "mac")
        if isinstance(ips, str):
            ips = [ips]
        ifaces = [_parse_iface(ip, "ips") for ip in ips]
        seen: set[IPAddress] = set()
        for ip in ifaces:
            if ip.ip in self._in_use or ip.ip in seen:
                raise ConflictError(
                    f"ips={str(ip)!r}: address {ip.ip} is in use in vni={self.vni} by "
                    f"{self.address_user(ip.ip) or 'this request'}; choose a free address"
                )
            seen.add(ip.ip)
        key = mac_str(raw)
        if key in self.remotes or key in self._port_macs:
            raise ConflictError(f"mac={mac!r} is in use in vni={self.vni}; choose another MAC")
        if ifname is not None:
            _check_ifname(ifname)
        return raw, ifaces

    def _program_port(
        self,
        port_id: int,
        name: str,
        raw: bytes,
        ifaces: list[IPInterface],
        port_security: bool,
        persist: bool,
        netns: str | None = None,
        reattached: bool = False,
        router: bool = False,
    ) -> Port:
        """Give the data plane's new port its addresses and record it (``netns``: the
        namespace its TAP is in, None for the node's). On failure the port is removed
        again: a TAP made for it goes too, a re-attached one stays as it was found."""
        eng = self.node.engine
        try:
            for ip in ifaces:
                eng.port_add_ip(port_id, ip.ip)
        except Exception:
            if reattached:
                eng.port_detach(port_id)
            else:
                eng.port_del(port_id)
            raise
        port = Port(self, port_id, name, raw, ifaces, port_security, persist)
        port.netns = netns
        port.router = router
        self.ports.append(port)
        self._port_macs[port.mac] = port
        for ip in ifaces:
            self._in_use[ip.ip] = port
        return port

    def add_port(
        self,
        mac: str,
        ips: Sequence[str] = (),
        *,
        ifname: str | None = None,
        netns: str | None = None,
        port_security: bool = True,
        persist: bool = False,
        router: bool = False,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        named_ports: dict[str, tuple[int, str]] | None = None,
        policy_pending: bool = False,
    ) -> Port:
        """Create a TAP for a pod in this network and program it (FDB, neighbours, anti-spoof).

        ``namespace`` (default ``default``), ``labels`` and ``named_ports``
        (``{"serve-80-tcp": (80, "TCP")}``) are the pod's identity for network
        policy (``apply_policies``). A port created while the network has
        policies, or with ``policy_pending``, refuses every IP packet until its
        tables are set: with policies they are set before this returns; with
        ``policy_pending`` alone, by the next ``apply_policies``.

        ``router`` marks a pod that may send IPv6 router advertisements and
        redirects; from any other port they are dropped (RA guard, RFC 6105).

        The TAP is born in the node's namespace, or with ``netns`` (name or path)
        straight in the pod's namespace as ``ifname`` (default ``eth0``): no move,
        no rename; then ``port.configure()`` gives it its addresses and MTU and
        brings it up. ``ifname`` must not exist there. With ``persist`` it
        outlives the node (``close``) so that a restarted node can take it back
        with ``attach_port``; ``remove_port`` deletes it.
        """
        identity = check_identity(namespace, labels, named_ports)
        pending = bool(policy_pending) or self._policy.active
        if netns is None:
            raw, ifaces = self._check_port(mac, ips, ifname)
            port_id, name = self.node.engine.port_add(
                self.vni,
                raw,
                ifname or "",
                security=port_security,
                persist=persist,
                router=router,
                policy_pending=pending,
            )
            port = self._program_port(
                port_id, name, raw, ifaces, port_security, persist, router=router
            )
            return self._with_identity(port, identity)
        ifname = "eth0" if ifname is None else ifname
        raw, ifaces = self._check_port(mac, ips, ifname)
        path = netns_path(netns)
        fd = self._open_netns(path, netns)
        try:
            port_id, name = self.node.engine.port_add(
                self.vni,
                raw,
                ifname,
                fd,
                security=port_security,
                persist=persist,
                router=router,
                netns=path,
                policy_pending=pending,
            )
        finally:
            os.close(fd)
        port = self._program_port(
            port_id, name, raw, ifaces, port_security, persist, netns=path, router=router
        )
        return self._with_identity(port, identity)

    def _with_identity(self, port: Port, identity: Identity) -> Port:
        """Give a new pod port its identity and, when the network has policies,
        its tables (and everyone else's: the new pod may be selected as a peer)."""
        port.identity = identity
        try:
            self._policy_changed()
        except BaseException:
            self.remove_port(port)
            raise
        return port

    @staticmethod
    def _open_netns(path: str, given: str) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"network namespace {path} does not exist") from None
        except OSError as exc:
            raise ConfigError("netns", given, f"a network namespace ({exc.strerror})") from None

    def attach_port(
        self,
        mac: str,
        ips: Sequence[str] = (),
        *,
        ifname: str,
        netns: str,
        port_security: bool = True,
        router: bool = False,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        named_ports: dict[str, tuple[int, str]] | None = None,
    ) -> Port:
        """Take back a pod's persistent TAP after a restart, where it lives now.

        ``netns`` (name or path) and ``ifname`` say where: typically the pod's
        namespace and ``eth0``, after ``add_port(..., persist=True)`` and
        ``move_to_netns`` by an earlier node. The TAP is opened from inside that
        namespace; the pod keeps its interface (same ifindex), addresses, MTU and
        routes, and traffic resumes once the remote side is programmed again.
        ``mac`` and ``ips`` are the port's as before (the MAC is set only if the
        device's differs). Nothing is created: a missing interface (or
        namespace) is a NotFoundError. A TAP another process still holds
        (another node) is a ConflictError. The node's ``workers`` must again be
        1, or again more than 1, as when the TAP was created (single- or
        multi-queue), else ConfigError.

        The returned port has ``netns`` set, ``ifname`` the name inside it and
        ``persist`` True: ``close`` leaves the device, ``remove_port`` deletes it.
        ``namespace``, ``labels`` and ``named_ports`` are as for ``add_port``;
        with policies in the network, its tables are set before this returns.
        """
        identity = check_identity(namespace, labels, named_ports)
        if not isinstance(ifname, str):
            raise ConfigError("ifname", ifname, "the interface's name in netns, like 'eth0'")
        if not isinstance(netns, str) or not netns:
            raise ConfigError("netns", netns, "a network namespace (name or path)")
        path = netns_path(netns)
        for net in self.node.networks.values():
            for p in net.ports:
                if p.netns == path and p.ifname == ifname:
                    raise ConflictError(
                        f"ifname={ifname!r} in {path} is already {p!r} of this node"
                    )
        raw, ifaces = self._check_port(mac, ips, ifname)
        fd = self._open_netns(path, netns)
        try:
            # With policies in force, the re-attached pod is isolated until its
            # tables are set (before this returns), as a new one is.
            port_id = self.node.engine.port_attach(
                self.vni,
                raw,
                ifname,
                fd,
                security=port_security,
                router=router,
                netns=path,
                policy_pending=self._policy.active,
            )
        finally:
            os.close(fd)
        port = self._program_port(
            port_id,
            ifname,
            raw,
            ifaces,
            port_security,
            persist=True,
            netns=path,
            reattached=True,
            router=router,
        )
        return self._with_identity(port, identity)

    def remove_port(self, port: Port) -> None:
        """Remove a port from the data plane and delete its TAP, persistent or not
        (in whichever namespace it lives now)."""
        if port not in self.ports:
            raise NotFoundError(f"{port!r} is not in vni={self.vni}")
        self.node.engine.port_del(port.id)
        self.ports.remove(port)
        if self._port_macs.get(port.mac) is port:
            del self._port_macs[port.mac]
        for ip in port.ips:
            if self._in_use.get(ip.ip) is port:
                del self._in_use[ip.ip]
        self._policy.tables.pop(port.id, None)
        self._policy_changed()

    @property
    def gateway(self) -> Port | None:
        """The network's gateway on this node (``add_gateway``), or None."""
        return next((p for p in self.ports if p.gateway), None)

    def add_gateway(
        self,
        mac: str,
        ips: Sequence[str],
        *,
        ifname: str | None = None,
        persist: bool = False,
        attach: bool = False,
        mtu: int | None = None,
        netns: str | None = None,
    ) -> Port:
        """Give the network a gateway on this node: a port whose other end is the
        node's own IP stack, a TAP named ``ifname`` (default ``ovg<vni>``) in the
        node's namespace.

        ``ips`` are the gateway's addresses with the network's prefix length
        (``"10.244.3.1/16"``: the node then has a connected route to every pod of
        the network, local or remote, and ARP/ND suppression answers for them);
        pods route through the first address of their family. The port may
        forward for addresses outside the network (any source address no
        endpoint of the network holds); everything else of port security holds.
        The namespace is made to forward (``overlay.gateway.prepare_forwarding``);
        NAT and isolation between networks are the node's rules
        (``overlay.gateway.NodeRules``). With ``persist`` the TAP outlives the
        node; ``attach`` takes back the TAP of an earlier node (addresses and
        routes are kept, not set again). ``netns`` (a name or path) puts the TAP in
        another namespace than the node's: an isolated gateway's router namespace
        (``overlay.gateway.make_router``). Blocks for netlink: from a coroutine,
        run it in a thread.
        """
        if self.gateway is not None:
            raise ConflictError(f"vni={self.vni} has a gateway already: {self.gateway!r}")
        ifname = f"ovg{self.vni}" if ifname is None else ifname
        raw, ifaces = self._check_port(mac, ips, ifname)
        if not ifaces:
            raise ConfigError("ips", list(ips), "at least one address, like 10.244.3.1/16")
        eng = self.node.engine
        path = netns_path(netns) if netns else None
        fd = self._open_netns(path, netns) if path and netns else -1
        try:
            if attach:
                port_id = eng.port_attach(self.vni, raw, ifname, fd, gateway=True, netns=path)
                name = ifname
            else:
                port_id, name = eng.port_add(
                    self.vni, raw, ifname, fd, gateway=True, persist=persist, netns=path
                )
        finally:
            if fd >= 0:
                os.close(fd)
        port = self._program_port(
            port_id, name, raw, ifaces, True, persist or attach, netns=path, reattached=attach
        )
        port.gateway = True
        port.router = True
        try:
            if not attach:
                port.configure(mtu=mtu)
            where = path or self.node.netns
            prepare_forwarding(where, name, {ip.version for ip in ifaces})
            self._policy_changed()  # its addresses are node addresses
        except BaseException:
            if not attach:
                self.remove_port(port)
            raise
        return port

    @property
    def uplink(self) -> Port | None:
        """The network's uplink on this node (``add_uplink``), or None."""
        return next((p for p in self.ports if p.uplink), None)

    def add_uplink(self, ifname: str) -> Port:
        """Make this an underlay network: put it on the physical L2 segment of the
        node's interface ``ifname`` (in the node's namespace) through a packet
        socket the engine adopts (``overlay.uplink``). Returns the uplink's port:
        port security off (it speaks for every station of the segment, whose MACs
        are learned behind it), MAC and name the interface's. Pods keep their port
        security; a plain host of the segment reaches them directly, and ARP for
        a pod's address is answered with the pod's MAC. An underlay network has
        no VTEPs and no remotes. One uplink per network, and per interface on a
        node. ``remove_port`` (or ``remove_network``) takes it away."""
        if self.uplink is not None:
            raise ConflictError(f"vni={self.vni} has an uplink already: {self.uplink!r}")
        if self.vteps or self.remotes:
            raise ConflictError(
                f"vni={self.vni} has VTEPs or remote pods: an underlay network has none; "
                "use a network of its own for the uplink"
            )
        for net in self.node.networks.values():
            up = net.uplink
            if up is not None and up.ifname == ifname:
                raise ConflictError(
                    f"uplink={ifname!r} is the uplink of vni={net.vni} already: "
                    "one segment, one network"
                )
        sock = open_uplink(ifname, self.node.netns)
        try:
            raw, _ = self._check_port(sock.mac, [], None)
            port_id = self.node.engine.port_add_fd(self.vni, sock.fd, raw, uplink=True)
        except BaseException:
            os.close(sock.fd)
            raise
        port = self._program_port(port_id, ifname, raw, [], False, False)
        port.uplink = True
        return port

    def add_vtep(self, address: str, port: int | None = None) -> None:
        """Make a remote VTEP a member: it gets flooded frames, and its packets are accepted."""
        if self.uplink is not None:
            raise ConflictError(f"vni={self.vni} is an underlay network (uplink): it has no VTEPs")
        if not self.tunnel:
            raise ConflictError(
                f"vni={self.vni} has no tunnel (add_network(tunnel=False)): it has no VTEPs; "
                "use a tunnel network for peers reached through VXLAN/Geneve"
            )
        addr = _parse_ip(address, "vtep")
        if addr.version != self.node.family:
            raise ConfigError(
                "vtep", address, f"an IPv{self.node.family} address like the underlay"
            )
        if port is not None and not model.UDP_PORT_MIN <= port <= model.UDP_PORT_MAX:
            raise ConfigError("port", port, model.UDP_PORT_EXPECTED)
        self.node.engine.vtep_add(self.vni, addr, port or 0)
        self.vteps.add(addr)

    def remove_vtep(self, address: str) -> None:
        addr = _parse_ip(address, "vtep")
        self.node.engine.vtep_del(self.vni, addr)
        self.vteps.discard(addr)

    def add_remote(
        self,
        mac: str,
        vtep: str,
        ip: str | Iterable[str] | None = None,
        port: int | None = None,
        *,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        named_ports: dict[str, tuple[int, str]] | None = None,
        gateway: bool = False,
    ) -> None:
        """A pod on another node: FDB (vni, mac) -> vtep, and neighbours for ARP/ND suppression.

        ``namespace`` (default ``default``), ``labels`` and ``named_ports`` are
        the remote pod's identity for network policy, as for ``add_port``;
        ``gateway``: this is another node's gateway on the network, not a pod
        (its addresses are node addresses: always allowed). Calling it again
        for the same MAC updates the remote; with policies in the network,
        every local port's tables are recompiled before this returns.
        """
        identity = check_identity(namespace, labels, named_ports)
        if self.uplink is not None:
            raise ConflictError(
                f"vni={self.vni} is an underlay network (uplink): pods of other nodes "
                "are reached on the segment, not programmed"
            )
        if not self.tunnel:
            raise ConflictError(
                f"vni={self.vni} has no tunnel (add_network(tunnel=False)): pods of other "
                "nodes are reached through the node's routes, not behind a VTEP"
            )
        raw = _check_unicast_mac(mac, "mac")
        addr = _parse_ip(vtep, "vtep")
        if addr.version != self.node.family:
            raise ConfigError("vtep", vtep, f"an IPv{self.node.family} address like the underlay")
        ips = [] if ip is None else [ip] if isinstance(ip, str) else list(ip)
        addrs = [_parse_ip(a, "ip") for a in ips]
        key = mac_str(raw)
        if key in self._port_macs:
            raise ConflictError(f"mac={mac!r} belongs to a local port in vni={self.vni}")
        for a in addrs:
            user = self._in_use.get(a)
            if user is not None and user != key:
                raise ConflictError(
                    f"ip={str(a)!r} is in use in vni={self.vni} by {self.address_user(a)}"
                )
        eng = self.node.engine
        old = self.remotes.get(key)
        eng.fdb_add(self.vni, raw, addr, port or 0)
        for a in addrs:
            eng.neigh_add(self.vni, a, raw)
        if old:
            for a in old[1]:
                if a not in addrs:
                    eng.neigh_del(self.vni, a)
                    self._in_use.pop(a, None)
        for a in addrs:
            self._in_use[a] = key
        self.remotes[key] = (addr, addrs)
        self._remote_ids[key] = identity
        if gateway:
            self._remote_gateways.add(key)
        else:
            self._remote_gateways.discard(key)
        self._policy_changed()

    def remove_remote(self, mac: str) -> None:
        key = mac_str(mac_bytes(mac, "mac"))
        if key not in self.remotes:
            raise NotFoundError(f"mac={mac!r} is not a remote of vni={self.vni}")
        _, ips = self.remotes.pop(key)
        for a in ips:
            if self._in_use.get(a) == key:
                del self._in_use[a]
        eng = self.node.engine
        eng.fdb_del(self.vni, mac_bytes(key))
        for a in ips:
            eng.neigh_del(self.vni, a)
        self._remote_ids.pop(key, None)
        self._remote_gateways.discard(key)
        self._policy_changed()

    def counters(self) -> dict[str, int]:
        return self.node.engine.network_counters(self.vni)

    # -- network policy -------------------------------------------------------

    def set_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Declare a Kubernetes namespace of this network with its ``labels``
        (``kubernetes.io/metadata.name`` is added). A namespace that pods name
        without being declared has no other label. With policies in force,
        the ports' tables are recompiled before this returns; a bad name or
        label raises ConfigError and changes nothing."""
        checked = check_namespace(name, labels)
        nss = self._policy.namespaces
        old = nss.get(name)
        nss[name] = checked
        try:
            self._policy_changed()
        except BaseException:
            if old is None:
                del nss[name]
            else:
                nss[name] = old
            raise

    def apply_policies(
        self,
        policies: Iterable[object] = (),
        *,
        admin: Iterable[object] = (),
        baseline: object = None,
        audit: bool = False,
    ) -> None:
        """Put this set of policies in force on every pod port of the network,
        both directions, replacing the set before (an empty set: no policy).

        ``policies``: NetworkPolicies (and any other kind, as ``policy.load``
        returns them), as Kubernetes objects (dicts) or ``overlay.policy``
        objects; ``admin``: AdminNetworkPolicies; ``baseline``: the
        BaselineAdminNetworkPolicy or None. ``audit``: denies are only counted
        (``policy_audit``) and reported (policy events), and the packets pass.
        Everything is checked and compiled before any table changes: a bad
        policy raises ConfigError naming the object and field and leaves the
        policy in force as it was. Established connections that the new set
        no longer allows are cut at their next packet."""
        if not isinstance(audit, bool):
            raise ConfigError("audit", audit, "True or False")
        pset = parse_policies(policies, admin, baseline)
        self._program_policy(pset, audit)

    def explain(self, src: str, dst: str, port: int, protocol: str = "TCP") -> Verdict:
        """Would a connection from ``src`` to ``dst``:``port``/``protocol`` be
        allowed, and which tier, policy and rule decides (``Verdict``: also the
        egress and ingress decisions)? Answered from the tables in force for
        local pods, and for a remote pod from its table compiled here from the
        same policies and world."""
        world = self._policy.world(self._members(), self._node_addresses())
        local = {str(ip.ip): p.id for p in self._pod_ports() for ip in p.ips}
        return self._policy.explain(
            world, src=src, dst=dst, port=port, protocol=protocol, local=local
        )

    def probe(self, src: str, dst: str, port: int, protocol: str = "TCP") -> Probed:
        """What the data plane's tables in force decide for a connection from
        ``src`` to ``dst``:``port``/``protocol`` (TCP, UDP, SCTP, ICMP; any
        case): the egress table of the local pod port that owns ``src`` and
        the ingress table of the one that owns ``dst``, each asked by the
        engine as the connection's first packet would be, with nothing
        counted, tracked or reported (``Engine.port_policy_probe``). An end
        that is no local pod has no say here. ``explain`` answers from what
        the policies compile to; where the two differ, a table in force is
        not what the policies say. ConfigError names ``src``, ``dst``,
        ``protocol`` or ``port``."""
        s, d = _parse_ip(src, "src"), _parse_ip(dst, "dst")
        probe_protocol(protocol, port, s.version)  # refused whether or not an end is local
        owners = {i.ip: p for p in self._pod_ports() for i in p.ips}
        eng = self.node.engine

        def at(owner: IPAddress, peer: IPAddress, direction: str) -> tuple[str, RuleRef] | None:
            p = owners.get(owner)
            if p is None:
                return None
            verdict, rule_id = eng.port_policy_probe(p.id, direction, str(peer), protocol, port)
            ref = self.policy_rule(rule_id)
            if ref.tier == "isolation":  # name the isolating policy, as policy_events does
                table = self.policy_table(p, direction)
                ref = RuleRef("isolation", table.isolated_by if table else None)
            return verdict, ref

        egress, ingress = at(s, d, "egress"), at(d, s, "ingress")
        allowed = all(end is None or end[0] != "deny" for end in (egress, ingress))
        return Probed(allowed, egress, ingress)

    def policy_table(self, port: Port, direction: str) -> PortTable | None:
        """The compiled table in force at ``port`` for ``direction`` (plain data:
        ``to_dict()``), or None before the network's first ``apply_policies``."""
        return self._policy.tables.get(port.id, {}).get(direction)  # type: ignore[call-overload]

    def policy_rule(self, rule_id: int) -> RuleRef:
        """What a rule id of a hit counter or a policy event stands for."""
        return self._policy.ids.ref(rule_id)

    @property
    def policy_active(self) -> bool:
        """True once the network has a policy set in force (an empty one too)."""
        return self._policy.active

    @property
    def namespaces(self) -> dict[str, dict[str, str]]:
        """The declared namespaces and their labels (``set_namespace``)."""
        return {k: dict(v) for k, v in self._policy.namespaces.items()}

    def update_policy(
        self,
        *,
        policies: PolicySet | None = None,
        namespaces: Mapping[str, Mapping[str, str]] | None = None,
        peers: Mapping[str, Peer | None] | None = None,
        peers_full: bool = False,
        audit: bool | None = None,
        force: bool = False,
    ) -> int:
        """Change what policy judges by, all at once, with one compile: the
        policy set (checked, ``overlay.policy.engine.parse_policies``), the
        namespaces (the whole set: name -> labels), other nodes' pods by MAC
        (``Peer``, None: gone; ``peers_full``: these are all of them) and
        ``audit``. What is not given stays. Only the ports whose tables differ
        are set; returns how many tables were put in force (0 for a change
        that changes nothing). ``force``: set every table again, also those
        that did not change (what repairs a table changed behind the control
        plane's back). A bad namespace raises ConfigError and changes
        nothing. This is what the agent's policy reconciler calls."""
        pol = self._policy
        nss = None
        if namespaces is not None:
            nss = {name: check_namespace(name, labels) for name, labels in namespaces.items()}
        old = (dict(pol.namespaces), dict(self._peers))
        if nss is not None:
            pol.namespaces = nss
        if peers is not None:
            if peers_full:
                self._peers = {m: p for m, p in peers.items() if p is not None}
            else:
                for mac, peer in peers.items():
                    if peer is None:
                        self._peers.pop(mac, None)
                    else:
                        self._peers[mac] = peer
        pset = policies if policies is not None else pol.policies
        if pset is None:
            return 0  # nothing in force and none given: identities are kept for later
        before = self.policy_swaps
        if self.node._policy_batch is not None:
            self.node._policy_batch.discard(self.vni)  # compiled here, with everything
        try:
            self._program_policy(pset, pol.audit if audit is None else bool(audit), force=force)
        except BaseException:
            pol.namespaces, self._peers = old
            raise
        return self.policy_swaps - before

    def _pod_ports(self) -> list[Port]:
        return [p for p in self.ports if not (p.gateway or p.uplink)]

    def _members(self) -> list[Member]:
        out = [
            Member(p.id, tuple(str(i.ip) for i in p.ips), p.identity, True)
            for p in self._pod_ports()
        ]
        for key, (_, addrs) in self.remotes.items():
            if key not in self._remote_gateways and key not in self._peers and addrs:
                ident = self._remote_ids.get(key, Identity())
                out.append(Member(key, tuple(str(a) for a in addrs), ident, False))
        for key, peer in self._peers.items():
            if not peer.gateway and peer.ips and key not in self._port_macs:
                out.append(Member(key, peer.ips, peer.identity, False))
        return out

    def _node_addresses(self) -> set[str]:
        """This network's gateway addresses on every node: the local gateway's,
        the remotes marked ``gateway`` and the peers that are gateways."""
        out = {str(i.ip) for p in self.ports if p.gateway for i in p.ips}
        for key in self._remote_gateways:
            out.update(str(a) for a in self.remotes.get(key, (None, []))[1])
        for peer in self._peers.values():
            if peer.gateway:
                out.update(str(ipaddress.ip_interface(a).ip) for a in peer.ips)
        return out

    def _policy_changed(self) -> None:
        """Identities, namespaces or members changed: recompile when policies
        are in force (once at the end of the node's ``policy_batch`` when one
        is open)."""
        pol = self._policy
        if pol.policies is None:
            return
        if self.node._policy_batch is not None:
            self.node._policy_batch.add(self.vni)
            return
        self._program_policy(pol.policies, pol.audit)

    def _program_policy(self, pset: Any, audit: bool, *, force: bool = False) -> None:
        """Compile every pod port's tables from ``pset``, then swap those that
        changed (all of them when ``audit`` changed or a port is new)."""
        pol = self._policy
        members = self._members()
        world = pol.world(members, self._node_addresses())
        compiled = pol.compile(world, [m for m in members if m.local], pset, audit)
        self.policy_compiles += 1
        eng = self.node.engine
        force = force or audit != pol.audit or pol.policies is None
        for pid, dirs in compiled.items():
            done = pol.tables.setdefault(pid, {})
            for d in POLICY_DIRECTIONS:
                table, rules = dirs[d]
                if not force and done.get(d) == table:
                    continue
                eng.port_policy_set(pid, d, rules, isolated=table.isolated, audit=audit)
                done[d] = table
                self.policy_swaps += 1
        pol.policies, pol.audit = pset, audit


class Node:
    """One VTEP: the data plane plus the networks and ports it hosts.

    ``netns`` names the namespace (name or path) whose underlay address the
    node binds and where its TAPs are born; by default, the caller's.
    ``mtu`` is the underlay MTU; pods get it less the encapsulation overhead,
    or all of it in a network without a tunnel (``add_network(tunnel=False)``).
    ``encap`` is the default of the node's networks, each of which may choose
    the other (``add_network(encap=...)``): each encapsulation has its tunnel
    port, ``port`` for ``encap`` and ``alt_port`` for the other (default: the
    IANA ports 4789 and 6081), the other's opened with its first network.
    ``conntrack_sessions`` (8 to 4,194,304) is what each worker's connection
    tracking holds: connections of pods with a policy, both directions.
    """

    def __init__(
        self,
        underlay: str,
        encap: Encap = Encap.VXLAN,
        *,
        port: int | None = None,
        alt_port: int | None = None,
        netns: str | None = None,
        mtu: int = 1500,
        udp_checksum: bool = True,
        source_ports: tuple[int, int] = (49152, 65535),
        source_port_slots: int = 16,
        workers: int = 1,
        batch: int = 64,
        max_ports: int = 1024,
        fdb_size: int = 65536,
        offloads: bool | Iterable[str] = True,
        busy_poll_us: int = 0,
        conntrack_sessions: int = 65536,
    ) -> None:
        addr = _parse_ip(underlay, "underlay")
        if not isinstance(encap, Encap):
            raise ConfigError("encap", encap, "Encap.VXLAN or Encap.GENEVE")
        if port is not None and not model.UDP_PORT_MIN <= port <= model.UDP_PORT_MAX:
            raise ConfigError("port", port, model.UDP_PORT_EXPECTED)
        if alt_port is not None and not model.UDP_PORT_MIN <= alt_port <= model.UDP_PORT_MAX:
            raise ConfigError("alt_port", alt_port, model.UDP_PORT_EXPECTED)
        if not model.UNDERLAY_MTU_MIN <= mtu <= model.UNDERLAY_MTU_MAX:
            raise ConfigError("mtu", mtu, model.UNDERLAY_MTU_EXPECTED)
        if offloads is True:
            mask = sum(_bindings.OFFLOADS.values())
        elif offloads is False:
            mask = 0
        else:
            names = [offloads] if isinstance(offloads, str) else list(offloads)
            bad = [n for n in names if n not in _bindings.OFFLOADS]
            if bad:
                raise ConfigError(
                    "offloads", bad, f"True, False or names from {sorted(_bindings.OFFLOADS)}"
                )
            mask = sum(_bindings.OFFLOADS[n] for n in set(names))
        self.underlay = addr
        self.family = addr.version
        self.encap = encap
        self.mtu = mtu
        self.netns = netns_path(netns) if netns else None
        # No inner frame can be larger than the underlay MTU plus its Ethernet
        # header (a network without a tunnel sends such frames unencapsulated):
        # that bounds buffers. A tunnel network's frames are held lower by the
        # engine (its frame_limit: the MTU less the tunnel's overhead).
        self.frame_max = mtu + 14
        fd = -1
        if self.netns:
            try:
                fd = os.open(self.netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise ConfigError("netns", netns, "an existing network namespace") from None
        try:
            self.engine = Engine(
                encap=encap.value,
                local=addr,
                udp_port=port or 0,
                alt_port=alt_port or 0,
                source_ports=source_ports,
                source_port_slots=source_port_slots,
                udp_checksum=udp_checksum,
                frame_max=self.frame_max,
                batch=batch,
                workers=workers,
                max_ports=max_ports,
                fdb_size=fdb_size,
                netns_fd=fd,
                offloads=mask,
                busy_poll_us=busy_poll_us,
                underlay_mtu=mtu,
                conntrack_sessions=conntrack_sessions,
            )
        finally:
            if fd >= 0:
                os.close(fd)
        self.port = self.engine.udp_port
        self.networks: dict[int, Network] = {}
        # Networks whose policy tables wait for the end of a policy_batch.
        self._policy_batch: set[int] | None = None
        self._known_options: set[tuple[int, int]] = set()

    def __repr__(self) -> str:
        return f"Node({str(self.underlay)!r}, {self.encap.name}, port={self.port})"

    @property
    def tunnel_ports(self) -> dict[str, int]:
        """Each encapsulation's tunnel port by name ("vxlan", "geneve"): what the
        node announces to its peers (``NodeSpec``)."""
        return {e.name.lower(): self.tunnel_port(e) for e in Encap}

    def tunnel_port(self, encap: Encap | None = None) -> int:
        """The UDP port the node takes ``encap``'s networks on (None: the node's
        encapsulation), and the port their VTEPs get when ``add_vtep`` names none."""
        return self.engine.tunnel_port((encap or self.encap).value)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pod_mtu(self, network: Network | None = None) -> int:
        """The MTU a pod gets: the underlay MTU less the encapsulation overhead; the
        whole underlay MTU in a network without a tunnel (routed, underlay)."""
        if network is not None and not network.tunnel:
            return self.mtu
        opts = sum(len(o.encode()) for o in network.geneve_options) if network else 0
        encap = network.encap if network is not None else self.encap
        return self.mtu - encap.overhead(self.family, opts)

    def add_network(
        self,
        vni: int,
        tenant: str,
        *,
        geneve_options: Iterable[GeneveOption] = (),
        learning: bool = False,
        tunnel: bool = True,
        encap: Encap | str | None = None,
    ) -> Network:
        """Host a network: one VNI, owned by one tenant.

        ``encap`` is the network's encapsulation (None: the node's): VXLAN and
        Geneve networks live side by side on one node, each on its own tunnel
        port (``tunnel_port``); Geneve options need a Geneve network.

        ``tunnel=False`` makes a network whose frames never leave encapsulated: a
        routed network (pods reach other nodes through the gateway and the node's
        routes) or an underlay network (``Network.add_uplink``). Its pods get the
        full underlay MTU (``pod_mtu``), and it takes no VTEPs and no remotes."""
        if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= _bindings.VNI_MAX:
            raise ConfigError("vni", vni, f"an integer 0-{_bindings.VNI_MAX}")
        if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
            raise ConfigError("tenant", tenant, "1-63 characters of [A-Za-z0-9_.-]")
        if vni in self.networks:
            owner = self.networks[vni].tenant
            raise ConflictError(f"vni={vni} exists already (tenant {owner!r}); choose another VNI")
        if isinstance(encap, str) and encap.upper() in Encap.__members__:
            encap = Encap[encap.upper()]  # a NetworkSpec's name; "": the node's
        elif encap == "":
            encap = None
        if encap is not None and not isinstance(encap, Encap):
            raise ConfigError(
                "encap",
                encap,
                'Encap.VXLAN, Encap.GENEVE ("vxlan", "geneve") or None (the node\'s)',
            )
        enc = encap or self.encap
        opts = tuple(geneve_options)
        tlv = b"".join(o.encode() for o in opts)
        if opts and enc is not Encap.GENEVE:
            raise ConfigError(
                "geneve_options", opts, "options need a Geneve network (encap=Encap.GENEVE)"
            )
        if len(tlv) > 252:
            raise ConfigError("geneve_options", opts, "at most 252 bytes of options in all")
        if not isinstance(tunnel, bool):
            raise ConfigError("tunnel", tunnel, "True or False")
        if opts and not tunnel:
            raise ConfigError("geneve_options", opts, "none: a network without a tunnel")
        # The node's encapsulation is the default of its networks; the engine
        # keeps it per network (its header, its tunnel port).
        self.engine.network_add(vni, learning=learning, encap=enc.value, tunnel=tunnel)
        try:
            if tlv:
                self.engine.network_set_options(vni, tlv)
                for o in opts:
                    self.know_option(o.cls, o.type)
        except Exception:
            self.engine.network_del(vni)
            raise
        net = Network(self, vni, tenant, opts, learning, tunnel, enc)
        self.networks[vni] = net
        return net

    @contextlib.contextmanager
    def policy_batch(self) -> Iterator[None]:
        """Within it, changes that make a network recompile its policy tables
        (remotes added or removed, identities) compile each network once, at
        the end, instead of once per change: the agent programs a batch of
        store changes this way. Nested batches are one."""
        if self._policy_batch is not None:
            yield
            return
        self._policy_batch = set()
        try:
            yield
        finally:
            dirty, self._policy_batch = self._policy_batch, None
            for vni in sorted(dirty):
                net = self.networks.get(vni)
                if net is not None:
                    net._policy_changed()

    def network(self, vni: int) -> Network:
        try:
            return self.networks[vni]
        except KeyError:
            raise NotFoundError(f"vni={vni} is not hosted on this node") from None

    def remove_network(self, vni: int) -> None:
        net = self.network(vni)
        for p in list(net.ports):
            net.remove_port(p)
        self.engine.network_del(vni)
        del self.networks[vni]

    def know_option(self, cls: int, type_: int) -> None:
        """Accept Geneve packets carrying this option even when marked critical."""
        if (cls, type_ & 0x7F) not in self._known_options:
            self.engine.known_option_add(cls, type_)
            self._known_options.add((cls, type_ & 0x7F))

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()

    def close(self) -> None:
        """Stop the workers and release everything; non-persistent TAPs disappear."""
        self.engine.close()

    def counters(self) -> dict[str, Any]:
        """Every counter in one dict: engine totals, drops by reason, per network, per port."""
        totals = self.engine.counters()
        drops = {k: v for k, v in totals.items() if k in _bindings.DROP_REASONS}
        stats = {k: v for k, v in totals.items() if k not in _bindings.DROP_REASONS}
        return {
            "offloads": self.engine.offloads,
            "node": stats,
            "drops": drops,
            "networks": {vni: net.counters() for vni, net in self.networks.items()},
            "ports": {
                p.id: {
                    "vni": net.vni,
                    "ifname": p.ifname,
                    "netns": p.netns,
                    "mac": p.mac,
                    **p.counters(),
                }
                for net in self.networks.values()
                for p in net.ports
            },
        }

    def fdb(self) -> list[FdbEntry]:
        return self.engine.fdb_dump()

    @property
    def event_fd(self) -> int:
        return self.engine.event_fd

    def events(self) -> list[Event]:
        """Drain queued data-plane events (misses, MACs seen, learned MACs, and
        policy verdicts: ``kind == "policy"``, see ``policy_events``)."""
        return self.engine.events()

    def policy_events(self, events: Iterable[Event]) -> list[PolicyEvent]:
        """The policy verdicts among ``events`` (as ``events()`` drained them),
        each with the port and the rule (tier, policy, rule index) that gave it.
        The engine reports denies and audited denies, at most once a second
        per port, direction, rule and verdict."""
        out = []
        for ev in events:
            v = ev.policy
            if ev.kind != "policy" or v is None:
                continue
            net = self.networks.get(ev.vni)
            port = None
            if net is not None and ev.port_id is not None:
                port = next((p for p in net.ports if p.id == ev.port_id), None)
            ref = net.policy_rule(v.rule_id) if net is not None else RuleRef("unknown")
            if ref.tier == "isolation" and net is not None and port is not None:
                table = net.policy_table(port, v.direction)  # name the isolating policy
                ref = RuleRef("isolation", table.isolated_by if table else None)
            out.append(
                PolicyEvent(
                    v.verdict,
                    v.direction,
                    ev.vni,
                    port,
                    ref.tier,
                    ref.policy,
                    ref.rule,
                    v.proto,
                    v.src,
                    v.dst,
                    v.sport,
                    v.dport,
                )  # fmt: skip
            )
        return out

    def watch_events(self, loop: Any, callback: Callable[[Event], None]) -> None:
        """Call callback for every event from the asyncio loop (stdlib or uvloop)."""

        def _ready() -> None:
            for ev in self.events():
                try:
                    callback(ev)
                except Exception:  # a callback never breaks the loop
                    loop.call_exception_handler({"message": "event callback failed", "event": ev})

        loop.add_reader(self.event_fd, _ready)
