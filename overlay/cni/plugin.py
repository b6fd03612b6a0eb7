"""``overlay-cni``: the CNI plugin (spec 1.1.0) that attaches pods through overlayd.

Design notes. The plugin is a thin, stateless dispatcher over overlayd's
local API (``overlay.daemon.client``): each verb is one function that parses
the configuration into ``OverlayConf``, makes one or two API calls, and turns
the answer into a CNI result or error. It keeps no file and takes no lock:
the daemon owns every attachment and serialises what must be serialised, so
concurrent ADDs for different containers never wait on each other here.

    ADD    [ipam delegate ADD] -> POST /v1/endpoints -> Result (in the config's cniVersion)
    DEL    DELETE /v1/attachments/<cid>/<ifname> (404 is success) -> [ipam delegate DEL]
    CHECK  GET /v1/attachments/<cid>/<ifname> vs prevResult, and the pod's netns as it is
    STATUS GET /v1/status (+ /v1/networks): can overlayd serve ADD for this VNI?
    GC     POST /v1/gc with the runtime's valid attachments -> [ipam delegate GC]

Addresses come from the daemon (the node's subnet lease) unless the
configuration names an ``ipam`` plugin; then that plugin runs first
(``overlay.cni.delegate``) and the daemon is told which addresses to use.
If the daemon then refuses or is unreachable, the addresses are released
before the error is returned, so a failed ADD leaks nothing.

DEL with the daemon unreachable is code 11 (try again later), and the
delegated IPAM lease is deliberately *kept*. The daemon holds state that only
it can remove: the attachment, its port in the data plane and its endpoint in
the cluster store, all still claiming the pod's address. Releasing the lease
now would let the IPAM plugin hand that address to a new pod while the old
endpoint still announces it; keeping it means the address has one owner
until the daemon has detached. Runtimes differ after a failed DEL: one may
send DEL again (kubelet keeps stopping a pod sandbox until its teardown
succeeds), another logs the error and forgets the container (podman 4.3), and
then the lease stays with the IPAM plugin: an address lost, never one given
twice. The daemon forgets such an attachment when, started again, it finds
the pod's namespace gone. (Returning success instead would let the runtime
forget the container while the daemon still serves it.) The message says
what is held, and how far that is known: a DEL with ``prevResult`` follows a
successful ADD; one without it, from a runtime that caches results (libcni's
runtimes: podman, containerd, CRI-O), cleans up after a failed ADD, which
left nothing attached and has already released its lease.

What a runtime asks for. The address in ``CNI_ARGS`` ``IP=`` (podman's
``--ip``; several joined by ',') and in the ``ips`` capability
(``runtimeConfig.ips``, also ``args.cni.ips``), and the MAC in ``CNI_ARGS``
``MAC=`` (podman's ``--mac-address``) and the ``mac`` capability
(``runtimeConfig.mac``, which wins, as with the bridge plugin). Without an
``ipam`` plugin the daemon reserves the address in the node's subnet lease
(one per pod; refused outside the lease or when taken: the error names the
variable or field it came from); with one, the plugin honours them itself
(host-local reads all three) and the plugin checks that it did. Without a
MAC asked for, the pod's MAC is derived from its address
(``overlay.control.ipam.mac_of``), so it is the same whenever the address
is.

Who the pod is. The network-policy layer places a pod by its labels, and its
namespace by the label ``io.kubernetes.pod.namespace`` (``NAMESPACE_LABEL``;
"default" without it), so the identity is gathered from every place a
runtime puts it. Places of equal standing that disagree are refused, not
settled by guessing (a pod placed in the wrong namespace would be judged by
another namespace's policies); a field that names the pod outranks a label:

- labels: ``args.cni.labels`` (``[{"key": k, "value": v}]``, the args
  convention) merged with ``runtimeConfig.labels`` (``{k: v}``, passed when
  the configuration declares the ``labels`` capability); a key the two give
  different values is code 7 naming both;
- the namespace and the pod's name: ``CNI_ARGS`` ``K8S_POD_NAMESPACE`` and
  ``K8S_POD_NAME`` (what kubelet's runtimes pass), else ``args.cni.namespace``
  and ``args.cni.podName``, else the labels' ``io.kubernetes.pod.namespace``
  and ``io.kubernetes.pod.name``. The first two naming different pods is
  code 7 naming both; a label they contradict is overridden. Each is
  held to Kubernetes' rule (a namespace a DNS label, a name a DNS subdomain):
  code 4 for a ``CNI_ARGS`` value, 7 for the configuration's;
- ``K8S_POD_UID`` becomes ``io.kubernetes.pod.uid``;
- named container ports (what a policy's ``port: http`` resolves to on the
  pod): ``args.cni.namedPorts`` merged with ``runtimeConfig.namedPorts`` (the
  ``namedPorts`` capability), each a list of ``{"name": "http", "port": 8080,
  "protocol": "TCP"}`` (protocol TCP when left out), held to Kubernetes'
  rules (``overlay.model.check_named_ports``); a name the two give different
  ports is code 7 naming both. A malformed entry is refused (code 7 naming
  it), in ``args.cni`` too: a port dropped could let a connection slip past
  a policy that denies it by name. Sent as the attach request's
  ``named_ports`` only when there are some, so an overlayd of the release
  before them still takes the request.

The namespace and name go to overlayd as the attach request's ``namespace``
and ``pod`` besides the labels, and name the endpoint "<namespace>/<pod>"
(the container ID without a pod).

GC forwards to a delegate that speaks 1.1.0. One that stops at 1.0.0, like
host-local, has no GC verb; instead each attachment the daemon reports
removed gets a delegate DEL, which releases its lease.

The configuration, besides the spec's keys (see ``OverlayConf``)::

    {"cniVersion": "1.1.0", "name": "blue", "type": "overlay-cni",
     "vni": 100,                                  # required, hosted by overlayd
     "socket": "/run/overlay/overlayd.sock",      # optional
     "mtu": 1400,                                 # optional, the pod's MTU
     "ipam": {"type": "host-local", ...},         # optional, else the daemon allocates
     "routes": [{"dst": "0.0.0.0/0"}]}            # optional, extra pod routes

Error codes: the spec's (1, 2, 3, 4, 6, 7, 11, 50), a delegate's own code
passed through, and the plugin's own below (100-103).

The runtime's values are checked here by the rules overlayd's API applies
too (``overlay.cni.validate``), before anything is allocated: a bad
``CNI_CONTAINERID``, ``CNI_IFNAME`` or ``CNI_NETNS`` is code 4 naming it. The
daemon alone knows some namespaces no pod may get (its own, the node's
underlay namespace); its refusal of such a field is still code 4 naming the
variable, not 7, because the fault is the runtime's variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from overlay.cni import validate
from overlay.cni.spec import (
    INVALID_CONFIG,
    INVALID_ENV,
    PLUGIN_NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniEnv,
    CniError,
    Interface,
    IPConfig,
    NetConf,
    Result,
    Route,
    chain_result,
    check_keys,
    run,
    valid_attachments,
)
from overlay.daemon.client import DEFAULT_SOCKET, ApiError, Client, DaemonUnavailable
from overlay.errors import ConfigError
from overlay.model import (
    NAMED_PORTS_MAX,
    NAMESPACE_LABEL,
    POD_LABEL,
    VNI_MAX,
    _mac,
    check_port_name,
    check_port_number,
    check_port_protocol,
)

if TYPE_CHECKING:  # imported when a configuration delegates IPAM (it costs start-up time)
    from overlay.cni.delegate import Delegate

PLUGIN = "overlay-cni"
UID_LABEL = "io.kubernetes.pod.uid"  # CNI_ARGS K8S_POD_UID, as a label
OWN_KEYS = ("vni", "socket", "mtu", "routes")
MTU_MIN, MTU_MAX = 68, 65535

# The plugin's own error codes (the spec leaves 100 and up to plugins).
ATTACHMENT_CONFLICT = 100  # overlayd: the attachment (or its address/MAC) exists already
NO_CAPACITY = 101  # overlayd: a table or the address pool is full
DAEMON_INTERNAL = 102  # overlayd failed inside, or answered something unreadable
CHECK_MISMATCH = 103  # CHECK: the attachment is not what prevResult or the netns says

# CNI_ARGS keys this plugin reads; others need IgnoreUnknown=1 (the CNI convention).
KNOWN_ARGS = (
    "IgnoreUnknown",
    "IP",
    "MAC",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
)

# What the client says to do when no daemon serves the socket, in the words of
# a CNI configuration's reader (the CLI's own hint names its --socket option).
_START_HINT = 'start overlayd, or set this network\'s "socket" key to the socket it serves'

# Fields of overlayd's attach request that are the runtime's CNI_* variables.
_ENV_FIELDS = {"container_id": "CNI_CONTAINERID", "ifname": "CNI_IFNAME", "netns": "CNI_NETNS"}

_API_CODES = {
    "config": INVALID_CONFIG,
    "conflict": ATTACHMENT_CONFLICT,
    "capacity": NO_CAPACITY,
    "unavailable": TRY_AGAIN_LATER,
    "internal": DAEMON_INTERNAL,
}


# -- configuration -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OverlayConf:
    """The plugin's configuration: the spec's ``NetConf`` plus overlay's keys, checked."""

    net: NetConf
    vni: int
    socket: str = DEFAULT_SOCKET
    mtu: int | None = None
    routes: tuple[Route, ...] = ()
    ipam_type: str = ""  # "" when overlayd allocates the addresses
    ip_masq: bool = False  # ipMasq: the network must masquerade (overlayd checks it)

    @classmethod
    def parse(cls, net: NetConf) -> OverlayConf:
        """Check overlay's keys; code 7 naming the key and the fix."""
        raw = net.raw
        check_keys(raw, OWN_KEYS, PLUGIN)
        vni = raw.get("vni")
        if "vni" not in raw:
            raise CniError(
                INVALID_CONFIG,
                'vni is missing: set "vni" to the overlay network\'s VNI (a network overlayd '
                "hosts, see `overlay networks`)",
            )
        if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= VNI_MAX:
            raise CniError(INVALID_CONFIG, f"vni={vni!r}: an integer 0-{VNI_MAX}")
        sock = raw.get("socket", DEFAULT_SOCKET)
        if not isinstance(sock, str) or not sock.startswith("/"):
            raise CniError(
                INVALID_CONFIG,
                f"socket={sock!r}: the absolute path of overlayd's API socket "
                f"(default {DEFAULT_SOCKET})",
            )
        mtu = raw.get("mtu")
        if mtu is not None and (
            isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX
        ):
            raise CniError(
                INVALID_CONFIG,
                f"mtu={mtu!r}: an integer {MTU_MIN}-{MTU_MAX}, or leave it out to use the "
                "MTU overlayd computes from the underlay",
            )
        ip_masq = raw.get("ipMasq", False)
        if not isinstance(ip_masq, bool):
            raise CniError(
                INVALID_CONFIG,
                f"ipMasq={ip_masq!r}: true (overlayd must masquerade the network's egress, "
                "as it does by default) or false",
            )
        for key in ("runtimeConfig", "capabilities"):
            if key in raw and not isinstance(raw[key], dict):
                raise CniError(INVALID_CONFIG, f"{key} must be a JSON object")
        ipam_type = ""
        if net.ipam:
            ipam_type = net.ipam.get("type", "")
            if not isinstance(ipam_type, str) or not ipam_type:
                raise CniError(
                    INVALID_CONFIG,
                    f"ipam.type={ipam_type!r}: name the IPAM plugin (e.g. host-local), or "
                    "remove ipam to let overlayd allocate from the node's subnet",
                )
        routes = _parse_routes(raw.get("routes", []))
        return cls(net, vni, sock, mtu, routes, ipam_type, ip_masq)

    def client(self) -> Client:
        return Client(self.socket, start_hint=_START_HINT)

    def delegate(self, env: CniEnv) -> Delegate | None:
        """The IPAM delegate, or None when the daemon allocates."""
        if not self.ipam_type:
            return None
        from overlay.cni.delegate import Delegate

        return Delegate(self.ipam_type, self.net.raw, env.path, os.environ)


