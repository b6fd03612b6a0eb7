"""Plain data of the control plane: networks, nodes, endpoints.

These are what the store holds (as JSON) and what the agent reconciles into a
``Node``. Each class validates itself on construction and raises
``ConfigError`` naming the field; ``from_json`` turns store bytes back into an
object, so a malformed value written by hand is caught at one place (the
agent logs it with its key and skips it).

Design notes: bounds. Every node decodes every record of the networks it
hosts, so a record is refused *before* it costs memory: ``from_json`` looks
at the byte size first (``RECORD_BYTES_MAX``), and each field has a bound of
its own (addresses per endpoint, networks per node, labels by Kubernetes'
rules), raising ``TooLarge`` (a ``ConfigError``) so that callers can count
size refusals apart from malformed values. The bounds are far above what the
product writes itself: a pod has one or two addresses, Kubernetes labels fit
its own rules, and a pod's name is at most 253 characters.

- Labels follow Kubernetes: a key is an optional DNS-subdomain prefix of at
  most 253 characters and ``/``, then a name of at most 63 characters
  (alphanumerics at both ends, ``-_.`` inside); a value is empty or the same
  alphabet. One deliberate difference: a value may be 253 characters long,
  not 63, because the CNI plugin labels an endpoint with its pod's name
  (``io.kubernetes.pod.name``), and Kubernetes allows pod names of 253.
- Named container ports (``Endpoint.ports``, what a policy's ``port:
  http`` resolves to on the pod) follow Kubernetes too: a name is an IANA
  service name (1-15 characters of lowercase letters, digits and ``-``, at
  least one letter, no ``-`` at either end or twice in a row), a number
  1-65535, a protocol TCP, UDP or SCTP (upper-cased); at most 64 of them.
- A field added to a record after a release that refuses unknown fields
  (``from_json``) is left out of the JSON while it is empty
  (``OMIT_EMPTY`` in its metadata): the records that do not use it stay
  byte-identical, and nodes of that release keep reading them.
- Types are exact: JSON ``true`` is not the integer 1, a CIDR or an underlay
  address is a string (``ipaddress`` would accept an integer), a list of
  addresses is a list.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import sys
from typing import Any

from overlay.errors import ConfigError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# The highest VNI (24 bits, RFC 7348 and 8926). Defined here once: the daemon,
# the CNI plugin and IPAM import it; the data plane's ``OVL_VNI_MAX`` (read
# from the C header by the bindings) is checked equal by tests/control.
VNI_MAX = 0xFFFFFF
ENCAPS = ("vxlan", "geneve")
# How a network's pods meet pods on other nodes (issue: overlay, native L3,
# underlay): "overlay" encapsulates (VXLAN/Geneve, one VNI per network);
# "routed" sends plain IP, each node's subnet reached through that node (routes
# the node programs on one segment, BGP where routers are between); "auto" is
# routed to peers on this node's underlay subnet and encapsulated to the rest;
# "underlay" attaches pods to the physical L2 network of the node's uplink.
MODES = ("overlay", "routed", "auto", "underlay")
# The modes whose networks encapsulate (to every peer, or to the peers behind a
# router): their pods' MTU is the underlay's less the tunnel's overhead, one
# number for all their peers. Routed and underlay networks never encapsulate
# and give pods the full underlay MTU (``Node.add_network(tunnel=False)``).
TUNNEL_MODES = ("overlay", "auto")
# Where a network's gateway lives on each node (overlay.gateway): "node" (the
# node's namespace: host <-> pods, Services, egress), "isolated" (a router
# namespace of its own behind the node: egress only, for a tenant whose
# addresses overlap another's), "none".
GATEWAYS = ("node", "isolated", "none")

# A node's bounds, in one place for every layer that checks them (overlayd's
# file, ``Node``, ``Engine``), each with the one way its refusal is worded.
UDP_PORT_MIN, UDP_PORT_MAX = 1, 65535
UDP_PORT_EXPECTED = f"a UDP port {UDP_PORT_MIN}-{UDP_PORT_MAX}"
# 576: what every IPv4 host must accept (RFC 791); 65000: the most one UDP GSO
# send carries (native OVL_GSO_BYTES_MAX), and a frame is at most the MTU.
UNDERLAY_MTU_MIN, UNDERLAY_MTU_MAX = 576, 65000
UNDERLAY_MTU_EXPECTED = f"the underlay MTU, {UNDERLAY_MTU_MIN}-{UNDERLAY_MTU_MAX} bytes"
WORKERS_MAX = 16  # native OVL_MAX_WORKERS (engine.h): one TAP queue per worker
WORKERS_EXPECTED = f"1-{WORKERS_MAX} worker threads"

# Bounds of what a record may hold (see the module's design notes).
RECORD_BYTES_MAX = 32 * 1024  # one JSON value in the store
ENDPOINT_IPS_MAX = 8  # addresses of one endpoint (a dual-stack pod has 2)
ENDPOINT_NAME_MAX = 320  # "<namespace>/<pod>": 63 + 1 + 253, and some slack
NODE_NETWORKS_MAX = 4096  # networks one node hosts
LABELS_MAX = 64  # labels of one endpoint
LABEL_NAME_MAX = 63  # Kubernetes: the name segment of a key
LABEL_PREFIX_MAX = 253  # Kubernetes: the DNS-subdomain prefix of a key
LABEL_VALUE_MAX = 253  # Kubernetes says 63; see the design notes
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
NAMED_PORTS_MAX = 64  # named container ports of one endpoint
PORT_NAME_MAX = 15  # Kubernetes' IANA_SVC_NAME
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
_PORT_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*")
# Field metadata: leave the field out of ``to_json`` while it is empty (see the notes).
OMIT_EMPTY = {"omit_empty": True}


class TooLarge(ConfigError):
    """A record or one of its fields is over its bound (the record is refused unread)."""


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigError(field, value, "1-63 characters of [A-Za-z0-9_.-], starting alphanumeric")
    return value


def _vni(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= VNI_MAX:
        raise ConfigError(field, value, f"an integer 0-{VNI_MAX}")
    return value


def _int(value: object, field: str, lo: int, hi: int, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(field, value, expected)
    return value


def _bounded_list(value: object, field: str, most: int, what: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(field, value, f"a list of {what}")
    if len(value) > most:
        raise TooLarge(field, f"{len(value)} items", f"at most {most} {what}")
    return value


def check_label(key: object, value: object, field: str = "endpoint.labels") -> None:
    """A label as Kubernetes accepts it (values up to 253 characters: see the notes)."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise ConfigError(field, {key: value}, "a mapping of strings to strings")
    prefix, slash, name = key.rpartition("/")
    if len(name) > LABEL_NAME_MAX or len(prefix) > LABEL_PREFIX_MAX:
        raise TooLarge(
            field,
            key[:80],
            f"a key of at most {LABEL_PREFIX_MAX} characters of prefix, '/' and "
            f"{LABEL_NAME_MAX} of name",
        )
    if not _LABEL_NAME_RE.fullmatch(name) or (slash and not _DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        raise ConfigError(
            field,
            key,
            "a key like 'app' or 'example.com/app': a name of [A-Za-z0-9_.-] starting and "
            "ending alphanumeric, after an optional lowercase DNS prefix and '/'",
        )
    if len(value) > LABEL_VALUE_MAX:
        raise TooLarge(field, f"{key}={value[:40]}...", f"a value of at most {LABEL_VALUE_MAX}")
    if value and not _LABEL_NAME_RE.fullmatch(value):
        raise ConfigError(
            field, {key: value}, "a value of [A-Za-z0-9_.-] starting and ending alphanumeric, or ''"
        )


def check_named_ports(value: object, field: str = "endpoint.ports") -> dict[str, tuple[int, str]]:
    """A pod's named container ports as Kubernetes accepts them (see the notes),
    normalised: name -> (number, protocol upper-cased), a JSON list ``[80, "TCP"]``
    taken as the pair. ConfigError names ``field`` or ``field[name]``; TooLarge
    over ``NAMED_PORTS_MAX``."""
    if not isinstance(value, dict):
        raise ConfigError(
            field, value, "a mapping of port names to (number, protocol): {'http': (80, 'TCP')}"
        )
    if len(value) > NAMED_PORTS_MAX:
        raise TooLarge(field, f"{len(value)} ports", f"at most {NAMED_PORTS_MAX} named ports")
    out: dict[str, tuple[int, str]] = {}
    for name, pair in value.items():
        where = f"{field}[{name!r}]"
        check_port_name(name, where)
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ConfigError(where, pair, "a (number, protocol) pair like (80, 'TCP')")
        out[name] = (
            check_port_number(pair[0], f"{where}[0]"),
            check_port_protocol(pair[1], f"{where}[1]"),
        )
    return out


def check_port_name(value: object, field: str) -> str:
    """A container port's name: an IANA service name, as Kubernetes has it."""
    if (
        not isinstance(value, str)
        or len(value) > PORT_NAME_MAX
        or not _PORT_NAME_RE.fullmatch(value)
        or not any(c.isalpha() for c in value)
    ):
        raise ConfigError(
            field,
            value,
            f"a port name (IANA service name): 1-{PORT_NAME_MAX} lowercase letters, digits "
            "or '-', at least one letter, no '-' at the ends or twice in a row",
        )
    return value


def check_port_number(value: object, field: str) -> int:
    return _int(value, field, 1, 65535, "a port number 1-65535")


def check_port_protocol(value: object, field: str) -> str:
    """TCP, UDP or SCTP in any case; returned upper-cased."""
    protocol = value.upper() if isinstance(value, str) else None
    if protocol is None or protocol not in PORT_PROTOCOLS:
        raise ConfigError(field, value, "TCP, UDP or SCTP")
    return protocol


def _mac(value: object, field: str) -> str:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value.lower()):
        raise ConfigError(field, value, "a MAC like 02:00:00:00:01:02")
    if int(value[:2], 16) & 1:
        raise ConfigError(field, value, "a unicast MAC")
    low = value.lower()
    return value if low == value else low  # keep one string, not two equal ones


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A network: one VNI, one tenant, a cluster CIDR that nodes lease subnets of."""

    vni: int
    tenant: str
    cidr: str = "10.244.0.0/16"
    # The network's encapsulation (ENCAPS), the same on every node: each node
    # takes it on its tunnel port for it (``NodeSpec.tunnel_port``). "": each
    # node's own (``Node``'s encap), as before networks chose their own.
    encap: str = ""
    subnet_prefix: int = 24  # the size of each node's subnet lease
    learning: bool = False
    # A gateway on every node that hosts the network (overlay.gateway, GATEWAYS):
    # the node reaches the pods, the pods the node, Services and the outside.
    # Made by overlayd (and by ``Agent.add_gateway`` for an embedding program).
    # True and False are read as "node" and "none".
    gateway: str = "node"
    masquerade: bool = True  # egress through the gateway is masqueraded to the node
    mode: str = "overlay"  # MODES
    # An underlay network's router on the physical segment (an address of the
    # cidr, "" for none): its pods get their default route through it.
    router: str = ""

    def __post_init__(self) -> None:
        _vni(self.vni, "network.vni")
        _name(self.tenant, "network.tenant")
        try:
            if not isinstance(self.cidr, str):
                raise TypeError
            net = ipaddress.ip_network(self.cidr)
        except (ValueError, TypeError):
            raise ConfigError("network.cidr", self.cidr, "a network like 10.244.0.0/16") from None
        for key in ("learning", "masquerade"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"network.{key}", getattr(self, key), "true or false")
        if isinstance(self.gateway, bool):
            object.__setattr__(self, "gateway", "node" if self.gateway else "none")
        if not isinstance(self.gateway, str) or self.gateway not in GATEWAYS:
            raise ConfigError(
                "network.gateway", self.gateway, f"one of {GATEWAYS} (true: node, false: none)"
            )
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ConfigError("network.mode", self.mode, f"one of {MODES}")
        if self.gateway == "isolated" and self.mode != "overlay":
            raise ConfigError(
                "network.gateway",
                self.gateway,
                f'"node" or "none": a {self.mode} network carries no VNI, so its addresses '
                "cannot overlap another's and need no isolated gateway",
            )
        if self.gateway == "isolated" and not self.masquerade:
            raise ConfigError(
                "network.masquerade",
                False,
                "true: pods behind an isolated gateway reach the outside only masqueraded",
            )
        if not isinstance(self.encap, str) or self.encap not in (*ENCAPS, ""):
            raise ConfigError(
                "network.encap", self.encap, f'one of {ENCAPS}, or "" for each node\'s own'
            )
        top = 32 if net.version == 4 else 128
        if (
            isinstance(self.subnet_prefix, bool)
            or not isinstance(self.subnet_prefix, int)
            or not net.prefixlen <= self.subnet_prefix <= top - 2
        ):
            raise ConfigError(
                "network.subnet_prefix", self.subnet_prefix, f"{net.prefixlen}-{top - 2}"
            )
        if not isinstance(self.router, str):
            raise ConfigError("network.router", self.router, "an address like 198.18.1.1")
        if self.router:
            if self.mode != "underlay":
                raise ConfigError(
                    "network.router",
                    self.router,
                    f'none in mode "{self.mode}": pods of an "underlay" network route '
                    "through the segment's router; other modes route through the node's "
                    "gateway",
                )
            try:
                router = ipaddress.ip_address(self.router)
            except ValueError:
                raise ConfigError(
                    "network.router", self.router, "an address like 198.18.1.1"
                ) from None
            # Pods never get the first host of a node subnet (ipam: it is kept for
            # a gateway, and an underlay network has none): the one place in the
            # cidr where the router cannot collide with a pod.
            step = 1 << (top - self.subnet_prefix)
            offset = int(router) - int(net.network_address)
            if router not in net or offset % step != 1:
                first = [str(net.network_address + i * step + 1) for i in range(2)]
                raise ConfigError(
                    "network.router",
                    self.router,
                    f"the first host of one of the /{self.subnet_prefix} node subnets of "
                    f"{self.cidr} ({first[0]}, {first[1]}, ...): an address no pod is given",
                )

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def tunnel(self) -> bool:
        """Whether the network encapsulates (TUNNEL_MODES)."""
        return self.mode in TUNNEL_MODES


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node: its name, underlay address (its VTEP) and the VNIs it hosts."""

    name: str
    underlay: str
    networks: tuple[int, ...] = ()
    port: int = 0  # 0: the encapsulation's default
    # The node's tunnel port of each encapsulation, where its networks of that
    # encapsulation are sent; 0: not announced, ``port`` then serves every
    # network (records of nodes with one encapsulation).
    vxlan_port: int = 0
    geneve_port: int = 0

    def __post_init__(self) -> None:
        _name(self.name, "node.name")
        try:
            if not isinstance(self.underlay, str):
                raise TypeError
            ipaddress.ip_address(self.underlay)
        except (ValueError, TypeError):
            raise ConfigError("node.underlay", self.underlay, "an IPv4 or IPv6 address") from None
        nets = _bounded_list(self.networks, "node.networks", NODE_NETWORKS_MAX, "VNIs")
        for v in nets:
            _vni(v, "node.networks")
        _int(self.port, "node.port", 0, 65535, "0-65535")
        _int(self.vxlan_port, "node.vxlan_port", 0, 65535, "0-65535")
        _int(self.geneve_port, "node.geneve_port", 0, 65535, "0-65535")
        object.__setattr__(self, "networks", tuple(nets))

    def tunnel_port(self, encap: str) -> int:
        """The port to send this node a network of ``encap`` ("vxlan", "geneve",
        "": the node's own) on; 0: the receiver's default for it."""
        own = self.vxlan_port if encap == "vxlan" else self.geneve_port if encap == "geneve" else 0
        return own or self.port


