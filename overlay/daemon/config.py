"""overlayd's configuration file (TOML): parsed and checked in full before anything starts.

Design notes. The daemon must never start half-configured, and a reload
(SIGHUP) must leave running state untouched when the new file is bad. So the
whole file is turned into one immutable ``DaemonConfig`` first; every problem
raises ``ConfigError`` naming the key (dotted path), the bad value and what is
expected — the first problem found, in file order.

    [node]
    name = "node-a"
    underlay = "198.18.0.1"        # or: interface = "eth1" (its first address)
    encap = "vxlan"                # or "geneve"
    port = 4789                    # optional: the encapsulation's default
    mtu = 1500                     # the underlay MTU
    workers = 1
    netns = ""                     # optional: the namespace holding the underlay (name or path)
    state_dir = "/var/lib/overlay" # attachments, kept across restarts

    [store]
    kind = "memory"                # or "etcd"
    endpoints = ["http://127.0.0.1:2379"]   # etcd only; https:// for TLS
    ttl = 10
    # etcd only, with https:// endpoints (flannel's -etcd-cafile/-certfile/-keyfile,
    # etcdctl's --cacert/--cert/--key/--user):
    # ca_file = "/etc/overlay/etcd/ca.pem"         the CA of etcd's certificate
    # cert_file = "/etc/overlay/etcd/client.pem"   a client certificate and its key,
    # key_file = "/etc/overlay/etcd/client.key"    when etcd has --client-cert-auth
    # username = "overlay"                         when etcd has auth enabled;
    # password_file = "/etc/overlay/etcd/password" its password (or password = "..."
    #                                              in this file, then mode 600)

    [[store.peers]]                # memory only: static peers
    name = "node-b"
    underlay = "198.18.0.2"
    networks = [100]
    # subnets = ["10.244.9.0/24"]  # its pods' subnet per network, where it is fixed
                                   # (a kernel-only node of a routed network)

    [api]
    socket = "/run/overlay/overlayd.sock"

    [metrics]
    address = "127.0.0.1:9469"     # "" turns the endpoint off

    [log]
    level = "info"

    [health]
    enabled = true                 # probe every peer through the overlay
    vni = 16777215                 # the probes' own network (reserved: no [[networks]] may use it)
    interval = 1.0                 # seconds between probes

    [policy]
    verify_interval = 10.0         # seconds between rounds of the verification probe
                                   # (the data plane's tables against the policies); 0: off
    verify_budget = 4000           # truth-table cells checked per round

    [bgp]                          # optional: announce this node's subnets of routed
    asn = 65001                    # networks to routers and learn the others' (overlay.bgp)
    router_id = "198.18.0.1"       # optional: the node's underlay IPv4 address
    peers = [{ address = "198.18.0.254", asn = 65000 }]

    [[networks]]
    vni = 100
    tenant = "blue"
    cidr = "10.244.0.0/16"
    subnet_prefix = 24
    mode = "overlay"               # or "routed", "auto", "underlay"
    encap = "geneve"               # optional: [node] encap by default; each encapsulation
                                   # has its tunnel port (VXLAN 4789, Geneve 6081; [node]
                                   # port is the one of [node] encap)
    gateway = true                 # the node's way in and out: host <-> pods, Services, egress;
                                   # "isolated": a router namespace of its own (egress only)
    masquerade = true              # egress to outside the network leaves as the node's address
    # router = "198.18.1.1"        # mode "underlay" only: the segment's router, the pods'
                                   # default route (the first host of a node subnet)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
import stat
import tomllib
from collections.abc import Mapping
from typing import Any

from overlay.bgp import ASN_EXPECTED, BgpPeer, SpeakerConfig
from overlay.control.etcd_security import check_security
from overlay.daemon.client import DEFAULT_SOCKET
from overlay.errors import ConfigError
from overlay.gateway import TRANSIT_SLOTS
from overlay.model import (
    MODES,
    UDP_PORT_EXPECTED,
    UDP_PORT_MAX,
    UDP_PORT_MIN,
    UNDERLAY_MTU_EXPECTED,
    UNDERLAY_MTU_MAX,
    UNDERLAY_MTU_MIN,
    VNI_MAX,
    WORKERS_EXPECTED,
    WORKERS_MAX,
    NetworkSpec,
    NodeSpec,
)
from overlay.wire import GENEVE_PORT, VXLAN_PORT

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    name: str
    underlay: str | None
    interface: str | None
    encap: str
    port: int
    mtu: int
    workers: int
    netns: str = ""
    state_dir: str = "/var/lib/overlay"


@dataclasses.dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    vni: int = VNI_MAX
    interval: float = 1.0


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    verify_interval: float = 10.0  # 0: no verification probe
    verify_budget: int = 4000


class Secret(str):
    """A password: the text itself for whoever uses it, ``'<hidden>'`` in every repr
    (error messages, logs, the configuration's repr)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<hidden>'"


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    kind: str
    endpoints: tuple[str, ...]
    ttl: float
    peers: tuple[NodeSpec, ...]
    # etcd's TLS and authentication (see overlay.control.etcd); password is the
    # text of store.password or of the file store.password_file names.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: Secret | None = None
    password_file: str | None = None
    # Static peers' fixed subnets: (peer name, its subnets), one per network at most.
    peer_subnets: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def subnets_of(self, name: str) -> tuple[str, ...]:
        return next((subs for n, subs in self.peer_subnets if n == name), ())


@dataclasses.dataclass(frozen=True)
class BgpConfig:
    asn: int
    peers: tuple[BgpPeer, ...]
    router_id: str | None = None  # None: the node's underlay address (IPv4)


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    node: NodeConfig
    store: StoreConfig
    networks: tuple[NetworkSpec, ...]
    api_socket: str
    metrics_address: str
    log_level: str
    health: HealthConfig = HealthConfig()
    bgp: BgpConfig | None = None  # [bgp]; None: no BGP speaker
    policy: PolicyConfig = PolicyConfig()


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') -> (host, port); ConfigError naming metrics.address.

    Port 0 asks the kernel for a free port (see ``Metrics.bound``).
    """
    expected = 'host:port, like "127.0.0.1:9469" (IPv6 as "[::1]:9469"); "" turns metrics off'
    if not isinstance(address, str):
        raise ConfigError("metrics.address", address, expected)
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("metrics.address", address, expected) from None
    elif ":" in host:
        raise ConfigError("metrics.address", address, expected)
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError("metrics.address", address, expected)
    return host, int(port_text)


NETWORK_KEYS = {
    "vni", "tenant", "cidr", "subnet_prefix", "learning", "gateway", "masquerade", "mode",
    "router", "encap",
}  # fmt: skip
_SECTIONS = {"node", "store", "api", "metrics", "log", "health", "networks", "bgp", "policy"}
_STORE_KEYS = {
    "kind",
    "endpoints",
    "ttl",
    "peers",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password",
    "password_file",
}
_SECURITY_KEYS = ("ca_file", "cert_file", "key_file", "username", "password", "password_file")
# The names other tools give these settings (flannel's flags, etcdctl's, etcd's
# own): an operator who writes one is told the key this file calls it.
_STORE_ALIASES = {
    "etcd-cafile": "ca_file",
    "cafile": "ca_file",
    "cacert": "ca_file",
    "trusted-ca-file": "ca_file",
    "trusted_ca_file": "ca_file",
    "etcd-certfile": "cert_file",
    "certfile": "cert_file",
    "cert": "cert_file",
    "etcd-keyfile": "key_file",
    "keyfile": "key_file",
    "key": "key_file",
    "etcd-username": "username",
    "user": "username",
    "etcd-password": "password",
}


def _table(raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}{key}", value, "a table")
    return value


def _unknown(table: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for k in table:
        if k not in allowed:
            raise ConfigError(f"{path}{k}", table[k], f"no such key; known: {sorted(allowed)}")


def get_key(
    table: Mapping[str, Any],
    key: str,
    path: str,
    kind: type | tuple[type, ...],
    expected: str,
    default: Any = dataclasses.MISSING,
) -> Any:
    """``table[key]`` when it is a ``kind`` (a bool is never an int), ``default`` when
    absent; else ConfigError naming ``path + key``, with ``expected`` (``"required: ..."``
    when there is no default). The API's request bodies are checked with it too."""
    if key not in table:
        if default is dataclasses.MISSING:
            raise ConfigError(f"{path}{key}", None, f"required: {expected}")
        return default
    value = table[key]
    wants_bool = kind is bool or (isinstance(kind, tuple) and bool in kind)
    if isinstance(value, bool) and not wants_bool or not isinstance(value, kind):
        raise ConfigError(f"{path}{key}", value, expected)
    return value


def _within(where: str, exc: ConfigError) -> ConfigError:
    """``exc`` naming its key under ``where`` (a table's path, like ``networks[0].``):
    as it is when it does already (get_key's errors), else with the model's prefix
    (``node.``, ``network.``) replaced."""
    if exc.field.startswith(where):
        return exc
    return ConfigError(where + exc.field.split(".")[-1], exc.value, exc.expected)


def _store_security(s: Mapping[str, Any], kind: str, endpoints: list[str]) -> dict[str, Any]:
    """store's TLS and authentication keys, checked together by the etcd store's own
    rules (``overlay.control.etcd_security.check_security``: files readable and PEM, a key
    matching its certificate, TLS only over https://, a password only over https://
    or to loopback), with errors naming ``store.<key>``."""
    where = "store."
    values = {
        k: get_key(
            s, k, where, str, "an absolute path" if k.endswith("_file") else "a string", None
        )
        for k in _SECURITY_KEYS
    }
    if values["password"] is not None:
        values["password"] = Secret(values["password"])
    given = [k for k, v in values.items() if v is not None]
    if kind != "etcd":
        if given:
            raise ConfigError(where + given[0], values[given[0]], 'nothing for kind = "memory"')
        return {}
    for k in given:
        if k.endswith("_file") and not values[k].startswith("/"):
            # overlayd runs from / as a service: a relative path would not mean
            # what it meant where the file was written.
            raise ConfigError(where + k, values[k], "an absolute path")
    if values["password"] is not None and values["password_file"] is not None:
        raise ConfigError(
            "store.password", values["password"], "one of store.password or store.password_file"
        )
    path = values["password_file"]
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError("store.password_file", path, f"a readable file ({why})") from None
        if not text:
            raise ConfigError("store.password_file", path, "a file holding the etcd password")
        values["password"] = Secret(text)
    if importlib.util.find_spec("aetcd") is None:
        raise ConfigError("store.kind", kind, "etcd support installed: pip install 'overlay[etcd]'")
    try:
        check_security(
            endpoints,
            ca_file=values["ca_file"],
            cert_file=values["cert_file"],
            key_file=values["key_file"],
            username=values["username"],
            password=values["password"],
        )
    except ConfigError as exc:
        value = exc.value
        if exc.field == "password" and values["password_file"] is not None:
            field, value = "password_file", values["password_file"]
        else:
            field = exc.field
        if field == "password" and value is not None:
            value = Secret(str(value))
        raise ConfigError(where + field, value, exc.expected) from None
    return values


def _check_private(path: str, config: DaemonConfig) -> None:
    """A password written in the file itself: the file must be private to its owner
    (as ssh insists for private keys); a password in a world-readable file is known
    to every user of the machine."""
    if config.store.password is None or config.store.password_file is not None:
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ConfigError(
            "store.password",
            config.store.password,
            f"a secret: {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"chmod 600 {path}, or move the password to a file named by store.password_file",
        )


def parse(text: str) -> DaemonConfig:
    """The configuration in ``text`` (TOML), checked in full."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("file", str(exc), "valid TOML") from None
    _unknown(raw, _SECTIONS, "")

    n = _table(raw, "node", "")
    _unknown(
        n,
        {"name", "underlay", "interface", "encap", "port", "mtu", "workers", "netns", "state_dir"},
        "node.",
    )
    name = get_key(n, "name", "node.", str, 'the node\'s name, e.g. "node-a"')
    underlay = get_key(n, "underlay", "node.", str, "an IP address", None)
    interface = get_key(n, "interface", "node.", str, "an interface name", None)
    if (underlay is None) == (interface is None):
        raise ConfigError(
            "node.underlay", underlay, "exactly one of node.underlay or node.interface"
        )
    if underlay is not None:
        try:
            ipaddress.ip_address(underlay)
        except ValueError:
            raise ConfigError("node.underlay", underlay, "an IPv4 or IPv6 address") from None
    encap = get_key(n, "encap", "node.", str, '"vxlan" or "geneve"', "vxlan")
    if encap not in ("vxlan", "geneve"):
        raise ConfigError("node.encap", encap, '"vxlan" or "geneve"')
    default_port = VXLAN_PORT if encap == "vxlan" else GENEVE_PORT
    # The bounds and their wording are the embedding API's (overlay.model), so the
    # file refuses what Node would refuse, in the same words.
    port = get_key(n, "port", "node.", int, UDP_PORT_EXPECTED, default_port)
    if not UDP_PORT_MIN <= port <= UDP_PORT_MAX:
        raise ConfigError("node.port", port, UDP_PORT_EXPECTED)
    mtu = get_key(n, "mtu", "node.", int, UNDERLAY_MTU_EXPECTED, 1500)
    if not UNDERLAY_MTU_MIN <= mtu <= UNDERLAY_MTU_MAX:
        raise ConfigError("node.mtu", mtu, UNDERLAY_MTU_EXPECTED)
    workers = get_key(n, "workers", "node.", int, WORKERS_EXPECTED, 1)
    if not 1 <= workers <= WORKERS_MAX:
        raise ConfigError("node.workers", workers, WORKERS_EXPECTED)
    netns = get_key(n, "netns", "node.", str, 'a namespace name or path, or ""', "")
    if netns and ("/" in netns and not netns.startswith("/") or netns in (".", "..")):
        raise ConfigError("node.netns", netns, "a namespace name or an absolute path")
    state_dir = get_key(n, "state_dir", "node.", str, "an absolute path", "/var/lib/overlay")
    if not state_dir.startswith("/"):
        raise ConfigError("node.state_dir", state_dir, "an absolute path")
    node = NodeConfig(name, underlay, interface, encap, port, mtu, workers, netns, state_dir)
    NodeSpec(name=name, underlay=underlay or "0.0.0.0")  # checks the name

    s = _table(raw, "store", "")
    for k in s:
        if k in _STORE_ALIASES:
            raise ConfigError(
                f"store.{k}", s[k], f"no such key: this file calls it store.{_STORE_ALIASES[k]}"
            )
    _unknown(s, _STORE_KEYS, "store.")
    kind = get_key(s, "kind", "store.", str, '"memory" or "etcd"', "memory")
    if kind not in ("memory", "etcd"):
        raise ConfigError("store.kind", kind, '"memory" or "etcd"')
    endpoints = get_key(
        s, "endpoints", "store.", list, 'a list of URLs like "https://127.0.0.1:2379"', []
    )
    for i, url in enumerate(endpoints):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"store.endpoints[{i}]", url, 'a URL like "https://127.0.0.1:2379" (or http://)'
            )
    if kind == "etcd" and not endpoints:
        raise ConfigError("store.endpoints", endpoints, 'at least one etcd URL for kind = "etcd"')
    if kind == "memory" and endpoints:
        raise ConfigError("store.endpoints", endpoints, 'nothing for kind = "memory"')
    security = _store_security(s, kind, endpoints)
    ttl = get_key(s, "ttl", "store.", (int, float), "a lease TTL of 1-3600 seconds", 10)
    if not 1 <= ttl <= 3600:
        raise ConfigError("store.ttl", ttl, "a lease TTL of 1-3600 seconds")
    peers = []
    peer_subnets: list[tuple[str, tuple[str, ...]]] = []
    for i, p in enumerate(get_key(s, "peers", "store.", list, "a list of peer tables", [])):
        where = f"store.peers[{i}]."
        if not isinstance(p, Mapping):
            raise ConfigError(where[:-1], p, "a table with name, underlay, networks")
        if kind != "memory":
            raise ConfigError(where[:-1], p, 'static peers only with kind = "memory"')
        _unknown(p, {"name", "underlay", "networks", "port", "subnets"}, where)
        subs = get_key(p, "subnets", where, list, 'a list of CIDRs like ["10.244.9.0/24"]', [])
        for j, sub in enumerate(subs):
            try:
                if not isinstance(sub, str):
                    raise TypeError
                ipaddress.ip_network(sub)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where}subnets[{j}]", sub, "a subnet like 10.244.9.0/24 (host bits clear)"
                ) from None
        try:
            peers.append(
                NodeSpec(
                    name=get_key(p, "name", where, str, "the peer's name"),
                    underlay=get_key(p, "underlay", where, str, "an IP address"),
                    networks=tuple(get_key(p, "networks", where, list, "a list of VNIs", [])),
                    port=get_key(p, "port", where, int, "0-65535", 0),
                )
            )
        except ConfigError as exc:
            raise _within(where, exc) from None
        if subs:
            peer_subnets.append((peers[-1].name, tuple(subs)))
    store = StoreConfig(
        kind,
        tuple(endpoints),
        float(ttl),
        tuple(peers),
        **security,
        peer_subnets=tuple(peer_subnets),
    )

    a = _table(raw, "api", "")
    _unknown(a, {"socket"}, "api.")
    socket_path = get_key(a, "socket", "api.", str, "an absolute path", DEFAULT_SOCKET)
    if not socket_path.startswith("/"):
        raise ConfigError("api.socket", socket_path, "an absolute path")
    m = _table(raw, "metrics", "")
    _unknown(m, {"address"}, "metrics.")
    metrics = get_key(m, "address", "metrics.", str, '"host:port" or ""', "127.0.0.1:9469")
    if metrics:
        parse_address(metrics)
    lg = _table(raw, "log", "")
    _unknown(lg, {"level"}, "log.")
    level = get_key(lg, "level", "log.", str, f"one of {LOG_LEVELS}", "info")
    if level not in LOG_LEVELS:
        raise ConfigError("log.level", level, f"one of {LOG_LEVELS}")

    h = _table(raw, "health", "")
    _unknown(h, {"enabled", "vni", "interval"}, "health.")
    health = HealthConfig(
        enabled=get_key(h, "enabled", "health.", bool, "true or false", True),
        vni=get_key(h, "vni", "health.", int, f"a VNI 1-{VNI_MAX}", VNI_MAX),
        interval=float(get_key(h, "interval", "health.", (int, float), "0.1-60 seconds", 1.0)),
    )
    if not 1 <= health.vni <= VNI_MAX:
        raise ConfigError("health.vni", health.vni, f"a VNI 1-{VNI_MAX}")
    if not 0.1 <= health.interval <= 60:
        raise ConfigError("health.interval", health.interval, "0.1-60 seconds")

    nets: list[NetworkSpec] = []
    seen: set[int] = set()
    for i, t in enumerate(get_key(raw, "networks", "", list, "a list of [[networks]] tables", [])):
        where = f"networks[{i}]."
        if not isinstance(t, Mapping):
            raise ConfigError(where[:-1], t, "a table with vni, tenant, cidr")
        _unknown(t, NETWORK_KEYS, where)
        try:
            mode = get_key(t, "mode", where, str, f"one of {MODES}", "overlay")
            # An underlay network's pods are stations of the physical segment: a
            # gateway TAP would put the node on it a second time (overlay.uplink).
            gateway_default = "none" if mode == "underlay" else "node"
            spec = NetworkSpec(
                vni=get_key(t, "vni", where, int, f"a VNI 0-{VNI_MAX}"),
                tenant=get_key(t, "tenant", where, str, "the owning tenant's name"),
                cidr=get_key(t, "cidr", where, str, "a CIDR", "10.244.0.0/16"),
                encap=get_key(t, "encap", where, str, '"vxlan" or "geneve"', encap),
                subnet_prefix=get_key(t, "subnet_prefix", where, int, "a prefix", 24),
                learning=get_key(t, "learning", where, bool, "true or false", False),
                gateway=get_key(
                    t,
                    "gateway",
                    where,
                    (bool, str),
                    'true, false, "node", "isolated" or "none"',
                    gateway_default,
                ),
                mode=mode,
                masquerade=get_key(t, "masquerade", where, bool, "true or false", True),
                router=get_key(t, "router", where, str, "an address of the cidr", ""),
            )
        except ConfigError as exc:
            raise _within(where, exc) from None
        if spec.mode == "underlay" and spec.gateway != "none":
            raise ConfigError(
                where + "gateway",
                spec.gateway,
                '"none" (the default of mode "underlay"): its pods sit on the physical '
                "segment beside the node, which reaches them there; their way out is the "
                "segment's own router",
            )
        if health.enabled and spec.vni == health.vni:
            raise ConfigError(
                where + "vni", spec.vni, f"not {health.vni}: health.vni reserves it for probes"
            )
        if spec.vni in seen:
            raise ConfigError(where + "vni", spec.vni, "a VNI not used by another [[networks]]")
        seen.add(spec.vni)
        for j, other in enumerate(nets):
            if (
                spec.gateway == other.gateway == "isolated"
                and spec.vni % TRANSIT_SLOTS == other.vni % TRANSIT_SLOTS
            ):
                raise ConfigError(
                    where + "vni",
                    spec.vni,
                    f"a VNI that differs from {other.vni} (networks[{j}]) modulo "
                    f"{TRANSIT_SLOTS}: isolated gateways reach the node over a link-local /30 "
                    "chosen by VNI, and these two would share one",
                )
            if not spec.network.overlaps(other.network):
                continue
            clash = f"cidr {spec.cidr} overlaps {other.cidr} of networks[{j}] (vni {other.vni})"
            if spec.mode != "overlay" or other.mode != "overlay":
                raise ConfigError(
                    where + "mode",
                    spec.mode,
                    f"other addresses, or both networks in mode overlay: {clash}, and a "
                    f"{spec.mode if spec.mode != 'overlay' else other.mode} network carries no "
                    "VNI on the wire to tell them apart",
                )
            if spec.gateway == "node" and other.gateway == "node":
                raise ConfigError(
                    where + "gateway",
                    spec.gateway,
                    f'"isolated" or false: {clash}, and two gateways in the node\'s namespace '
                    'cannot share addresses; "isolated" puts this one in a router namespace '
                    "of its own (egress only)",
                )
        nets.append(spec)
    _check_peer_subnets(store, nets)
    bgp = _bgp(raw, node)
    pol = _policy(raw)
    return DaemonConfig(node, store, tuple(nets), socket_path, metrics, level, health, bgp, pol)


def _policy(raw: Mapping[str, Any]) -> PolicyConfig:
    """The [policy] section: the verification probe's pace."""
    t = _table(raw, "policy", "")
    _unknown(t, {"verify_interval", "verify_budget"}, "policy.")
    interval = float(
        get_key(t, "verify_interval", "policy.", (int, float), "0 (off) or 0.1-3600 seconds", 10.0)
    )
    if interval != 0 and not 0.1 <= interval <= 3600:
        raise ConfigError("policy.verify_interval", interval, "0 (off) or 0.1-3600 seconds")
    budget = get_key(t, "verify_budget", "policy.", int, "100-1000000 cells per round", 4000)
    if not 100 <= budget <= 1_000_000:
        raise ConfigError("policy.verify_budget", budget, "100-1000000 cells per round")
    return PolicyConfig(interval, budget)


def _bgp(raw: Mapping[str, Any], node: NodeConfig) -> BgpConfig | None:
    """The [bgp] section (None when absent): this node's AS, its routers, a router id."""
    if "bgp" not in raw:
        return None
    b = _table(raw, "bgp", "")
    _unknown(b, {"asn", "peers", "router_id"}, "bgp.")
    asn = get_key(b, "asn", "bgp.", int, ASN_EXPECTED + " (this node's)")
    router_id = get_key(b, "router_id", "bgp.", str, "an IPv4 address", None)
    if router_id is None and node.underlay is not None and ":" in node.underlay:
        raise ConfigError(
            "bgp.router_id", None, "required with an IPv6 node.underlay: an IPv4 address"
        )
    peers: list[BgpPeer] = []
    expected = 'a list of routers like [{ address = "198.18.0.254", asn = 65000 }]'
    for i, p in enumerate(get_key(b, "peers", "bgp.", list, expected)):
        where = f"bgp.peers[{i}]."
        if not isinstance(p, Mapping):
            raise ConfigError(where[:-1], p, "a table with address and asn")
        _unknown(p, {"address", "asn"}, where)
        try:
            peers.append(
                BgpPeer(
                    get_key(p, "address", where, str, "the router's IPv4 address"),
                    get_key(p, "asn", where, int, ASN_EXPECTED + " (the router's)"),
                )
            )
        except ConfigError as exc:
            raise _within(where, exc) from None
    if not peers:
        raise ConfigError("bgp.peers", [], expected + ": at least one")
    try:
        cfg = BgpConfig(asn, tuple(peers), router_id)
        SpeakerConfig(router_id or "192.0.2.1", asn, cfg.peers)  # the speaker's own checks
    except ConfigError as exc:
        raise ConfigError("bgp." + exc.field, exc.value, exc.expected) from None
    return cfg


def _check_peer_subnets(store: StoreConfig, nets: list[NetworkSpec]) -> None:
    """A static peer's fixed subnet is one node subnet of a network the peer hosts
    (``subnet_prefix`` bits of its ``cidr``), one per network, and no two peers
    share one."""
    specs = {n.vni: n for n in nets}
    taken: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    for i, peer in enumerate(store.peers):
        subs = store.subnets_of(peer.name)
        used: set[int] = set()
        for j, text in enumerate(subs):
            field = f"store.peers[{i}].subnets[{j}]"
            sub = ipaddress.ip_network(text)
            fits = [
                specs[v]
                for v in peer.networks
                if v in specs
                and sub.version == specs[v].network.version
                and sub.subnet_of(specs[v].network)  # type: ignore[arg-type]
                and sub.prefixlen == specs[v].subnet_prefix
            ]
            if not fits:
                ranges = ", ".join(
                    f"{specs[v].cidr} in /{specs[v].subnet_prefix}s (vni {v})"
                    for v in peer.networks
                    if v in specs
                )
                raise ConfigError(
                    field,
                    text,
                    f"a node subnet of a network this peer lists: {ranges or 'none is defined'}",
                )
            vni = fits[0].vni
            if vni in used:
                raise ConfigError(field, text, f"one subnet per network: vni {vni} has one")
            used.add(vni)
            if sub in taken:
                raise ConfigError(field, text, f"a subnet no other peer has ({taken[sub]} has it)")
            taken[sub] = peer.name


def load(path: str) -> DaemonConfig:
    """Read and parse a configuration file; ConfigError naming the file when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("--config", path, f"a readable file ({exc.strerror})") from None
    config = parse(text)
    _check_private(path, config)
    return config