def _parse_routes(raw: object) -> tuple[Route, ...]:
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, 'routes must be a list like [{"dst": "0.0.0.0/0"}]')
    out = []
    for i, item in enumerate(raw):
        where = f"routes[{i}]"
        if not isinstance(item, dict) or "dst" not in item:
            raise CniError(INVALID_CONFIG, f'{where}={item!r}: expected {{"dst": CIDR, "gw": IP}}')
        extra = sorted(set(item) - {"dst", "gw"})
        if extra:
            raise CniError(
                INVALID_CONFIG, f"{where}.{extra[0]}: unknown; a route has only dst and gw"
            )
        try:
            dst = ipaddress.ip_network(item["dst"], strict=False)
        except (TypeError, ValueError):
            raise CniError(
                INVALID_CONFIG, f"{where}.dst={item['dst']!r}: a CIDR like 10.96.0.0/12"
            ) from None
        gw = item.get("gw", "")
        if gw:
            try:
                gw_ip = ipaddress.ip_address(gw)
            except (TypeError, ValueError):
                raise CniError(
                    INVALID_CONFIG, f"{where}.gw={gw!r}: an IP address, or leave it out"
                ) from None
            if gw_ip.version != dst.version:
                raise CniError(
                    INVALID_CONFIG, f"{where}: gw {gw} is not of the same family as dst {dst}"
                )
        out.append(Route(dst=str(dst), gw=str(gw)))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class PodIdentity:
    """Who the pod is (see "Who the pod is" in the design notes): the endpoint's
    name and labels, and the Kubernetes namespace and pod name they came with
    ("" when no source names one)."""

    name: str
    labels: dict[str, str]
    namespace: str = ""
    pod: str = ""
    named_ports: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)