# Labels of a pod's Kubernetes namespace (its policy namespace; "default" without) and name.
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_LABEL = "io.kubernetes.pod.name"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """A pod's attachment: network, MAC, addresses, the node it lives on, labels,
    named container ports."""

    vni: int
    mac: str
    ips: tuple[str, ...]
    node: str
    name: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    # The pod's named container ports, name -> (number, protocol): what a
    # policy's named port resolves to on this pod (``check_named_ports``).
    # Left out of the JSON while empty (OMIT_EMPTY): the record of a pod
    # without named ports is byte-identical to the previous release's, whose
    # agents refuse a record with a field they do not know.
    ports: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict, metadata=OMIT_EMPTY)

    def __post_init__(self) -> None:
        _vni(self.vni, "endpoint.vni")
        object.__setattr__(self, "mac", _mac(self.mac, "endpoint.mac"))
        ips = _bounded_list(self.ips, "endpoint.ips", ENDPOINT_IPS_MAX, "addresses")
        seen = set()
        for ip in ips:
            try:
                if not isinstance(ip, str):
                    raise TypeError
                addr = ipaddress.ip_interface(ip).ip
            except (ValueError, TypeError):
                raise ConfigError("endpoint.ips", ip, "addresses like 10.244.1.2/24") from None
            if addr in seen:
                raise ConfigError("endpoint.ips", ip, "each address once")
            seen.add(addr)
        object.__setattr__(self, "ips", tuple(ips))
        # A node's name recurs in every endpoint of the node: one string for all.
        object.__setattr__(self, "node", sys.intern(_name(self.node, "endpoint.node")))
        if not isinstance(self.name, str):
            raise ConfigError("endpoint.name", self.name, "a string")
        if len(self.name) > ENDPOINT_NAME_MAX:
            raise TooLarge(
                "endpoint.name", self.name[:60], f"at most {ENDPOINT_NAME_MAX} characters"
            )
        if not isinstance(self.labels, dict):
            raise ConfigError("endpoint.labels", self.labels, "a mapping of strings to strings")
        if len(self.labels) > LABELS_MAX:
            raise TooLarge("endpoint.labels", f"{len(self.labels)} labels", f"at most {LABELS_MAX}")
        for k, v in self.labels.items():
            check_label(k, v)
        object.__setattr__(self, "ports", check_named_ports(self.ports))


def to_json(obj: Any) -> bytes:
    """A record as store bytes: compact, keys sorted; a field marked ``OMIT_EMPTY``
    is left out while it is empty (see the notes)."""
    d = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if f.metadata.get("omit_empty") and not d[f.name]:
            del d[f.name]
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def from_json(cls: type[Any], data: bytes) -> Any:
    """Decode store bytes into cls; ConfigError naming what is wrong (``TooLarge`` for
    a value over ``RECORD_BYTES_MAX``, which is refused before it is parsed)."""
    if len(data) > RECORD_BYTES_MAX:
        raise TooLarge(cls.__name__, f"{len(data)} bytes", f"at most {RECORD_BYTES_MAX} bytes")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(cls.__name__, data[:60], f"JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(cls.__name__, _short(raw), "a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(cls.__name__, _short(sorted(unknown)), f"only fields {sorted(names)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(cls.__name__, sorted(raw), str(exc)) from None
    except ConfigError as exc:  # the message goes to a log: keep a hostile value short
        raise type(exc)(exc.field, _short(exc.value), exc.expected) from None


def _short(value: object, most: int = 80) -> object:
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= most:
        return value
    return text[: most - 3] + "..."
