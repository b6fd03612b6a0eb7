"""Plain data of the control plane: tenants, networks, nodes, endpoints.

These are what the store holds (as JSON) and what the agent reconciles into a
``Node``. Each class validates itself on construction and raises
``ConfigError`` naming the field; ``from_json`` turns store bytes back into an
object, so a malformed value written by hand is caught at one place (the
agent logs it with its key and skips it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from typing import Any

from overlay.errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
VNI_MAX = 0xFFFFFF
ENCAPS = ("vxlan", "geneve")


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(field, value, "1-63 characters of [A-Za-z0-9_.-], starting alphanumeric")
    return value


def _vni(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= VNI_MAX:
        raise ConfigError(field, value, f"an integer 0-{VNI_MAX}")
    return value


def _mac(value: object, field: str) -> str:
    if not isinstance(value, str) or not _MAC_RE.match(value.lower()):
        raise ConfigError(field, value, "a MAC like 02:00:00:00:01:02")
    if int(value[:2], 16) & 1:
        raise ConfigError(field, value, "a unicast MAC")
    return value.lower()


@dataclasses.dataclass(frozen=True)
class Tenant:
    name: str

    def __post_init__(self) -> None:
        _name(self.name, "tenant.name")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A network: one VNI, one tenant, a cluster CIDR that nodes lease subnets of."""

    vni: int
    tenant: str
    cidr: str = "10.244.0.0/16"
    encap: str = "vxlan"
    subnet_prefix: int = 24  # the size of each node's subnet lease
    learning: bool = False

    def __post_init__(self) -> None:
        _vni(self.vni, "network.vni")
        _name(self.tenant, "network.tenant")
        try:
            net = ipaddress.ip_network(self.cidr)
        except (ValueError, TypeError):
            raise ConfigError("network.cidr", self.cidr, "a network like 10.244.0.0/16") from None
        if self.encap not in ENCAPS:
            raise ConfigError("network.encap", self.encap, f"one of {ENCAPS}")
        top = 32 if net.version == 4 else 128
        if (
            isinstance(self.subnet_prefix, bool)
            or not isinstance(self.subnet_prefix, int)
            or not net.prefixlen <= self.subnet_prefix <= top - 2
        ):
            raise ConfigError(
                "network.subnet_prefix", self.subnet_prefix, f"{net.prefixlen}-{top - 2}"
            )

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """A node: its name, underlay address (its VTEP) and the VNIs it hosts."""

    name: str
    underlay: str
    networks: tuple[int, ...] = ()
    port: int = 0  # 0: the encapsulation's default

    def __post_init__(self) -> None:
        _name(self.name, "node.name")
        try:
            ipaddress.ip_address(self.underlay)
        except ValueError:
            raise ConfigError("node.underlay", self.underlay, "an IPv4 or IPv6 address") from None
        for v in self.networks:
            _vni(v, "node.networks")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError("node.port", self.port, "0-65535")
        object.__setattr__(self, "networks", tuple(self.networks))


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A pod's attachment: network, MAC, addresses, the node it lives on, labels."""

    vni: int
    mac: str
    ips: tuple[str, ...]
    node: str
    name: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _vni(self.vni, "endpoint.vni")
        object.__setattr__(self, "mac", _mac(self.mac, "endpoint.mac"))
        for ip in self.ips:
            try:
                ipaddress.ip_interface(ip)
            except ValueError:
                raise ConfigError("endpoint.ips", ip, "addresses like 10.244.1.2/24") from None
        object.__setattr__(self, "ips", tuple(self.ips))
        _name(self.node, "endpoint.node")
        if not isinstance(self.labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            raise ConfigError("endpoint.labels", self.labels, "a mapping of strings to strings")


def to_json(obj: Any) -> bytes:
    return json.dumps(dataclasses.asdict(obj), sort_keys=True, separators=(",", ":")).encode()


def from_json(cls: type[Any], data: bytes) -> Any:
    """Decode store bytes into cls; ConfigError naming what is wrong."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(cls.__name__, data[:60], f"JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(cls.__name__, raw, "a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(cls.__name__, sorted(unknown), f"only fields {sorted(names)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(cls.__name__, raw, str(exc)) from None