def _label_sources(net: NetConf) -> list[tuple[str, str, str]]:
    """The labels the configuration gives, as (where, key, value): ``args.cni.labels``
    entries, then ``runtimeConfig.labels`` (the ``labels`` capability)."""
    out = []
    cni_args = _cni_args(net)
    # The spec says plugins ignore ``args`` they do not understand: malformed
    # entries are skipped, not refused. A well-formed label that breaks a bound
    # is refused, never dropped: a pod missing a label could slip out of a
    # policy that selects it.
    items = cni_args.get("labels", [])
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict):
            key, value = item.get("key"), item.get("value")
            if isinstance(key, str) and isinstance(value, str) and key:
                out.append((f"args.cni.labels[{i}]", key, value))
    # A capability's value is the runtime's own: a malformed one is refused.
    runtime = net.raw.get("runtimeConfig")
    given = runtime.get("labels") if isinstance(runtime, dict) else None
    if given is not None:
        if not isinstance(given, dict):
            raise CniError(
                INVALID_CONFIG,
                f"runtimeConfig.labels={validate.shown(given)}: a JSON object of label keys "
                'to string values, like {"app": "web"}',
            )
        for key, value in given.items():
            if not isinstance(value, str):
                raise CniError(
                    INVALID_CONFIG,
                    f"runtimeConfig.labels (key {validate.shown(key)}) has "
                    f"{validate.shown(value)}: a string value",
                )
            out.append(("runtimeConfig.labels", key, value))
    return out


_NAMED_PORT_KEYS = ("name", "port", "protocol")
_NAMED_PORT_SHAPE = '[{"name": "http", "port": 8080, "protocol": "TCP"}]'


def _named_port_sources(net: NetConf) -> list[tuple[str, str, tuple[int, str]]]:
    """The named ports the configuration gives, as (where, name, (port, protocol)):
    ``args.cni.namedPorts`` entries, then ``runtimeConfig.namedPorts`` (the
    ``namedPorts`` capability); code 7 naming a malformed one (see the notes)."""
    runtime = net.raw.get("runtimeConfig")
    out = []
    for where, given in (
        ("args.cni.namedPorts", _cni_args(net).get("namedPorts")),
        (
            "runtimeConfig.namedPorts",
            runtime.get("namedPorts") if isinstance(runtime, dict) else None,
        ),
    ):
        if given is None:
            continue
        if not isinstance(given, list):
            raise CniError(
                INVALID_CONFIG, f"{where}={validate.shown(given)}: a list like {_NAMED_PORT_SHAPE}"
            )
        for i, item in enumerate(given):
            at = f"{where}[{i}]"
            if not isinstance(item, dict):
                raise CniError(
                    INVALID_CONFIG,
                    f"{at}={validate.shown(item)}: an object like {_NAMED_PORT_SHAPE[1:-1]}",
                )
            extra = sorted(str(k) for k in item if k not in _NAMED_PORT_KEYS)
            if extra:
                raise CniError(
                    INVALID_CONFIG,
                    f"{at}.{validate.shown(extra[0])}: unknown; a named port has name, port and "
                    "protocol",
                )
            try:
                name = check_port_name(item.get("name"), f"{at}.name")
                number = check_port_number(item.get("port"), f"{at}.port")
                protocol = check_port_protocol(item.get("protocol", "TCP"), f"{at}.protocol")
            except ConfigError as exc:
                raise CniError(
                    INVALID_CONFIG, f"{exc.field}={validate.shown(exc.value)}: {exc.expected}"
                ) from None
            out.append((at, name, (number, protocol)))
    return out


