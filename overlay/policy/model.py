"""The policy objects as plain, validated, immutable data.

Three kinds, parsed strictly from the dictionaries Kubernetes serves:

- ``NetworkPolicy`` (networking.k8s.io/v1): namespaced, selects pods of its
  namespace, allow-only, combined by union.
- ``AdminNetworkPolicy`` (policy.networking.k8s.io/v1alpha1, "ANP"):
  cluster-wide, ``priority`` 0-1000 (lower first), ordered rules with the
  actions Allow, Deny and Pass, evaluated before any NetworkPolicy.
- ``BaselineAdminNetworkPolicy`` ("BANP"): a singleton named ``default``,
  Allow and Deny, evaluated after NetworkPolicy for the pods that no
  NetworkPolicy isolates.

Design notes. Parsing is all-or-nothing: ``from_dict`` builds the whole object
or raises ``ConfigError`` whose field is the path to the value at fault
(``spec.ingress[0].from[1].ipBlock.except[0]``) and whose message says what
would be accepted. Unknown fields are refused (a misspelt ``podSelecter``
silently selecting every pod is the worst failure a policy can have), as the
API server's strict field validation does. Defaults are applied here, once:
``policyTypes`` (Ingress always, Egress only when the spec has egress rules),
``protocol`` (TCP), an absent selector in a peer (none) versus an empty one
(all). The evaluator and the compiler read the defaulted values only.

Deviations from the API server, each deliberate: CIDRs with host bits set
(``10.0.0.12/24``) are accepted as Kubernetes accepts them and normalised to
the network (``10.0.0.0/24``); an ANP or BANP rule with ``ports: []`` is
refused rather than guessed at (omit ``ports`` to match every port); the ANP
egress peer ``nodes`` is refused (a node has no labels in this model) with a
message saying to use ``networks`` with the nodes' addresses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Literal

from overlay.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = ("TCP", "UDP", "SCTP")
NP_API = "networking.k8s.io/v1"
ANP_API = "policy.networking.k8s.io/v1alpha1"
PRIORITY_MAX = 1000
ADMIN_RULES_MAX = 100  # per direction, and peers/ports per rule
ADMIN_NETWORKS_MAX = 25
RULE_NAME_MAX = 100
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

Direction = Literal["ingress", "egress"]
Action = Literal["Allow", "Deny", "Pass"]

_SEGMENT_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# IANA_SVC_NAME (RFC 6335): what a named port may be called.
_SVC_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*")

# ObjectMeta fields a served object may carry (kubectl get -o yaml); anything
# else under metadata is a typo.
_METADATA_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "ownerReferences",
        "finalizers",
        "generateName",
        "selfLink",
    }
)


# -- checking helpers: each raises ConfigError naming the path ---------------


def _mapping(path: str, value: object, fields: frozenset[str] | set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, "a mapping (object)")
    for key in value:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                where, value[key], f"an unknown field; the fields here are {sorted(fields)}"
            )
    return value


def _list(path: str, value: object, lo: int = 0, hi: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, value, "a list")
    if len(value) < lo:
        raise ConfigError(path, value, f"a list of at least {lo} item(s)")
    if hi is not None and len(value) > hi:
        raise ConfigError(path, f"<{len(value)} items>", f"a list of at most {hi} items")
    return value


def _str(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, value, "a string (quote it in YAML)")
    return value


def _int(path: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(path, value, f"an integer {lo}-{hi}")
    return value


def check_label_key(path: str, key: object) -> str:
    key = _str(path, key)
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _SUBDOMAIN_RE.fullmatch(prefix)):
        raise ConfigError(
            path, key, "a label key: an optional DNS-subdomain prefix (lowercase) and '/'"
        )
    if not name or len(name) > 63 or not _SEGMENT_RE.fullmatch(name):
        raise ConfigError(
            path, key, "a label key: 1-63 characters of [A-Za-z0-9-_.], alphanumeric at both ends"
        )
    return key


def check_label_value(path: str, value: object) -> str:
    value = _str(path, value)
    if value and (len(value) > 63 or not _SEGMENT_RE.fullmatch(value)):
        raise ConfigError(
            path,
            value,
            "a label value: empty or 1-63 characters of [A-Za-z0-9-_.], alphanumeric at both ends",
        )
    return value


def check_labels(path: str, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, "a mapping of label keys to string values")
    out: dict[str, str] = {}
    for key, val in value.items():
        check_label_key(f"{path}.{key}", key)
        out[key] = check_label_value(f"{path}.{key}", val)
    return out


def _dns_subdomain(path: str, value: object) -> str:
    if value is None:
        raise ConfigError(path, value, "a name (required): a DNS subdomain")
    value = _str(path, value)
    if not value or len(value) > 253 or not _SUBDOMAIN_RE.fullmatch(value):
        raise ConfigError(
            path, value, "a DNS subdomain: lowercase alphanumerics, '-' and '.', at most 253"
        )
    return value


def check_namespace_name(path: str, value: object) -> str:
    value = _str(path, value)
    if not value or len(value) > 63 or not _DNS_LABEL_RE.fullmatch(value):
        raise ConfigError(
            path, value, "a namespace name: 1-63 lowercase alphanumerics or '-', alphanumeric ends"
        )
    return value


def _protocol(path: str, value: object) -> str:
    if value not in PROTOCOLS:
        raise ConfigError(path, value, "TCP, UDP or SCTP (upper case)")
    return str(value)


def _port_name(path: str, value: str) -> str:
    if len(value) > 15 or not _SVC_NAME_RE.fullmatch(value) or not any(c.isalpha() for c in value):
        raise ConfigError(
            path,
            value,
            "a port number 1-65535 (unquoted) or a port name (IANA_SVC_NAME: 1-15 lowercase"
            " alphanumerics or '-', at least one letter, no '-' at the ends or twice in a row)",
        )
    return value


def parse_cidr(path: str, value: object) -> IPNetwork:
    value = _str(path, value)
    if "/" not in value:
        raise ConfigError(
            path, value, "a CIDR with a prefix length, e.g. 10.0.0.0/24 or 10.0.0.5/32"
        )
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(path, value, "a CIDR, e.g. 10.0.0.0/24 or 2001:2::/64") from None


def parse_ip(path: str, value: object) -> IPAddress:
    value = _str(path, value)
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(path, value, "an IPv4 or IPv6 address") from None


# -- selectors ---------------------------------------------------------------

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry: ``key`` ``operator`` ``values``."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":  # an absent key is "not in" (apimachinery labels.Selector)
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector: matchLabels and matchExpressions, ANDed.

    "An empty label selector matches all objects" (apimachinery); ``None``
    where a selector is optional means the field was absent, which is not
    the same thing (a peer without podSelector is not "all pods").
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    @classmethod
    def from_dict(cls, d: object, path: str) -> LabelSelector:
        d = _mapping(path, d, {"matchLabels", "matchExpressions"})
        labels = check_labels(f"{path}.matchLabels", d.get("matchLabels") or {})
        reqs = []
        for i, e in enumerate(_list(f"{path}.matchExpressions", d.get("matchExpressions") or [])):
            p = f"{path}.matchExpressions[{i}]"
            e = _mapping(p, e, {"key", "operator", "values"})
            if "key" not in e or "operator" not in e:
                raise ConfigError(p, e, "a requirement with 'key' and 'operator'")
            key = check_label_key(f"{p}.key", e["key"])
            op = e["operator"]
            if op not in _OPERATORS:
                raise ConfigError(f"{p}.operator", op, "one of In, NotIn, Exists, DoesNotExist")
            values = _list(f"{p}.values", e.get("values") or [])
            if op in ("In", "NotIn") and not values:
                raise ConfigError(f"{p}.values", values, f"a non-empty list for operator {op}")
            if op in ("Exists", "DoesNotExist") and values:
                raise ConfigError(f"{p}.values", values, f"absent or empty for operator {op}")
            vals = tuple(check_label_value(f"{p}.values[{j}]", v) for j, v in enumerate(values))
            reqs.append(Requirement(key, op, vals))
        return cls(tuple(sorted(labels.items())), tuple(reqs))


# -- NetworkPolicy -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IPBlock:
    """``cidr`` minus each of ``except_`` (strict subsets of cidr, same family)."""

    cidr: IPNetwork
    except_: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.except_)

    @classmethod
    def from_dict(cls, d: object, path: str) -> IPBlock:
        d = _mapping(path, d, {"cidr", "except"})
        if "cidr" not in d:
            raise ConfigError(f"{path}.cidr", None, "a CIDR (required in an ipBlock)")
        cidr = parse_cidr(f"{path}.cidr", d["cidr"])
        excepts = []
        for i, e in enumerate(_list(f"{path}.except", d.get("except") or [])):
            p = f"{path}.except[{i}]"
            net = parse_cidr(p, e)
            # API: "Except values will be rejected if they are outside the cidr range".
            if (
                net.version != cidr.version
                or not net.subnet_of(cidr)  # type: ignore[arg-type]
                or net.prefixlen <= cidr.prefixlen
            ):
                raise ConfigError(p, e, f"a CIDR strictly inside the ipBlock's cidr {cidr}")
            excepts.append(net)
        return cls(cidr, tuple(excepts))


@dataclasses.dataclass(frozen=True)
class PolicyPort:
    """NetworkPolicyPort: protocol (TCP default), port number or name, endPort.

    ``port`` None = every port of the protocol. A name is resolved on the
    destination pod by name AND protocol; ``end_port`` makes an inclusive range.
    """

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    @classmethod
    def from_dict(cls, d: object, path: str) -> PolicyPort:
        d = _mapping(path, d, {"protocol", "port", "endPort"})
        proto = _protocol(f"{path}.protocol", d.get("protocol", "TCP"))
        port: int | str | None = d.get("port")
        if isinstance(port, str):
            port = _port_name(f"{path}.port", port)
        elif port is not None:
            port = _int(f"{path}.port", port, 1, 65535)
        end = d.get("endPort")
        if end is not None:
            if not isinstance(port, int):
                raise ConfigError(
                    f"{path}.endPort",
                    end,
                    "set only together with a numeric 'port' (the range start)",
                )
            end = _int(f"{path}.endPort", end, 1, 65535)
            if end < port:
                raise ConfigError(f"{path}.endPort", end, f"at least port ({port})")
        return cls(proto, port, end)


@dataclasses.dataclass(frozen=True)
class Peer:
    """NetworkPolicyPeer. Exactly: ipBlock alone, or podSelector and/or
    namespaceSelector (both set = AND; ``None`` = field absent)."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @classmethod
    def from_dict(cls, d: object, path: str) -> Peer:
        d = _mapping(path, d, {"podSelector", "namespaceSelector", "ipBlock"})
        if not d:
            raise ConfigError(
                path, d, "a peer with podSelector, namespaceSelector and/or ipBlock (none was set)"
            )
        if "ipBlock" in d and len(d) > 1:
            raise ConfigError(
                path, d, "ipBlock alone: it may not be combined with podSelector/namespaceSelector"
            )
        if "ipBlock" in d:
            return cls(ip_block=IPBlock.from_dict(d["ipBlock"], f"{path}.ipBlock"))
        pods = d.get("podSelector")
        nss = d.get("namespaceSelector")
        return cls(
            pod_selector=None
            if pods is None
            else LabelSelector.from_dict(pods, f"{path}.podSelector"),
            namespace_selector=None
            if nss is None
            else LabelSelector.from_dict(nss, f"{path}.namespaceSelector"),
        )


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ingress or egress rule: (any peer) AND (any port).

    ``peers`` empty = every source/destination ("If this field is empty or
    missing, this rule matches all sources"); ``ports`` empty = every port
    and protocol.
    """

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()

    @classmethod
    def from_dict(cls, d: object, path: str, peers_key: str) -> Rule:
        d = _mapping(path, d, {peers_key, "ports"})
        peers = _list(f"{path}.{peers_key}", d.get(peers_key) or [])
        ports = _list(f"{path}.ports", d.get("ports") or [])
        return cls(
            tuple(Peer.from_dict(p, f"{path}.{peers_key}[{i}]") for i, p in enumerate(peers)),
            tuple(PolicyPort.from_dict(p, f"{path}.ports[{i}]") for i, p in enumerate(ports)),
        )


def _check_head(d: Mapping[str, Any], api: str, kind: str) -> None:
    if "apiVersion" in d and d["apiVersion"] != api:
        raise ConfigError("apiVersion", d["apiVersion"], f"{api} for kind {kind}")
    if "kind" in d and d["kind"] != kind:
        raise ConfigError("kind", d["kind"], kind)


@dataclasses.dataclass(frozen=True)
class NetworkPolicy:
    """A networking.k8s.io/v1 NetworkPolicy, defaulted.

    ``policy_types`` is the defaulted set: as given, else {"Ingress"} plus
    "Egress" if the spec has egress rules.
    """

    name: str
    namespace: str
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    policy_types: frozenset[str] = frozenset({"Ingress"})

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def isolates(self, direction: Direction) -> bool:
        return ("Ingress" if direction == "ingress" else "Egress") in self.policy_types

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction == "ingress" else self.egress

    @classmethod
    def from_dict(cls, d: object, namespace: str = "default") -> NetworkPolicy:
        """Parse one object as served by the API (``namespace`` if metadata has none)."""
        d = _mapping("", d, {"apiVersion", "kind", "metadata", "spec", "status"})
        _check_head(d, NP_API, "NetworkPolicy")
        meta = _mapping("metadata", d.get("metadata") or {}, _METADATA_FIELDS)
        name = _dns_subdomain("metadata.name", meta.get("name"))
        ns = check_namespace_name("metadata.namespace", meta.get("namespace", namespace))
        spec = _mapping(
            "spec", d.get("spec", {}), {"podSelector", "ingress", "egress", "policyTypes"}
        )
        selector = LabelSelector.from_dict(spec.get("podSelector") or {}, "spec.podSelector")
        ingress_raw = spec.get("ingress")
        egress_raw = spec.get("egress")
        ingress = tuple(
            Rule.from_dict(r, f"spec.ingress[{i}]", "from")
            for i, r in enumerate(_list("spec.ingress", ingress_raw or []))
        )
        egress = tuple(
            Rule.from_dict(r, f"spec.egress[{i}]", "to")
            for i, r in enumerate(_list("spec.egress", egress_raw or []))
        )
        if "policyTypes" in spec and spec["policyTypes"] is not None:
            raw = _list("spec.policyTypes", spec["policyTypes"], 1, 2)
            for i, t in enumerate(raw):
                if t not in ("Ingress", "Egress"):
                    raise ConfigError(f"spec.policyTypes[{i}]", t, "Ingress or Egress")
            if len(set(raw)) != len(raw):
                raise ConfigError("spec.policyTypes", raw, "Ingress and/or Egress, each once")
            types = frozenset(raw)
        else:
            # types.go: "If this field is not specified, it will default based on the
            # existence of ingress or egress rules; policies that contain an egress
            # section are assumed to affect egress, and all policies (whether or not
            # they contain an ingress section) are assumed to affect ingress."
            types = frozenset({"Ingress", "Egress"} if egress else {"Ingress"})
        return cls(name, ns, selector, ingress, egress, types)


# -- AdminNetworkPolicy / BaselineAdminNetworkPolicy -------------------------


@dataclasses.dataclass(frozen=True)
class Subject:
    """ANP subject: ``namespaces`` (pod_selector None: every pod in them) or
    ``pods`` (namespaceSelector AND podSelector)."""

    namespace_selector: LabelSelector
    pod_selector: LabelSelector | None = None

    @classmethod
    def from_dict(cls, d: object, path: str) -> Subject:
        return _namespaced(d, path, "subject")


@dataclasses.dataclass(frozen=True)
class AdminPeer:
    """ANP/BANP peer: namespaces, pods (namespaceSelector AND podSelector), or
    (egress only) networks. Exactly one is set."""

    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None
    networks: tuple[IPNetwork, ...] = ()


def _namespaced(d: object, path: str, what: str) -> Subject:
    d = _mapping(path, d, {"namespaces", "pods"})
    if len(d) != 1:
        raise ConfigError(path, d, f"a {what} with exactly one of 'namespaces' or 'pods'")
    if "namespaces" in d:
        return Subject(LabelSelector.from_dict(d["namespaces"], f"{path}.namespaces"))
    pods = _mapping(f"{path}.pods", d["pods"], {"namespaceSelector", "podSelector"})
    for key in ("namespaceSelector", "podSelector"):
        if key not in pods:
            raise ConfigError(f"{path}.pods.{key}", None, "a label selector ({} for all)")
    return Subject(
        LabelSelector.from_dict(pods["namespaceSelector"], f"{path}.pods.namespaceSelector"),
        LabelSelector.from_dict(pods["podSelector"], f"{path}.pods.podSelector"),
    )


def _admin_peer(d: object, path: str, egress: bool) -> AdminPeer:
    keys = {"namespaces", "pods", "networks", "nodes"} if egress else {"namespaces", "pods"}
    d = _mapping(path, d, keys)
    if len(d) != 1:
        raise ConfigError(path, d, f"a peer with exactly one of {sorted(keys - {'nodes'})}")
    if "nodes" in d:
        raise ConfigError(
            f"{path}.nodes",
            d["nodes"],
            "not supported (nodes carry no labels here); use 'networks' with the nodes' addresses",
        )
    if "networks" in d:
        nets = _list(f"{path}.networks", d["networks"], 1, ADMIN_NETWORKS_MAX)
        return AdminPeer(
            networks=tuple(parse_cidr(f"{path}.networks[{i}]", n) for i, n in enumerate(nets))
        )
    s = _namespaced(d, path, "peer")
    return AdminPeer(s.namespace_selector, s.pod_selector)


@dataclasses.dataclass(frozen=True)
class AdminPort:
    """ANP port: portNumber (start == end), portRange, or namedPort (``name``)."""

    protocol: str = "TCP"
    start: int = 0
    end: int = 0
    name: str | None = None

    @classmethod
    def from_dict(cls, d: object, path: str) -> AdminPort:
        d = _mapping(path, d, {"portNumber", "portRange", "namedPort"})
        if len(d) != 1:
            raise ConfigError(path, d, "exactly one of portNumber, portRange, namedPort")
        if "namedPort" in d:
            return cls(
                name=_port_name(f"{path}.namedPort", _str(f"{path}.namedPort", d["namedPort"]))
            )
        if "portNumber" in d:
            p = f"{path}.portNumber"
            n = _mapping(p, d["portNumber"], {"protocol", "port"})
            if "port" not in n:
                raise ConfigError(f"{p}.port", None, "a port number 1-65535 (required)")
            port = _int(f"{p}.port", n["port"], 1, 65535)
            return cls(_protocol(f"{p}.protocol", n.get("protocol", "TCP")), port, port)
        p = f"{path}.portRange"
        r = _mapping(p, d["portRange"], {"protocol", "start", "end"})
        for key in ("start", "end"):
            if key not in r:
                raise ConfigError(f"{p}.{key}", None, "a port number 1-65535 (required)")
        start = _int(f"{p}.start", r["start"], 1, 65535)
        end = _int(f"{p}.end", r["end"], 1, 65535)
        if end <= start:  # API: "the End value must be greater than Start"
            raise ConfigError(f"{p}.end", end, f"greater than start ({start})")
        return cls(_protocol(f"{p}.protocol", r.get("protocol", "TCP")), start, end)


@dataclasses.dataclass(frozen=True)
class AdminRule:
    """An ANP/BANP rule: first match in order decides. ``ports`` None = all."""

    action: str
    peers: tuple[AdminPeer, ...]
    ports: tuple[AdminPort, ...] | None = None
    name: str = ""


def _admin_rules(
    spec: Mapping[str, Any], direction: Direction, actions: tuple[str, ...]
) -> tuple[AdminRule, ...]:
    key = direction
    peers_key = "from" if direction == "ingress" else "to"
    out = []
    for i, r in enumerate(_list(f"spec.{key}", spec.get(key) or [], 0, ADMIN_RULES_MAX)):
        p = f"spec.{key}[{i}]"
        r = _mapping(p, r, {"name", "action", peers_key, "ports"})
        name = _str(f"{p}.name", r.get("name", ""))
        if len(name) > RULE_NAME_MAX:
            raise ConfigError(f"{p}.name", name, f"at most {RULE_NAME_MAX} characters")
        action = r.get("action")
        if action not in actions:
            raise ConfigError(f"{p}.action", action, " or ".join(actions))
        if peers_key not in r:
            raise ConfigError(f"{p}.{peers_key}", None, "a list of 1-100 peers (required)")
        peers = _list(f"{p}.{peers_key}", r[peers_key], 1, ADMIN_RULES_MAX)
        ports: tuple[AdminPort, ...] | None = None
        if r.get("ports") is not None:
            raw = _list(f"{p}.ports", r["ports"], 0, ADMIN_RULES_MAX)
            if not raw:
                raise ConfigError(
                    f"{p}.ports", raw, "omit 'ports' to match every port; [] is refused"
                )
            ports = tuple(AdminPort.from_dict(x, f"{p}.ports[{j}]") for j, x in enumerate(raw))
        out.append(
            AdminRule(
                str(action),
                tuple(
                    _admin_peer(x, f"{p}.{peers_key}[{j}]", direction == "egress")
                    for j, x in enumerate(peers)
                ),
                ports,
                name,
            )
        )
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class AdminNetworkPolicy:
    """A policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy.

    "Rules with lower priority values have higher precedence"; within one
    policy the rules apply in the order written. Two policies of the same
    priority are ordered by name (the API leaves that undefined).
    """

    name: str
    priority: int
    subject: Subject
    ingress: tuple[AdminRule, ...] = ()
    egress: tuple[AdminRule, ...] = ()

    def rules(self, direction: Direction) -> tuple[AdminRule, ...]:
        return self.ingress if direction == "ingress" else self.egress

    @classmethod
    def from_dict(cls, d: object) -> AdminNetworkPolicy:
        d = _mapping("", d, {"apiVersion", "kind", "metadata", "spec", "status"})
        _check_head(d, ANP_API, "AdminNetworkPolicy")
        meta = _mapping("metadata", d.get("metadata") or {}, _METADATA_FIELDS)
        name = _dns_subdomain("metadata.name", meta.get("name"))
        if "namespace" in meta:
            raise ConfigError(
                "metadata.namespace", meta["namespace"], "absent: the kind is cluster-wide"
            )
        spec = _mapping("spec", d.get("spec"), {"priority", "subject", "ingress", "egress"})
        if "priority" not in spec:
            raise ConfigError("spec.priority", None, f"an integer 0-{PRIORITY_MAX} (required)")
        priority = _int("spec.priority", spec["priority"], 0, PRIORITY_MAX)
        if "subject" not in spec:
            raise ConfigError("spec.subject", None, "a subject: namespaces or pods (required)")
        subject = Subject.from_dict(spec["subject"], "spec.subject")
        actions = ("Allow", "Deny", "Pass")
        return cls(
            name,
            priority,
            subject,
            _admin_rules(spec, "ingress", actions),
            _admin_rules(spec, "egress", actions),
        )


@dataclasses.dataclass(frozen=True)
class BaselineAdminNetworkPolicy:
    """The singleton BaselineAdminNetworkPolicy (named ``default``): Allow/Deny
    rules in order, for traffic NetworkPolicy leaves undecided."""

    subject: Subject
    ingress: tuple[AdminRule, ...] = ()
    egress: tuple[AdminRule, ...] = ()
    name: str = "default"

    def rules(self, direction: Direction) -> tuple[AdminRule, ...]:
        return self.ingress if direction == "ingress" else self.egress

    @classmethod
    def from_dict(cls, d: object) -> BaselineAdminNetworkPolicy:
        d = _mapping("", d, {"apiVersion", "kind", "metadata", "spec", "status"})
        _check_head(d, ANP_API, "BaselineAdminNetworkPolicy")
        meta = _mapping("metadata", d.get("metadata") or {}, _METADATA_FIELDS)
        if meta.get("name") != "default":
            raise ConfigError(
                "metadata.name", meta.get("name"), "'default' (the BANP is a singleton)"
            )
        if "namespace" in meta:
            raise ConfigError(
                "metadata.namespace", meta["namespace"], "absent: the kind is cluster-wide"
            )
        spec = _mapping("spec", d.get("spec"), {"subject", "ingress", "egress"})
        if "subject" not in spec:
            raise ConfigError("spec.subject", None, "a subject: namespaces or pods (required)")
        subject = Subject.from_dict(spec["subject"], "spec.subject")
        actions = ("Allow", "Deny")
        return cls(
            subject, _admin_rules(spec, "ingress", actions), _admin_rules(spec, "egress", actions)
        )


# -- the world the policies are evaluated in ---------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A pod: its address, namespace, labels and named container ports
    (name -> (number, protocol))."""

    ip: str
    namespace: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    named_ports: Mapping[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    name: str = ""

    @property
    def address(self) -> IPAddress:
        return ipaddress.ip_address(self.ip)


@dataclasses.dataclass(frozen=True)
class World:
    """Namespaces (name -> labels), endpoints and the node addresses.

    Every namespace gets ``kubernetes.io/metadata.name: <name>`` as the API
    server sets it. Traffic between an endpoint and a node address is always
    allowed ("traffic to and from the node where a Pod is running is always
    allowed"); give the addresses of the pods' own node (its gateway on the
    pod network).
    """

    namespaces: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    endpoints: tuple[Endpoint, ...] | list[Endpoint] = ()
    node_addresses: frozenset[str] | set[str] | tuple[str, ...] = frozenset()

    def __post_init__(self) -> None:
        nss: dict[str, dict[str, str]] = {}
        for ns, labels in self.namespaces.items():
            check_namespace_name(f"namespaces[{ns!r}]", ns)
            nss[ns] = {**check_labels(f"namespaces[{ns!r}]", labels), NAMESPACE_NAME_LABEL: ns}
        nodes = frozenset(
            parse_ip(f"node_addresses[{i}]", a) for i, a in enumerate(sorted(self.node_addresses))
        )
        by_ip: dict[IPAddress, Endpoint] = {}
        for i, ep in enumerate(self.endpoints):
            p = f"endpoints[{i}]"
            if not isinstance(ep, Endpoint):
                raise ConfigError(p, ep, "a policy.Endpoint")
            addr = parse_ip(f"{p}.ip", ep.ip)
            if ep.namespace not in nss:
                raise ConfigError(
                    f"{p}.namespace", ep.namespace, "a namespace listed in World.namespaces; add it"
                )
            check_labels(f"{p}.labels", ep.labels)
            for name, np in ep.named_ports.items():
                _port_name(f"{p}.named_ports[{name!r}]", _str(f"{p}.named_ports", name))
                if not (isinstance(np, tuple) and len(np) == 2):
                    raise ConfigError(f"{p}.named_ports[{name!r}]", np, "a (number, protocol) pair")
                _int(f"{p}.named_ports[{name!r}][0]", np[0], 1, 65535)
                _protocol(f"{p}.named_ports[{name!r}][1]", np[1])
            if addr in by_ip:
                raise ConfigError(f"{p}.ip", ep.ip, "an address no other endpoint has")
            if addr in nodes:
                raise ConfigError(f"{p}.ip", ep.ip, "an address that is not a node address")
            by_ip[addr] = ep
        object.__setattr__(self, "namespaces", nss)
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        object.__setattr__(self, "node_addresses", nodes)
        object.__setattr__(self, "_by_ip", by_ip)

    def endpoint(self, ip: str | IPAddress) -> Endpoint | None:
        """The endpoint with this address, or None (outside the cluster)."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        by_ip: dict[IPAddress, Endpoint] = self._by_ip  # type: ignore[attr-defined]
        return by_ip.get(addr)

    def is_node(self, ip: IPAddress) -> bool:
        return ip in self.node_addresses

    def namespace_labels(self, ns: str) -> Mapping[str, str]:
        return self.namespaces.get(ns, {NAMESPACE_NAME_LABEL: ns})

    def named_port(self, ep: Endpoint, name: str, protocol: str) -> int | None:
        """The number of ``ep``'s container port called ``name`` with ``protocol``."""
        got = ep.named_ports.get(name)
        return got[0] if got is not None and got[1] == protocol else None

    # Selection, shared by the evaluator and the compiler.

    def np_selects(self, policy: NetworkPolicy, ep: Endpoint) -> bool:
        return ep.namespace == policy.namespace and policy.pod_selector.matches(ep.labels)

    def subject_selects(self, s: Subject, ep: Endpoint) -> bool:
        return s.namespace_selector.matches(self.namespace_labels(ep.namespace)) and (
            s.pod_selector is None or s.pod_selector.matches(ep.labels)
        )

    def np_peer_matches(self, peer: Peer, policy_ns: str, ep: Endpoint) -> bool:
        """A selector peer (not ipBlock) against a pod.

        podSelector alone: pods of the policy's namespace; namespaceSelector
        alone: every pod of the selected namespaces; both: "selects particular
        Pods within particular Namespaces" (AND).
        """
        if peer.namespace_selector is None:
            if ep.namespace != policy_ns:
                return False
        elif not peer.namespace_selector.matches(self.namespace_labels(ep.namespace)):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(ep.labels)
