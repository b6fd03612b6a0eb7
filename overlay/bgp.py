"""BGP for routed networks: this node announces its subnets and learns the others'.

A routed network's pods reach pods on other nodes without encapsulation: the
packet leaves the pod through the network's gateway (``ovg<vni>``, holding the
first address of the node's subnet with the subnet's prefix) into the node's
kernel routing table, and from there to the node that hosts the destination
subnet. On one segment the node programs those routes itself (host-gw); where
routers sit between nodes, this module makes the node a BGP speaker (as
Calico's BGP mode does) with a real implementation: BIRD 2 (Debian's
``bird2``), one process per node, run in the node's namespace.

What the generated configuration says (``render``), and why:

- ``router id`` is the node's underlay IPv4 address: unique in the cluster
  and stable across restarts, which is what a router id must be.
- ``protocol direct`` reads only the gateways (``interface "ovg*"``): their
  connected routes *are* the node's subnets of routed networks, so nothing
  else of the node (the underlay, a pod-facing bridge of another program) is
  ever picked up. What leaves towards a router passes ``overlay_export``:
  only connected routes (``RTS_DEVICE``: a route learned over BGP is never
  passed on, the node is no transit), inside a routed network's cidr and of
  exactly its subnet length, and one of this node's leased subnets. An
  overlay network's gateway carries the cluster prefix (``/16``), so its
  connected route never matches and is never announced.
- ``protocol bgp`` per configured peer (a router: address and AS). What comes
  in passes ``overlay_import``: inside a routed network's cidr and of its
  subnet length (so never a default route, never someone else's address
  space), and never one of this node's own subnets (a router that reflects
  our own announcement back must not take the local pods away from their
  gateway).
- ``protocol kernel`` writes the learned BGP routes into the node's main
  table and learns nothing back (``import none``, ``learn off``): the kernel
  is told, never asked. Routes carry BIRD's own protocol number (``proto
  bird``) and metric ``KERNEL_METRIC``: a host-gw route the node programs
  itself for a peer on its own segment (metric 0) is preferred to the same
  subnet learned through a router, and neither program touches the other's
  routes. Without ``persist`` BIRD removes its routes when it stops, and a
  BIRD started again removes what a killed one left behind (it owns its
  protocol number in the table).
- Timers: hold 9 s, keepalive 3 s, a connection tried again every 2 s and
  errors waited out for 1-10 s, so a router that comes back is found again
  within seconds. Graceful restart is off on both counts: a node that stops
  has its routes withdrawn at once by the router, instead of kept as stale
  for the restart time while nobody answers behind them (graceful restart
  for the daemon's restarts is a later refinement).

Applying a change: the configuration is written next to the running one,
checked with ``bird -p``, moved into place and loaded with ``birdc
configure``. BIRD compares protocol by protocol: a peer whose lines did not
change keeps its session; one whose filter changed is refiltered (route
refresh), without a reset. An unchanged text is not even sent.

The process: ``bird -f`` (foreground) as a child of whoever runs the speaker,
started in the node's namespace, stopped by its PID (SIGTERM: BIRD sends
every peer a Cease notification and removes its kernel routes; SIGKILL after
a grace period). Its PID is also kept in ``bird.pid`` in the state directory,
so a speaker started after its owner died without stopping it stops that
leftover first (it would still hold the control socket and the sessions).
``supervise`` starts it again with backoff when it died.

Status comes from BIRD's own answers: ``show protocols all`` (session
state, last error, routes imported and exported per peer) and ``show route``
(the routes themselves), parsed here (``parse_protocols``, ``parse_routes``);
times are asked for as Unix seconds (``timeformat ... "%s"``) so that every
column is one word.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import Any

from overlay.errors import ConfigError, OverlayError
from overlay.nsenter import call_in, netns_path, pid_alive, stop_process

__all__ = [
    "ASN_MAX",
    "BIRD",
    "BIRDC",
    "GATEWAY_INTERFACES",
    "KERNEL_METRIC",
    "BgpPeer",
    "BirdError",
    "BirdSpeaker",
    "RoutedRange",
    "SpeakerConfig",
    "check_config",
    "parse_protocols",
    "parse_routes",
    "peer_protocol",
    "render",
]

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"
ASN_MAX = 4294967295  # 4-octet AS numbers (RFC 6793)
ASN_EXPECTED = f"an AS number 1-{ASN_MAX}"
KERNEL_METRIC = 200  # host-gw routes (metric 0) win over the same subnet learned by BGP
GATEWAY_INTERFACES = "ovg*"  # overlay.gateway.IFNAME_PREFIX + "*"
HOLD_TIME_S = 9
KEEPALIVE_TIME_S = 3
CONNECT_RETRY_S = 2
PROTOCOL_PREFIX = "peer_"
_STOP_GRACE_S = 5.0
_READY_TIMEOUT_S = 10.0
_BACKOFF_MIN_S = 1.0
_BACKOFF_MAX_S = 30.0
_STABLE_S = 60.0  # running this long resets the backoff
_SUN_PATH_MAX = 107  # the control socket's path, as sockaddr_un holds it


class BirdError(OverlayError):
    """BIRD refused a configuration, did not start, or did not answer."""


def _check_asn(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ASN_MAX:
        raise ConfigError(field, value, ASN_EXPECTED)
    return value


def _check_ipv4(value: object, field: str) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(field, value, 'an IPv4 address, like "198.18.1.254"') from None
    if addr.is_unspecified or addr.is_multicast:
        raise ConfigError(field, value, "a unicast IPv4 address")
    return str(addr)


def peer_protocol(address: str) -> str:
    """The name of the BGP protocol for the peer at ``address`` (``peer_198_18_1_254``)."""
    return PROTOCOL_PREFIX + address.replace(".", "_")


@dataclasses.dataclass(frozen=True)
class BgpPeer:
    """A router this node peers with: its address (IPv4) and AS number."""

    address: str
    asn: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _check_ipv4(self.address, "address"))
        _check_asn(self.asn, "asn")

    @property
    def protocol(self) -> str:
        return peer_protocol(self.address)


@dataclasses.dataclass(frozen=True)
class RoutedRange:
    """A routed network's address range and the length of each node's subnet."""

    cidr: str
    subnet_prefix: int

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.cidr, strict=False)
        except (TypeError, ValueError):
            raise ConfigError("cidr", self.cidr, "an IPv4 range like 10.244.0.0/16") from None
        if (
            isinstance(self.subnet_prefix, bool)
            or not isinstance(self.subnet_prefix, int)
            or not net.prefixlen <= self.subnet_prefix <= 32
        ):
            raise ConfigError("subnet_prefix", self.subnet_prefix, f"{net.prefixlen}-32")
        object.__setattr__(self, "cidr", str(net))


@dataclasses.dataclass(frozen=True)
class SpeakerConfig:
    """Everything the speaker's configuration is made of.

    ``local_subnets`` are this node's subnets of the routed networks (what it
    announces and never accepts back); ``ranges`` the routed networks' ranges
    (what may be announced or learned at all).
    """

    router_id: str
    asn: int
    peers: tuple[BgpPeer, ...] = ()
    ranges: tuple[RoutedRange, ...] = ()
    local_subnets: tuple[str, ...] = ()
    kernel_metric: int = KERNEL_METRIC

    def __post_init__(self) -> None:
        object.__setattr__(self, "router_id", _check_ipv4(self.router_id, "router_id"))
        _check_asn(self.asn, "asn")
        peers = tuple(self.peers)
        seen: set[str] = set()
        for i, p in enumerate(peers):
            if not isinstance(p, BgpPeer):
                raise ConfigError(f"peers[{i}]", p, "a BgpPeer(address, asn)")
            if p.address in seen:
                raise ConfigError(f"peers[{i}].address", p.address, "one entry per router")
            seen.add(p.address)
        object.__setattr__(self, "peers", peers)
        ranges = tuple(sorted(set(self.ranges), key=lambda r: (r.cidr, r.subnet_prefix)))
        object.__setattr__(self, "ranges", ranges)
        subnets = []
        for s in self.local_subnets:
            try:
                subnets.append(ipaddress.IPv4Network(s))
            except (TypeError, ValueError):
                raise ConfigError(
                    "local_subnets", s, "IPv4 subnets like 10.244.1.0/24 (no host bits)"
                ) from None
        object.__setattr__(self, "local_subnets", tuple(str(n) for n in sorted(set(subnets))))
        if isinstance(self.kernel_metric, bool) or not isinstance(self.kernel_metric, int):
            raise ConfigError("kernel_metric", self.kernel_metric, "a route metric 1-65535")


def _set(items: Iterable[str]) -> str:
    body = ", ".join(items)
    return f"[ {body} ]" if body else "[ ]"


def render(cfg: SpeakerConfig) -> str:
    """BIRD 2's configuration for ``cfg`` (see the module's notes for what it says)."""
    ranges = _set(f"{r.cidr}{{{r.subnet_prefix},{r.subnet_prefix}}}" for r in cfg.ranges)
    own = _set(cfg.local_subnets)
    lines = [
        "# Generated by overlayd (overlay.bgp.render): edits are overwritten.",
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        f"router id {cfg.router_id};",
        'timeformat protocol "%s";',
        'timeformat route "%s";',
        "",
        "# The routed networks' ranges, each node's subnet length exactly.",
        f"define ROUTED = {ranges};",
        "# This node's own subnets of them.",
        f"define LOCAL = {own};",
        "",
        "protocol device {}",
        "",
        "# The gateways' connected routes: this node's subnets.",
        "protocol direct overlay_gateways {",
        "  ipv4;",
        f'  interface "{GATEWAY_INTERFACES}";',
        "}",
        "",
        "# Learned routes into the kernel; nothing learned back from it.",
        "protocol kernel overlay_kernel {",
        "  ipv4 { import none; export where source = RTS_BGP; };",
        f"  metric {cfg.kernel_metric};",
        "  learn off;",
        "  merge paths on;",
        "}",
        "",
        "filter overlay_export {",
        "  if source = RTS_DEVICE && net ~ ROUTED && net ~ LOCAL then accept;",
        "  reject;",
        "}",
        "",
        "filter overlay_import {",
        "  if net ~ ROUTED && !(net ~ LOCAL) then accept;",
        "  reject;",
        "}",
    ]
    for p in cfg.peers:
        lines += [
            "",
            f"protocol bgp {p.protocol} {{",
            f"  local as {cfg.asn};",
            f"  neighbor {p.address} as {p.asn};",
            f"  hold time {HOLD_TIME_S};",
            f"  keepalive time {KEEPALIVE_TIME_S};",
            "  connect delay time 1;",
            f"  connect retry time {CONNECT_RETRY_S};",
            "  error wait time 1, 10;",
            "  graceful restart off;",
            "  long lived graceful restart off;",
            "  ipv4 { import filter overlay_import; export filter overlay_export; };",
            "}",
        ]
    return "\n".join(lines) + "\n"


def check_config(path: str, bird: str = BIRD) -> None:
    """``bird -p -c path``: BirdError with BIRD's own message when it does not parse."""
    done = subprocess.run(
        [bird, "-p", "-c", path], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise BirdError(f"{path}: {(done.stderr or done.stdout).strip()}")


# ---- BIRD's answers ------------------------------------------------------------

_ROUTES_RE = re.compile(r"Routes:\s+(\d+) imported(?:, (\d+) filtered)?, (\d+) exported")


def parse_protocols(text: str) -> dict[str, dict[str, Any]]:
    """``birdc show protocols all`` -> name -> {proto, table, state, since, info, and
    for BGP: bgp_state, neighbor_address, neighbor_as, local_as, last_error,
    routes_imported, routes_exported}. ``since`` is Unix seconds (``timeformat``)."""
    out: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Name ")):
            continue
        if not line[0].isspace():
            words = line.split()
            if len(words) < 5:
                cur = None
                continue
            cur = {
                "proto": words[1],
                "table": words[2],
                "state": words[3],
                "since": _float(words[4]),
                "info": " ".join(words[5:]),
                "routes_imported": 0,
                "routes_exported": 0,
            }
            out[words[0]] = cur
            continue
        if cur is None:
            continue
        m = _ROUTES_RE.search(line)
        if m:
            cur["routes_imported"] += int(m.group(1))
            cur["routes_exported"] += int(m.group(3))
            continue
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        value = value.strip()
        if key == "BGP state":
            cur["bgp_state"] = value
        elif key == "Neighbor address":
            cur["neighbor_address"] = value
        elif key == "Neighbor AS":
            cur["neighbor_as"] = _int(value)
        elif key == "Local AS":
            cur["local_as"] = _int(value)
        elif key == "Last error":
            cur["last_error"] = value
    return out


_ROUTE_RE = re.compile(
    r"^(?P<net>\S+)?\s+(?P<type>\w+) \[(?P<proto>\S+) (?P<since>[^\]]*)\]"
    r"(?P<primary> \*)? \((?P<pref>\d+)\)"
)


def parse_routes(text: str) -> list[dict[str, Any]]:
    """``birdc show route`` -> [{net, protocol, primary, via, dev}], every route of
    every prefix (the alternatives under a prefix inherit it)."""
    out: list[dict[str, Any]] = []
    net = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Table ")):
            continue
        m = _ROUTE_RE.match(line)
        if m:
            net = m.group("net") or net
            out.append(
                {
                    "net": net,
                    "protocol": m.group("proto"),
                    "primary": m.group("primary") is not None,
                    "via": None,
                    "dev": None,
                }
            )
            continue
        words = line.split()
        if out and words and words[0] == "via" and len(words) >= 2:
            out[-1]["via"] = words[1]
            if len(words) >= 4 and words[2] == "on":
                out[-1]["dev"] = words[3]
        elif out and words and words[0] == "dev" and len(words) >= 2:
            out[-1]["dev"] = words[1]
    return out


def _int(text: str) -> int | None:
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ---- the process ------------------------------------------------------------------


class BirdSpeaker:
    """One BIRD process for one node: configured, supervised, asked.

    ``state_dir`` holds ``bird.conf``, ``bird.ctl`` (the control socket),
    ``bird.pid`` and ``bird.log`` (BIRD's log of its last start); ``netns``
    (a name or path; None: ours) is where BIRD runs, the namespace of the
    node's underlay and gateways. Methods block (a subprocess, a socket):
    from a coroutine, run them in a thread.
    """

    def __init__(
        self,
        state_dir: str,
        netns: str | None = None,
        *,
        bird: str = BIRD,
        birdc: str = BIRDC,
    ) -> None:
        if not isinstance(state_dir, str) or not state_dir.startswith("/"):
            raise ConfigError("state_dir", state_dir, "an absolute path")
        self.state_dir = state_dir
        self.netns = netns_path(netns) if netns else None
        self.bird_bin, self.birdc_bin = bird, birdc
        self.conf_path = os.path.join(state_dir, "bird.conf")
        self.ctl_path = os.path.join(state_dir, "bird.ctl")
        self.pid_path = os.path.join(state_dir, "bird.pid")
        self.log_path = os.path.join(state_dir, "bird.log")
        if len(self.ctl_path.encode()) > _SUN_PATH_MAX:
            raise ConfigError(
                "state_dir", state_dir, f"a shorter path: {self.ctl_path} is no Unix socket path"
            )
        self.config: SpeakerConfig | None = None
        self.restarts = 0  # starts after the first (the process had died)
        self.last_exit: int | None = None  # the died process's exit status
        self._text: str | None = None  # the configuration BIRD has loaded
        self._proc: subprocess.Popen[Any] | None = None
        self._started_at = 0.0
        self._backoff = _BACKOFF_MIN_S
        self._next_start = 0.0

    def __repr__(self) -> str:
        return f"BirdSpeaker({self.state_dir!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- life cycle -------------------------------------------------------------

    def start(self, cfg: SpeakerConfig) -> None:
        """Write ``cfg``'s configuration, check it and start BIRD with it; returns
        once BIRD answers on its control socket (BirdError when it does not)."""
        if self.running:
            raise BirdError(f"BIRD is running already (pid {self.pid}): apply() changes it")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self._stop_leftover()
        text = render(cfg)
        self._write_checked(text)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ctl_path)
        argv = [self.bird_bin, "-f", "-c", self.conf_path, "-s", self.ctl_path, "-P", self.pid_path]
        with open(self.log_path, "wb") as log:
            proc = call_in(
                self.netns,
                subprocess.Popen,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's ^C is for the daemon, not for BIRD
            )
        self._proc, self._started_at = proc, time.monotonic()
        self.config, self._text = cfg, text
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise BirdError(f"BIRD exited with status {proc.returncode}: {self._log_tail()}")
            try:
                self.birdc("show status", timeout=2.0)
                return
            except BirdError:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise BirdError(
                        f"BIRD did not answer on {self.ctl_path} within {_READY_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.05)

    def apply(self, cfg: SpeakerConfig) -> bool:
        """Make the running BIRD use ``cfg`` (``birdc configure``; sessions whose
        lines did not change are kept). Whether anything changed. Starts BIRD when
        it is not running."""
        if not self.running:
            self.start(cfg)
            return True
        text = render(cfg)
        if text == self._text:
            self.config = cfg
            return False
        self._write_checked(text)
        answer = self.birdc("configure")
        if "Reconfigured" not in answer and "Reconfiguration in progress" not in answer:
            raise BirdError(f"birdc configure: {answer.strip()}")
        self.config, self._text = cfg, text
        return True

    def supervise(self) -> bool:
        """Start BIRD again if it died (with backoff: 1 s doubling to 30 s, reset after
        a minute of running). Whether it was started."""
        if self.config is None or self.running:
            if self.running and time.monotonic() - self._started_at >= _STABLE_S:
                self._backoff = _BACKOFF_MIN_S
            return False
        if self._proc is not None:  # it died: remember how, wait before the next try
            self.last_exit = self._proc.wait()
            self._proc = None
            self._next_start = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)
        if time.monotonic() < self._next_start:
            return False
        try:
            self.start(self.config)
        except BirdError:
            self._next_start = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)
            raise
        self.restarts += 1
        return True

    def stop(self, timeout: float = _STOP_GRACE_S) -> None:
        """Stop BIRD by its PID: SIGTERM (peers get a Cease, kernel routes are removed),
        SIGKILL after ``timeout`` seconds. Idempotent."""
        proc, self._proc = self._proc, None
        self.config, self._text = None, None
        if proc is not None:
            stop_process(proc, timeout)
        for path in (self.ctl_path, self.pid_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _stop_leftover(self) -> None:
        """A BIRD an earlier owner of this state directory started and never stopped
        (it died first): still bound to our socket and peers. Stopped by its PID,
        once its command line shows it is ours (this configuration file)."""
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return
        if self.conf_path.encode() not in argv or not argv[0].endswith(b"bird"):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def _write_checked(self, text: str) -> None:
        new = self.conf_path + ".new"
        with open(new, "w") as f:
            f.write(text)
        try:
            check_config(new, self.bird_bin)
        except BirdError:
            os.unlink(new)
            raise
        os.replace(new, self.conf_path)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- questions ----------------------------------------------------------------

    def birdc(self, command: str, timeout: float = 10.0) -> str:
        """One ``birdc`` command against the control socket; its answer (BirdError
        when BIRD cannot be reached)."""
        try:
            done = subprocess.run(
                [self.birdc_bin, "-s", self.ctl_path, *command.split()],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BirdError(f"birdc {command}: no answer within {timeout} s") from None
        if done.returncode != 0 or "Unable to connect" in done.stdout + done.stderr:
            raise BirdError(f"birdc {command}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def protocols(self) -> dict[str, dict[str, Any]]:
        """``show protocols all``, parsed (``parse_protocols``)."""
        return parse_protocols(self.birdc("show protocols all"))

    def routes(self, *, announced: bool = False) -> list[dict[str, Any]]:
        """``show route``, parsed; with ``announced`` only what passes the export
        filter (what this node announces to every peer, up or not)."""
        cmd = "show route filter overlay_export" if announced else "show route"
        return parse_routes(self.birdc(cmd))

    def status(self) -> dict[str, Any]:
        """The speaker as ``overlay status`` shows it: the process, one entry per peer
        (session state, routes learned and announced) and the routes themselves."""
        cfg = self.config
        out: dict[str, Any] = {
            "running": self.running,
            "pid": self.pid if self.running else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "router_id": cfg.router_id if cfg else None,
            "asn": cfg.asn if cfg else None,
            "announced": [],
            "learned": [],
            "peers": [],
            "error": None,
        }
        peers: Sequence[BgpPeer] = cfg.peers if cfg else ()
        protos: dict[str, dict[str, Any]] = {}
        if self.running:
            try:
                protos = self.protocols()
                routes = self.routes()
                out["announced"] = sorted({r["net"] for r in self.routes(announced=True)})
            except BirdError as exc:
                out["error"] = str(exc)
                routes = []
            names = {p.protocol: p for p in peers}
            out["learned"] = [
                {"net": r["net"], "via": r["via"], "peer": names[r["protocol"]].address}
                for r in routes
                if r["protocol"] in names and r["primary"]
            ]
        for p in peers:
            pr = protos.get(p.protocol, {})
            out["peers"].append(
                {
                    "address": p.address,
                    "asn": p.asn,
                    "state": pr.get("bgp_state") or pr.get("state") or "down",
                    "up": pr.get("bgp_state") == "Established",
                    "since": pr.get("since"),
                    "last_error": pr.get("last_error"),
                    "routes_learned": pr.get("routes_imported", 0),
                    "routes_announced": pr.get("routes_exported", 0),
                }
            )
        return out