def _named_ports(net: NetConf) -> dict[str, tuple[int, str]]:
    """The pod's named ports, its sources merged (see the notes)."""
    ports: dict[str, tuple[int, str]] = {}
    given: dict[str, str] = {}  # name -> where it was given first
    for source, name, value in _named_port_sources(net):
        if ports.get(name, value) != value:
            have = ports[name]
            raise CniError(
                INVALID_CONFIG,
                f"{source} gives named port {name}={value[0]}/{value[1]} and {given[name]} "
                f"gives {name}={have[0]}/{have[1]}: give the port once, or the same value",
            )
        ports[name] = value
        given.setdefault(name, source)
    if len(ports) > NAMED_PORTS_MAX:
        raise CniError(
            INVALID_CONFIG,
            f"args.cni.namedPorts and runtimeConfig.namedPorts name {len(ports)} ports: "
            f"at most {NAMED_PORTS_MAX}",
        )
    return ports


def _cni_args(net: NetConf) -> dict[str, Any]:
    """The configuration's ``args.cni`` ({} when absent or not an object)."""
    args = net.raw.get("args")
    cni_args = args.get("cni") if isinstance(args, dict) else None
    return cni_args if isinstance(cni_args, dict) else {}


def _pod_field(
    env: CniEnv,
    net: NetConf,
    labels: Mapping[str, str],
    given: Mapping[str, str],
    arg: str,
    key: str,
    label: str,
) -> tuple[str, str]:
    """The pod's namespace (or name) and where it came from, by precedence:
    ``CNI_ARGS`` ``arg``, then ``args.cni.<key>``, then ``label`` among the
    configuration's ``labels`` (``given`` names each label's source); ("", "")
    when none names it. Checked by Kubernetes' rule for it; the first two
    naming different values is code 7 naming both."""
    rule = validate.namespace_name if label == NAMESPACE_LABEL else validate.pod_name
    from_env = env.args.get(arg, "")
    from_conf = _cni_args(net).get(key)
    if from_conf is not None and not isinstance(from_conf, str):
        what = "namespace" if label == NAMESPACE_LABEL else "name"
        raise CniError(
            INVALID_CONFIG,
            f"args.cni.{key}={validate.shown(from_conf)}: the pod's {what}, a string",
        )

    def check(source: str, value: str) -> None:
        try:
            rule(value)
        except validate.Invalid as exc:
            code = INVALID_ENV if source.startswith("CNI_ARGS") else INVALID_CONFIG
            raise CniError(code, f"{source}={validate.shown(value)}: {exc.expected}") from None

    # Both fields are checked whether or not they win (a conflict's message
    # should not hide a bad value); the label only when it names the pod.
    candidates = [(f"CNI_ARGS {arg}", from_env), (f"args.cni.{key}", from_conf or "")]
    for source, value in candidates:
        if value:
            check(source, value)
    chosen = next(((source, value) for source, value in candidates if value), ("", ""))
    if not chosen[1] and label in labels:  # an empty label too: it names no pod
        chosen = (f"{given[label]} (key {label})", labels[label])
        check(*chosen)
    if from_env and from_conf and from_env != from_conf:
        raise CniError(
            INVALID_CONFIG,
            f"args.cni.{key}={validate.shown(from_conf)} and CNI_ARGS {arg}="
            f"{validate.shown(from_env)} name different pods: remove args.cni.{key}, or "
            "give it the same value",
        )
    return chosen[1], chosen[0]


