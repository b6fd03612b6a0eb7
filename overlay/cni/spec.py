"""CNI spec 1.1.0 as Python types: the environment, the network configuration,
results and errors — for the bundled ``overlay-cni`` plugin and for people
writing their own plugin on top of overlay.

Design notes. A CNI plugin is a thin, stateless dispatcher: read the
environment and stdin once into typed values (``CniEnv``, ``NetConf``), act,
and print a ``Result`` or a ``CniError`` as JSON. Every input problem becomes
a ``CniError`` with the spec's code and a message that names the variable or
field and the fix: 1 incompatible version, 2 unsupported field, 4 bad
environment, 6 decoding failure, 7 invalid configuration. Versions: this
plugin speaks 0.3.0 through 1.1.0; results are printed in the version the
configuration asked for, converted to that version's format
(``RESULT_FORMATS``: a "version" on each IP before 1.0.0, no 1.1.0-only keys
before 1.1.0), because a runtime parses only the format it asked for (podman
4.3 cannot parse a 1.1.0 result), so chaining with 1.0.0 plugins such as
Debian's host-local works too. The container ID, interface
name, network name and namespace are checked by ``overlay.cni.validate``, the
rules overlayd's API applies too; stdin is decoded by its ``load_json``
(nesting bounded: code 6, never an uncaught ``RecursionError``).
``CniEnv.check_netns`` looks at the file system, so a plugin calls it in the
verbs that enter the namespace.

``run(handlers)`` is that dispatcher, shared by the bundled plugin and by
plugin authors: it parses once, gates verbs by version (CHECK needs 0.4.0,
STATUS and GC need 1.1.0), calls the one handler for ``CNI_COMMAND``, prints
the result (ADD only; the other verbs print nothing on success) and turns any
``CniError`` into the spec's error JSON on stdout with exit status 1. An
exception that is not a ``CniError`` is a bug: its traceback goes to stderr
and the runtime still gets well-formed error JSON (code 999).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from overlay.cni import validate

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
VERBS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# Error codes of the spec (section "Error"), plus the plugin's own from 100.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50  # STATUS: cannot serve ADD
PLUGIN_DEGRADED = 51  # STATUS: existing attachments may be affected
# Not in the spec: the code CNI implementations conventionally use for an
# unexpected failure (a bug, or a sub-plugin that died without an error JSON).
PLUGIN_INTERNAL = 999

# Top-level keys the spec (or a runtime following it) may put in a plugin's
# configuration; anything else is the plugin's own. The valid-attachments list
# of GC is sent under both names: the spec was published with one and runtimes
# set the other as well.
VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")
STANDARD_KEYS = frozenset(
    {
        *VALID_ATTACHMENTS_KEYS,
        "cniVersion",
        "name",
        "type",
        "args",
        "ipMasq",
        "networkScaling",
        "ipam",
        "dns",
        "capabilities",
        "runtimeConfig",
        "prevResult",
    }
)

# The rules for container IDs, interface names, network names and namespaces
# are in ``overlay.cni.validate``, shared with overlayd's API.


class CniError(Exception):
    """A CNI error result: code, message naming the fix, details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def with_msg(self, msg: str) -> CniError:
        """The same error (code, details) with another message."""
        return CniError(self.code, msg, self.details)

    def to_json(self, cni_version: str = "1.1.0") -> str:
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return json.dumps(body)