def endpoint_identity(env: CniEnv, net: NetConf) -> PodIdentity:
    """The pod's identity (see "Who the pod is" in the design notes): its labels
    from ``args.cni.labels`` and ``runtimeConfig.labels``, its namespace and name
    from ``CNI_ARGS`` (``K8S_POD_*``), ``args.cni.namespace``/``podName`` or those
    labels, the endpoint's name, "<namespace>/<pod>" (the container ID when
    there is no pod), and its named ports from ``args.cni.namedPorts`` and
    ``runtimeConfig.namedPorts``.

    Unknown CNI_ARGS keys are code 4 unless IgnoreUnknown=1 (the CNI convention).
    """
    ignore = env.args.get("IgnoreUnknown", "").lower() in ("1", "true")
    if not ignore:
        for key in env.args:
            if key not in KNOWN_ARGS:
                raise CniError(
                    INVALID_ENV,
                    f"CNI_ARGS has {key}, which {PLUGIN} does not know: remove it, or add "
                    "IgnoreUnknown=1 to CNI_ARGS",
                )
    labels: dict[str, str] = {}
    given: dict[str, str] = {}  # label key -> where it was given first
    for source, key, value in _label_sources(net):
        try:
            validate.label(key, value)
        except validate.Invalid as exc:
            raise CniError(
                INVALID_CONFIG, f"{source} (key {validate.shown(key)}): {exc.expected}"
            ) from None
        if labels.get(key, value) != value:
            raise CniError(
                INVALID_CONFIG,
                f"{source} gives label {key}={validate.shown(value)} and {given[key]} gives "
                f"{key}={validate.shown(labels[key])}: give the label once, or the same value",
            )
        labels[key] = value
        given.setdefault(key, source)
    namespace, ns_from = _pod_field(
        env, net, labels, given, "K8S_POD_NAMESPACE", "namespace", NAMESPACE_LABEL
    )
    pod, pod_from = _pod_field(env, net, labels, given, "K8S_POD_NAME", "podName", POD_LABEL)
    if namespace:
        labels[NAMESPACE_LABEL] = namespace
    if pod:
        labels[POD_LABEL] = pod
    uid = env.args.get("K8S_POD_UID", "")
    if uid:
        try:
            validate.label(UID_LABEL, uid)
        except validate.Invalid as exc:
            raise CniError(
                INVALID_ENV, f"CNI_ARGS K8S_POD_UID={validate.shown(uid)}: {exc.expected}"
            ) from None
        labels[UID_LABEL] = uid
    try:
        validate.labels(labels)
    except validate.Invalid as exc:
        raise CniError(
            INVALID_CONFIG,
            f"args.cni.labels and runtimeConfig.labels, with the pod's own: {exc.expected}",
        ) from None
    name = f"{namespace}/{pod}" if pod and namespace else pod or env.container_id
    try:
        validate.endpoint_name(name)
    except validate.Invalid as exc:  # bounded above; kept against a change of the bounds
        sources = " and ".join(s for s in (ns_from, pod_from) if s) or "CNI_CONTAINERID"
        raise CniError(
            INVALID_ENV if sources.startswith("CNI_") else INVALID_CONFIG,
            f"{sources} make the endpoint's name {validate.shown(name)}: {exc.expected}",
        ) from None
    return PodIdentity(name, labels, namespace, pod, _named_ports(net))


@dataclasses.dataclass(frozen=True)
class Asked:
    """What the runtime asked for: addresses and a MAC, each with where it was
    asked, in the words of the user who set it (e.g. "CNI_ARGS IP")."""

    ips: tuple[str, ...] = ()
    ips_from: str = ""
    mac: str | None = None
    mac_from: str = ""

    def code(self, source: str) -> int:
        """A refusal's code: 4 for a CNI_ARGS variable, 7 for the configuration."""
        return INVALID_ENV if source.startswith("CNI_ARGS") else INVALID_CONFIG

    def shown(self) -> str:
        """What was asked, for a message ("" when nothing was)."""
        parts = [f"{self.ips_from}={','.join(self.ips)}"] if self.ips else []
        parts += [f"{self.mac_from}={self.mac}"] if self.mac else []
        return " and ".join(parts)


def asked(env: CniEnv, net: NetConf) -> Asked:
    """The addresses and the MAC the runtime asks for (see the design notes); a bad
    one is code 4 naming its CNI_ARGS variable, or 7 naming its configuration field."""
    runtime = net.raw.get("runtimeConfig") or {}
    args = net.raw.get("args")
    cni_args = args.get("cni") if isinstance(args, dict) else None
    ip_sources: list[tuple[str, object]] = [
        ("runtimeConfig.ips", runtime.get("ips")),
        ("args.cni.ips", cni_args.get("ips") if isinstance(cni_args, dict) else None),
    ]
    if env.args.get("IP"):
        ip_sources.append(("CNI_ARGS IP", [a.strip() for a in env.args["IP"].split(",")]))
    found: dict[str, str] = {}  # the address without its prefix -> as it was asked
    used: list[str] = []
    for source, value in ip_sources:
        if value is None:
            continue
        code = INVALID_ENV if source.startswith("CNI_ARGS") else INVALID_CONFIG
        expected = "addresses like 10.244.1.9 or 10.244.1.9/16"
        if not isinstance(value, list):
            raise CniError(code, f"{source}={validate.shown(value)}: a list of {expected}")
        for item in value:
            try:
                if not isinstance(item, str):
                    raise TypeError
                found.setdefault(str(ipaddress.ip_interface(item).ip), item)
            except (TypeError, ValueError):
                joined = ", joined by ','" if code == INVALID_ENV else ""
                raise CniError(
                    code, f"{source} has {validate.shown(item)}: {expected}{joined}"
                ) from None
        if value:
            used.append(source)
    # runtimeConfig.mac wins over CNI_ARGS MAC, as in the bridge plugin.
    for source, raw in (("runtimeConfig.mac", runtime.get("mac")), ("CNI_ARGS MAC", None)):
        value = env.args.get("MAC") if source == "CNI_ARGS MAC" else raw
        if value is None or value == "":
            continue
        try:
            return Asked(tuple(found.values()), " and ".join(used), _mac(value, source), source)
        except ConfigError as exc:
            code = INVALID_ENV if source.startswith("CNI_ARGS") else INVALID_CONFIG
            raise CniError(code, f"{source}={validate.shown(value)}: {exc.expected}") from None
    return Asked(tuple(found.values()), " and ".join(used))


# -- the daemon's answers ------------------------------------------------------


def daemon_error(
    exc: ApiError | DaemonUnavailable, verb: str, wanted: Asked | None = None
) -> CniError:
    """An API failure as a CNI error (see the table in examples/README.md); for
    ADD, ``wanted`` is what the runtime asked the daemon for (addresses, MAC):
    a refusal of one names the variable or field it was asked in."""
    if isinstance(exc, DaemonUnavailable):
        return CniError(TRY_AGAIN_LATER, f"{verb}: {exc}")
    variable = _ENV_FIELDS.get(str(exc.field)) if exc.kind == "config" else None
    if variable is not None:
        # The daemon refuses what only it can see (its own namespaces, the node's
        # underlay namespace): the fault is still the runtime's variable, code 4.
        return CniError(INVALID_ENV, f"{verb}: {variable} refused by overlayd: {exc.message}")
    if wanted is not None and exc.kind == "config" and exc.field in ("ips", "mac"):
        source, value = (
            (wanted.ips_from, ",".join(wanted.ips))
            if exc.field == "ips"
            else (wanted.mac_from, wanted.mac or "")
        )
        if source:
            return CniError(
                wanted.code(source), f"{verb}: {source}={value} refused by overlayd: {exc.expected}"
            )
    if wanted is not None and exc.kind == "conflict" and wanted.shown():
        return CniError(
            ATTACHMENT_CONFLICT,
            f"{verb}: overlayd answered conflict: {exc.message} (asked for {wanted.shown()})",
        )
    if exc.kind == "not_found":
        # Not found means an unknown container only where the verb names one
        # that should exist; for ADD and GC it is the network (a config error).
        code = UNKNOWN_CONTAINER if verb == "CHECK" else INVALID_CONFIG
    else:
        code = _API_CODES.get(exc.kind, DAEMON_INTERNAL)
    field = f" (field {exc.field})" if exc.field else ""
    return CniError(code, f"{verb}: overlayd answered {exc.kind}{field}: {exc.message}")


def result_from_record(record: Mapping[str, Any], dns: Mapping[str, Any]) -> Result:
    """The CNI result of an attachment record of the daemon."""
    try:
        gateway = str(record.get("gateway") or "")
        gw_version = ipaddress.ip_address(gateway).version if gateway else 0
        ips = []
        for address in record["ips"]:
            version = ipaddress.ip_interface(address).version
            ips.append(IPConfig(address, gateway if version == gw_version else "", 0))
        return Result(
            interfaces=[
                Interface(
                    name=record["ifname"],
                    mac=record["mac"],
                    mtu=int(record.get("mtu") or 0),
                    sandbox=record["netns"],
                )
            ],
            ips=ips,
            routes=[Route(dst=r["dst"], gw=r.get("gw") or "") for r in record.get("routes", [])],
            dns=dict(dns),
        )
    except (KeyError, TypeError, ValueError, CniError) as exc:
        raise CniError(
            DAEMON_INTERNAL,
            f"overlayd returned an attachment this plugin cannot read ({exc!r}): "
            "update overlayd and overlay-cni to the same release",
        ) from None


# -- the verbs -----------------------------------------------------------------