@dataclasses.dataclass(frozen=True)
class CniEnv:
    """The CNI_* environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = dataclasses.field(default_factory=dict)
    path: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> CniEnv:
        """Parse and check the environment for the verb; CniError code 4 naming the variable."""
        command = environ.get("CNI_COMMAND", "")
        if command not in VERBS:
            raise CniError(
                INVALID_ENV,
                f"CNI_COMMAND={command!r}: expected one of {', '.join(VERBS)}",
            )
        cid = environ.get("CNI_CONTAINERID", "")
        netns = environ.get("CNI_NETNS", "")
        ifname = environ.get("CNI_IFNAME", "")
        required = {
            "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
            "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
            "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
        }.get(command, ())
        for var in required:
            if not environ.get(var):
                raise CniError(INVALID_ENV, f"{var} is required for {command}: set it")
        for var, value, rule in (
            ("CNI_CONTAINERID", cid, validate.container_id),
            ("CNI_IFNAME", ifname, validate.ifname),
        ):
            # Empty is "not given" (libcni sets every variable, empty where a verb has
            # none); the verbs that need one were checked above.
            if value:
                try:
                    rule(value)
                except validate.Invalid as exc:
                    raise CniError(
                        INVALID_ENV, f"{var}={validate.shown(value)}: {exc.expected}"
                    ) from None
        args: dict[str, str] = {}
        raw_args = environ.get("CNI_ARGS", "")
        for pair in filter(None, raw_args.split(";")):
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise CniError(
                    INVALID_ENV,
                    f"CNI_ARGS={validate.shown(raw_args)}: expected K=V pairs joined by ';'",
                )
            args[key] = value
        path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
        return cls(command, cid, netns, ifname, args, path)

    def check_netns(self, *, missing_ok: bool = False) -> None:
        """Code 4 naming CNI_NETNS unless it is the path of a network namespace other
        than the one this plugin runs in (the runtime's: a pod never gets the host's
        namespace). With ``missing_ok`` a path where nothing is passes (CHECK
        reports a vanished pod namespace as a difference, not as bad input).

        It looks at the file system, so a plugin calls it in the verbs that enter
        the namespace (ADD, CHECK), after its configuration is checked; DEL must
        work when the namespace is gone."""
        if missing_ok and self.netns.startswith("/") and not os.path.lexists(self.netns):
            return
        try:
            validate.netns(self.netns, {"the namespace the CNI plugin runs in": validate.OWN_NETNS})
        except validate.Invalid as exc:
            raise CniError(
                INVALID_ENV, f"CNI_NETNS={validate.shown(self.netns)}: {exc.expected}"
            ) from None


@dataclasses.dataclass(frozen=True)
class NetConf:
    """A network configuration as a plugin receives it on stdin."""

    cni_version: str
    name: str
    type: str
    ipam: dict[str, Any] = dataclasses.field(default_factory=dict)
    dns: dict[str, Any] = dataclasses.field(default_factory=dict)
    prev_result: dict[str, Any] | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes | str) -> NetConf:
        """Decode stdin: code 6 for bad JSON (or JSON nested over
        ``validate.MAX_JSON_DEPTH``), 1 for an unsupported version, 7 for bad fields."""
        try:
            raw = validate.load_json(data)
        except validate.Invalid as exc:
            raise CniError(
                DECODE_FAILURE,
                f"network configuration is not {exc.expected}: pass the network's JSON "
                "configuration on stdin",
            ) from None
        if not isinstance(raw, dict):
            raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
        version = raw.get("cniVersion")
        if not isinstance(version, str):
            raise CniError(INVALID_CONFIG, 'cniVersion is missing: set it, e.g. "1.1.0"')
        if version not in SUPPORTED_VERSIONS:
            raise CniError(
                INCOMPATIBLE_VERSION,
                f"cniVersion={validate.shown(version)} is not supported: use one of "
                f"{', '.join(SUPPORTED_VERSIONS)}",
            )
        name, typ = _network_name(raw.get("name")), raw.get("type")
        if not isinstance(typ, str) or not typ:
            raise CniError(INVALID_CONFIG, f"type={typ!r}: the plugin's executable name")
        for field in ("ipam", "dns"):
            if field in raw and not isinstance(raw[field], dict):
                raise CniError(INVALID_CONFIG, f"{field} must be a JSON object")
        prev = raw.get("prevResult")
        if prev is not None and not isinstance(prev, dict):
            raise CniError(INVALID_CONFIG, "prevResult must be a JSON object")
        return cls(
            version, name, typ, dict(raw.get("ipam", {})), dict(raw.get("dns", {})), prev, raw
        )


def _network_name(name: Any) -> str:
    """The configuration's ``name``; code 7 unless it follows the spec's rule."""
    try:
        validate.network_name(name if isinstance(name, str) else "")
    except validate.Invalid as exc:
        raise CniError(
            INVALID_CONFIG, f"name={validate.shown(name)}: the network's name, {exc.expected}"
        ) from None
    return str(name)


@dataclasses.dataclass
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""


@dataclasses.dataclass
class IPConfig:
    address: str  # CIDR, e.g. 10.244.1.2/16
    gateway: str = ""
    interface: int | None = None  # index into Result.interfaces

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_interface(self.address)
            if self.gateway:
                ipaddress.ip_address(self.gateway)
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"ips: {exc}") from None


@dataclasses.dataclass
class Route:
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int = 0
    scope: int = 0


#: What a result looks like in each version this module speaks (runtimes parse
#: only the format of the version they asked for: podman 4.3 reads up to 1.0.0).
#: ``Result.to_dict`` follows it; the README's table of versions says the same.
RESULT_FORMATS = {
    "0.3.0": "ips[].version ('4' or '6'); interfaces: name, mac, sandbox; routes: dst, gw",
    "0.3.1": "as 0.3.0",
    "0.4.0": "as 0.3.0 (adds CHECK and prevResult on DEL, not result keys)",
    "1.0.0": "no ips[].version; interfaces: name, mac, sandbox; routes: dst, gw",
    "1.1.0": "as 1.0.0, plus interfaces[].mtu and routes[].mtu, advmss, priority, table, scope",
}
# Result keys that 1.1.0 added; left out of a result for an earlier version.
_SINCE_1_1_0 = {
    "interface": frozenset({"mtu"}),
    "route": frozenset({"mtu", "advmss", "priority", "table", "scope"}),
}


def _own_fields(cls: Any, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``raw`` that are fields of dataclass ``cls`` (a newer spec's extra
    keys are left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


@dataclasses.dataclass
class Result:
    """An ADD result: interfaces, IPs, routes, DNS."""

    cni_version: str = "1.1.0"
    interfaces: list[Interface] = dataclasses.field(default_factory=list)
    ips: list[IPConfig] = dataclasses.field(default_factory=list)
    routes: list[Route] = dataclasses.field(default_factory=list)
    dns: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result in the format of its ``cni_version`` (see ``RESULT_FORMATS``):
        keys a version lacks are left out, and 0.3.x/0.4.0 IPs carry "version"."""
        newer = version_at_least(self.cni_version, "1.1.0")
        out: dict[str, Any] = {"cniVersion": self.cni_version}
        if self.interfaces:  # an IPAM plugin's result has none, and leaves the key out
            out["interfaces"] = [
                {
                    k: v
                    for k, v in dataclasses.asdict(i).items()
                    if v not in ("", 0) and (newer or k not in _SINCE_1_1_0["interface"])
                }
                for i in self.interfaces
            ]
        out["ips"] = [
            {k: v for k, v in dataclasses.asdict(ip).items() if v not in ("", None)}
            for ip in self.ips
        ]
        if not version_at_least(self.cni_version, "1.0.0"):
            for ip in out["ips"]:
                ip["version"] = str(ipaddress.ip_interface(ip["address"]).version)
        out["routes"] = [
            {
                k: v
                for k, v in dataclasses.asdict(r).items()
                if v not in ("", 0) and (newer or k not in _SINCE_1_1_0["route"])
            }
            for r in self.routes
        ]
        if self.dns:
            out["dns"] = self.dns
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Result:
        """Read a result (an IPAM plugin's output, or prevResult); code 6 naming the field."""
        try:
            return cls(
                cni_version=str(raw.get("cniVersion", "1.1.0")),
                interfaces=[
                    Interface(**_own_fields(Interface, i)) for i in raw.get("interfaces", [])
                ],
                ips=[
                    IPConfig(
                        address=i["address"],
                        gateway=i.get("gateway", ""),
                        interface=i.get("interface"),
                    )
                    for i in raw.get("ips", [])
                ],
                routes=[Route(**_own_fields(Route, r)) for r in raw.get("routes", [])],
                dns=dict(raw.get("dns", {})),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise CniError(DECODE_FAILURE, f"result: missing or bad field ({exc!r})") from None


def version_result(cni_version: str = "1.1.0") -> str:
    """The VERSION verb's answer."""
    return json.dumps({"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)})


def version_at_least(version: str, minimum: str) -> bool:
    """``version >= minimum`` for CNI's x.y.z versions (False for anything unparsable)."""

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(part) for part in v.split("."))

    try:
        return key(version) >= key(minimum)
    except ValueError:
        return False


def check_keys(raw: Mapping[str, Any], own: Iterable[str], plugin: str) -> None:
    """Code 7 for a top-level key that is neither the spec's nor one of the plugin's ``own``."""
    known = set(own)
    for key in raw:
        if key not in STANDARD_KEYS and key not in known:
            close = difflib.get_close_matches(key, sorted(known | STANDARD_KEYS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise CniError(
                INVALID_CONFIG,
                f"unknown key {key!r} in the {plugin} configuration: {hint}remove it or fix "
                f"its spelling ({plugin} accepts {', '.join(sorted(known))} besides the "
                "spec's keys)",
            )


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One (container, interface) pair, as GC lists the valid ones."""

    container_id: str
    ifname: str


def valid_attachments(conf: NetConf) -> list[Attachment]:
    """GC's list of attachments still in use; code 7 when it is missing or malformed."""
    key = next((k for k in VALID_ATTACHMENTS_KEYS if k in conf.raw), None)
    if key is None:
        raise CniError(
            INVALID_CONFIG,
            f"GC needs {VALID_ATTACHMENTS_KEYS[0]} (the attachments still in use) in the "
            "configuration: the runtime sets it; an empty list means none is in use",
        )
    items = conf.raw[key]
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, f"{key} must be a list of {{containerID, ifname}} objects")
    out = []
    for i, item in enumerate(items):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("containerID"), str)
            and isinstance(item.get("ifname"), str)
            and item["containerID"]
            and item["ifname"]
        ):
            raise CniError(
                INVALID_CONFIG,
                f'{key}[{i}]={item!r}: expected {{"containerID": str, "ifname": str}}',
            )
        out.append(Attachment(item["containerID"], item["ifname"]))
    return out


def chain_result(prev: Result | None, own: Result) -> Result:
    """``own`` appended to a chain's ``prev`` result: interfaces, IPs (their interface
    index shifted past prev's interfaces), routes and DNS (own's when it has any).

    The spec requires a plugin that gets a ``prevResult`` on ADD to pass it on,
    change it or drop it deliberately; an interface-creating plugin adds to it.
    """
    if prev is None:
        return own
    shift = len(prev.interfaces)
    ips = [
        dataclasses.replace(ip, interface=None if ip.interface is None else ip.interface + shift)
        for ip in own.ips
    ]
    return Result(
        cni_version=own.cni_version,
        interfaces=[*prev.interfaces, *own.interfaces],
        ips=[*prev.ips, *ips],
        routes=[*prev.routes, *(r for r in own.routes if r not in prev.routes)],
        dns=own.dns or prev.dns,
    )


Handler = Callable[[CniEnv, NetConf], Result | None]

#: The first spec version that has each verb (ADD, DEL and VERSION: every one).
VERB_SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


def run(
    handlers: Mapping[str, Handler],
    *,
    environ: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """Serve one CNI invocation; return the process exit status (0, or 1 after an error).

    ``handlers`` maps verbs (ADD, DEL, CHECK, STATUS, GC) to functions of
    ``(env, conf)``; ADD's returns the ``Result`` (printed in the configuration's
    cniVersion), the others return None. VERSION is answered here. A verb with
    no handler: STATUS and GC succeed (a plugin that holds nothing has nothing
    to report or collect), ADD, DEL and CHECK are code 4. The defaults are
    the process's environment, stdin and stdout.
    """
    environ = os.environ if environ is None else environ
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    version = SUPPORTED_VERSIONS[-1]
    try:
        env = CniEnv.from_environ(environ)
        data = stdin.read()
        if env.command == "VERSION":
            stdout.write(version_result(_requested_version(data)) + "\n")
            return 0
        conf = NetConf.parse(data)
        version = conf.cni_version
        since = VERB_SINCE.get(env.command)
        if since and not version_at_least(version, since):
            raise CniError(
                INCOMPATIBLE_VERSION,
                f"CNI_COMMAND={env.command} needs cniVersion {since} or later and the "
                f"configuration has {version}: raise cniVersion",
            )
        handler = handlers.get(env.command)
        if handler is None:
            if env.command in ("STATUS", "GC"):
                return 0
            raise CniError(INVALID_ENV, f"CNI_COMMAND={env.command}: this plugin does not do it")
        result = handler(env, conf)
        if env.command == "ADD":
            if not isinstance(result, Result):
                raise TypeError(f"the ADD handler returned {result!r}, not a Result")
            stdout.write(dataclasses.replace(result, cni_version=version).to_json() + "\n")
        return 0
    except CniError as exc:
        stdout.write(exc.to_json(version) + "\n")
        return 1
    except Exception as exc:  # a bug: the runtime still gets an error it can read
        traceback.print_exc(file=sys.stderr)
        err = CniError(
            PLUGIN_INTERNAL,
            f"internal error: {exc!r}; this is a bug in the plugin: report it with its stderr",
        )
        stdout.write(err.to_json(version) + "\n")
        return 1


def _requested_version(data: bytes) -> str:
    """VERSION's stdin names the version the caller speaks; answer in it when we can."""
    try:
        raw = validate.load_json(data) if data.strip() else {}
    except validate.Invalid:
        raw = {}
    version = raw.get("cniVersion") if isinstance(raw, dict) else None
    return version if version in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