def cmd_add(env: CniEnv, net: NetConf) -> Result:
    conf = OverlayConf.parse(net)
    who = endpoint_identity(env, net)
    request: dict[str, Any] = {
        "container_id": env.container_id,
        "ifname": env.ifname,
        "netns": env.netns,
        "vni": conf.vni,
        "name": who.name,
        "labels": who.labels,
    }
    # The pod's own fields as well as its labels: overlayd checks them by
    # Kubernetes' rules and that the labels agree.
    if who.namespace:
        request["namespace"] = who.namespace
    if who.pod:
        request["pod"] = who.pod
    if who.named_ports:  # only then: an overlayd without them refuses the field
        request["named_ports"] = who.named_ports
    routes = list(conf.routes)
    dns: Mapping[str, Any] = net.dns
    delegate = conf.delegate(env)
    wanted = asked(env, net)
    if wanted.mac:
        request["mac"] = wanted.mac
    if delegate is None and len(wanted.ips) > 1:
        raise CniError(
            wanted.code(wanted.ips_from),
            f"{wanted.ips_from}={','.join(wanted.ips)}: overlayd gives a pod one address "
            "of the node's subnet; ask for one, or configure an ipam plugin for several",
        )
    env.check_netns()  # before anything is allocated
    if delegate is not None:
        ipam = delegate.add()
        if not ipam.ips:
            _release(delegate)
            raise CniError(
                INVALID_CONFIG,
                f"ipam.type={delegate.type!r} returned no addresses: check its configuration",
            )
        given = {str(ipaddress.ip_interface(ip.address).ip) for ip in ipam.ips}
        missed = [a for a in wanted.ips if str(ipaddress.ip_interface(a).ip) not in given]
        if missed:
            _release(delegate)
            raise CniError(
                wanted.code(wanted.ips_from),
                f"{wanted.ips_from}={','.join(wanted.ips)}: ipam.type={delegate.type!r} gave "
                f"{', '.join(ip.address for ip in ipam.ips)} instead of {', '.join(missed)}: "
                "use an IPAM plugin that honours asked-for addresses (host-local does)",
            )
        request["ips"] = [ip.address for ip in ipam.ips]
        request["ipam"] = "delegated"
        gateways = {ip.address: ip.gateway for ip in ipam.ips if ip.gateway}
        if gateways:
            request["gateways"] = gateways
        routes = [*ipam.routes, *(r for r in routes if r not in ipam.routes)]
        dns = ipam.dns or dns
    elif wanted.ips:
        request["ips"] = list(wanted.ips)
        request["ipam"] = "node"
    if routes:
        request["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in routes]
    if conf.mtu is not None:
        request["mtu"] = conf.mtu
    if conf.ip_masq:
        request["ip_masq"] = True
    try:
        record = conf.client().attach(request)
    except (ApiError, DaemonUnavailable) as exc:
        error = daemon_error(exc, "ADD", wanted)
        if delegate is not None:
            _release(delegate, error)
        raise error from None
    own = result_from_record(record, dns)
    prev = Result.from_dict(net.prev_result) if net.prev_result is not None else None
    return chain_result(prev, own)


def _release(delegate: Delegate, error: CniError | None = None) -> None:
    """Give back the delegate's addresses after a failed ADD. When that fails too,
    raise ``error`` with the failure added to its message, or the failure itself
    without ``error``."""
    try:
        delegate.delete()
    except CniError as exc:
        if error is None:
            raise
        raise error.with_msg(
            f"{error.msg} (and releasing the address with {delegate.type} failed too: "
            f"{exc.msg}; a DEL of this container that reaches overlayd releases it)"
        ) from None


def cmd_del(env: CniEnv, net: NetConf) -> None:
    conf = OverlayConf.parse(net)
    try:
        conf.client().detach(env.container_id, env.ifname)
    except DaemonUnavailable as exc:
        # Keep the IPAM lease: see "DEL with the daemon unreachable" above.
        raise CniError(TRY_AGAIN_LATER, f"DEL: {exc}; {_del_held(env, net)}") from None
    except ApiError as exc:
        if exc.kind != "not_found":  # gone already: DEL is idempotent
            raise daemon_error(exc, "DEL") from None
    delegate = conf.delegate(env)
    if delegate is not None:
        delegate.delete()


def _del_held(env: CniEnv, net: NetConf) -> str:
    """What a DEL that cannot reach overlayd leaves held, as far as it is known
    (see "DEL with the daemon unreachable" in the design notes)."""
    attachment = f"{env.container_id}/{env.ifname}"
    if net.prev_result is None:
        return (
            f"the runtime passed no result of an ADD of {attachment}: after a failed ADD "
            "nothing was attached and nothing is held; if an ADD did succeed, overlayd "
            "keeps its attachment and address until a DEL reaches it"
        )
    try:
        ips = [ip.address for ip in Result.from_dict(net.prev_result).ips]
    except CniError:
        ips = []
    what = f"its address {', '.join(ips)}" if ips else "its address"
    return (
        f"overlayd keeps attachment {attachment} and {what} until a DEL reaches it or, "
        "started again, it finds the pod's network namespace gone"
    )


def cmd_check(env: CniEnv, net: NetConf) -> None:
    conf = OverlayConf.parse(net)
    if net.prev_result is None:
        raise CniError(
            INVALID_CONFIG,
            "CHECK needs prevResult (the result of the ADD being checked): the runtime "
            "must pass it in the configuration",
        )
    prev = Result.from_dict(net.prev_result)
    env.check_netns(missing_ok=True)  # a vanished namespace is a difference, reported below
    try:
        record = conf.client().attachment(env.container_id, env.ifname)
    except (ApiError, DaemonUnavailable) as exc:
        error = daemon_error(exc, "CHECK")
        if error.code == UNKNOWN_CONTAINER:
            error = error.with_msg(
                f"CHECK: overlayd has no attachment {env.container_id}/{env.ifname} "
                f"({error.msg}): ADD it again"
            )
        raise error from None
    problems = compare_prev_result(prev, record, env.ifname)
    if record.get("attached") is False:
        # Kept from before a daemon restart, but its TAP could not be re-opened.
        problems.append("overlayd holds the attachment but it is not attached (no data path)")
    problems += inspect_netns(env.netns, env.ifname, record)
    if problems:
        raise CniError(
            CHECK_MISMATCH,
            f"CHECK {env.container_id}/{env.ifname}: {'; '.join(problems)}: "
            "DEL and ADD the container again to repair it",
        )
    delegate = conf.delegate(env)
    if delegate is not None and delegate.speaks("CHECK"):
        delegate.check()


def cmd_status(env: CniEnv, net: NetConf) -> None:
    conf = OverlayConf.parse(net)
    client = conf.client()
    try:
        status = client.status()
        networks = client.networks() if isinstance(status, dict) and status.get("ready") else []
    except DaemonUnavailable as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, f"STATUS: {exc}") from None
    except ApiError as exc:
        raise CniError(
            PLUGIN_NOT_AVAILABLE,
            f"STATUS: overlayd at {conf.socket} answered {exc.kind}: {exc.message}",
        ) from None
    if not isinstance(status, dict) or not status.get("ready"):
        reason = status.get("reason") if isinstance(status, dict) else None
        raise CniError(
            PLUGIN_NOT_AVAILABLE,
            f"STATUS: overlayd at {conf.socket} is running but not ready"
            f"{f' ({reason})' if isinstance(reason, str) and reason else ''}: wait for it, "
            "and see `overlay status` for what it waits on",
        )
    hosted = [n.get("vni") for n in networks if isinstance(n, dict) and "vni" in n]
    if hosted and len(hosted) == len(networks) and conf.vni not in hosted:
        raise CniError(
            PLUGIN_NOT_AVAILABLE,
            f"STATUS: overlayd at {conf.socket} does not host vni {conf.vni} (it hosts "
            f"{', '.join(map(str, hosted))}): add a [[networks]] entry with vni = {conf.vni} "
            "to its configuration, or fix vni here",
        )
    delegate = conf.delegate(env)
    if delegate is not None and delegate.speaks("STATUS"):
        delegate.status()


def cmd_gc(env: CniEnv, net: NetConf) -> None:
    """Remove what no valid attachment uses; keep going past errors, report them all."""
    conf = OverlayConf.parse(net)
    valid = [{"container_id": a.container_id, "ifname": a.ifname} for a in valid_attachments(net)]
    errors: list[CniError] = []
    removed: list[Mapping[str, Any]] = []
    try:
        answer = conf.client().gc(valid, vni=conf.vni)
        items = answer.get("removed", []) if isinstance(answer, dict) else []
        removed = [r for r in items if isinstance(r, dict)]
    except (ApiError, DaemonUnavailable) as exc:
        errors.append(daemon_error(exc, "GC"))
    try:
        delegate = conf.delegate(env)
        if delegate is not None and delegate.speaks("GC"):
            delegate.gc()
        elif delegate is not None:
            errors += _release_removed(delegate, removed)
    except CniError as exc:
        errors.append(exc)
    if errors:
        messages = (e.msg.removeprefix("GC: ") for e in errors)
        raise CniError(errors[0].code, "GC: " + "; ".join(messages))


def _release_removed(delegate: Delegate, removed: list[Mapping[str, Any]]) -> list[CniError]:
    """For a delegate without GC (spec <= 1.0.0): DEL each attachment overlayd has just
    removed that had its addresses from the delegate, releasing the leases. Errors are
    returned, not raised, so one failure does not keep the others' leases."""
    errors = []
    for item in removed:
        cid, ifname = item.get("container_id"), item.get("ifname")
        if isinstance(cid, str) and isinstance(ifname, str) and item.get("ipam") != "node":
            try:
                delegate.delete(cid, ifname)
            except CniError as exc:
                errors.append(exc)
    return errors


# -- CHECK: what the pod really has --------------------------------------------


def _norm_route(dst: str, gw: str) -> tuple[str, str]:
    return str(ipaddress.ip_network(dst, strict=False)), str(gw or "")


def compare_prev_result(prev: Result, record: Mapping[str, Any], ifname: str) -> list[str]:
    """How the daemon's attachment differs from the runtime's prevResult (empty: it doesn't)."""
    index = next((i for i, itf in enumerate(prev.interfaces) if itf.name == ifname), None)
    if index is None:
        return [f"prevResult has no interface {ifname}"]
    problems = []
    mac = str(record.get("mac", "")).lower()
    if prev.interfaces[index].mac and prev.interfaces[index].mac.lower() != mac:
        problems.append(f"MAC is {mac}, prevResult says {prev.interfaces[index].mac}")
    have = {str(ipaddress.ip_interface(a)) for a in record.get("ips", [])}
    said = {str(ipaddress.ip_interface(ip.address)) for ip in prev.ips if ip.interface == index}
    if have != said:
        problems.append(
            f"addresses are {', '.join(sorted(have)) or 'none'}, prevResult says "
            f"{', '.join(sorted(said)) or 'none'}"
        )
    prev_routes = {_norm_route(r.dst, r.gw) for r in prev.routes}
    for r in record.get("routes", []):
        dst, gw = _norm_route(r["dst"], r.get("gw", ""))
        if (dst, gw) not in prev_routes:
            problems.append(f"route {dst}{f' via {gw}' if gw else ''} is not in prevResult")
    return problems


_IFF_UP = 0x1


def inspect_netns(netns: str, ifname: str, record: Mapping[str, Any]) -> list[str]:
    """How the pod's interface in ``netns`` differs from the daemon's attachment record:
    its existence, MAC, MTU, state, addresses and routes (empty: it doesn't)."""
    from overlay.nsenter import iproute  # pyroute2: only CHECK pays for it

    try:
        with iproute(netns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return [f"no interface {ifname} in {netns}"]
            index = found[0]
            link = ipr.get_links(index)[0]
            addrs = {
                f"{a.get_attr('IFA_LOCAL') or a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=index)
            }
            families = {
                ipaddress.ip_network(r["dst"], strict=False).version
                for r in record.get("routes", [])
            }
            routes: set[tuple[str, str]] = set()
            for version in sorted(families):
                family = socket.AF_INET if version == 4 else socket.AF_INET6
                for rt in ipr.get_routes(family=family):
                    if rt.get_attr("RTA_OIF") != index:
                        continue
                    dst = rt.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
                    routes.add(
                        _norm_route(f"{dst}/{rt['dst_len']}", rt.get_attr("RTA_GATEWAY") or "")
                    )
    except FileNotFoundError:
        return [f"network namespace {netns} does not exist"]
    problems = []
    mac = str(link.get_attr("IFLA_ADDRESS") or "").lower()
    if mac != str(record.get("mac", "")).lower():
        problems.append(f"{ifname} has MAC {mac}, overlayd has {record.get('mac')}")
    mtu = record.get("mtu")
    if mtu and link.get_attr("IFLA_MTU") != mtu:
        problems.append(f"{ifname} has MTU {link.get_attr('IFLA_MTU')}, overlayd has {mtu}")
    if not link["flags"] & _IFF_UP:
        problems.append(f"{ifname} is down")
    for address in record.get("ips", []):
        if str(ipaddress.ip_interface(address)) not in addrs:
            problems.append(f"{ifname} lacks address {address}")
    for r in record.get("routes", []):
        dst, gw = _norm_route(r["dst"], r.get("gw", ""))
        if not any(d == dst and (not gw or g == gw) for d, g in routes):
            problems.append(f"route {dst}{f' via {gw}' if gw else ''} dev {ifname} is missing")
    return problems


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


def main() -> None:
    """The ``overlay-cni`` console script."""
    raise SystemExit(run(HANDLERS))


if __name__ == "__main__":
    main()
