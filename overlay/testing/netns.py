"""Network namespaces that stand in for nodes and pods on one machine.

Why this module exists
----------------------
overlay's end-to-end tests, demos and throughput runs need several "machines"
(nodes with an underlay link, pods with an overlay address) and real peers such
as the kernel's own VXLAN device. One machine can host all of them as network
namespaces. This module builds those namespaces and the links between them,
and, just as importantly, takes them down again: every namespace carries a
per-run name prefix (``ovt<pid>-``), :class:`Topology` removes everything it
made even when the test body raised, and :func:`cleanup_leftovers` removes what
a crashed run left behind, touching nothing without the given prefix.

Why threads and ``setns`` rather than ``ip netns exec``
-------------------------------------------------------
A Linux *thread* can enter a network namespace with ``setns(2)`` without moving
the rest of the process. A socket keeps the namespace it was created in, and a
child process inherits the namespace of the thread that forked it. So one
primitive, :meth:`Netns.call` (run a callable in a short-lived thread that has
entered the namespace, then restore that thread's original namespace), gives us
sockets, rtnetlink handles, sysctls and child processes (ping, iperf3, tshark)
in the namespace: no helper binary, no fork-unsafe ``preexec_fn`` code, no
remounted ``/sys``. Netlink work goes through pyroute2 over a netlink socket
made this way, so pyroute2 never has to fork a helper either.

Nothing is ever created in the host namespace: a veth pair is created from
inside its first namespace with its peer placed directly in the second.

Addresses are checked against :data:`ALLOWED_NETWORKS` (the test bed's rules,
see tests/README.md) before they are configured, so a typo cannot put a real
network's address on a link.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from overlay.nsenter import (
    NETNS_RUN_DIR,
    call_in,
    create_netns,
    iproute,
    link_index,
    remove_netns,
)

__all__ = [
    "ALLOWED_NETWORKS",
    "NETNS_RUN_DIR",
    "PREFIX_FAMILY",
    "LinkInfo",
    "Netns",
    "Topology",
    "TopologyCleanupError",
    "VethPair",
    "check_allowed",
    "cleanup_leftovers",
    "kernel_vxlan",
    "run_prefix",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


PREFIX_FAMILY = "ovt"
"""Every run's prefix is ``ovt<pid>-``; the pid lets a later run tell stale leftovers apart."""

IFNAMSIZ = 15
"""Longest interface name the kernel accepts (IFNAMSIZ - 1)."""

ALLOWED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("198.18.0.0/15"),  # underlay: the benchmarking range (RFC 2544)
    ipaddress.ip_network("10.244.0.0/16"),  # overlay: the default cluster CIDR
    ipaddress.ip_network("10.245.0.0/16"),  # overlay: further tenants
    ipaddress.ip_network("10.96.0.0/16"),  # Kubernetes Service ClusterIPs (DNAT in a node)
    ipaddress.ip_network("2001:2::/48"),  # IPv6 benchmarking range (RFC 5180), the v6 twin
    ipaddress.ip_network("fe80::/10"),  # link-local: never leaves the link
)
"""The only networks whose addresses this toolkit puts on links or sends to."""

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

_IFA_F_NODAD = 0x02
_IFA_F_TENTATIVE = 0x40


UNDERLAY_NET = ipaddress.ip_network("198.18.0.0/24")


def underlay_ip(index: int) -> str:
    """The underlay address of node ``index`` (0-based): 198.18.0.1, .2, ..."""
    return str(UNDERLAY_NET.network_address + index + 1)


def run_prefix(pid: int | None = None) -> str:
    """The name prefix of this run: ``ovt<pid>-`` (11 characters at most)."""
    return f"{PREFIX_FAMILY}{os.getpid() if pid is None else pid}-"


def check_allowed(address: str, what: str = "address", *, loopback: bool = False) -> None:
    """Raise ``ValueError`` unless ``address`` (or a CIDR) lies in :data:`ALLOWED_NETWORKS`.

    ``loopback=True`` also admits 127.0.0.0/8 and ::1 (traffic that stays inside
    one test namespace).
    """
    try:
        ip = ipaddress.ip_interface(address).ip
    except ValueError as exc:
        raise ValueError(f"{what} {address!r} is not an IP address or CIDR") from exc
    allowed = ALLOWED_NETWORKS + (_LOOPBACK if loopback else ())
    if not any(ip in net for net in allowed):
        nets = ", ".join(str(n) for n in allowed)
        raise ValueError(
            f"{what} {address!r} is outside the test bed's networks ({nets}); "
            "pick an address from those ranges (see tests/README.md)"
        )


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(
            f"interface name {name!r} is invalid: use 1-{IFNAMSIZ} characters, no '/' or whitespace"
        )


def _check_prefix(prefix: str) -> None:
    if len(prefix) < 3 or "/" in prefix or any(c.isspace() for c in prefix):
        raise ValueError(
            f"prefix {prefix!r} is too broad or invalid: use at least 3 characters "
            f"without '/', e.g. {run_prefix()!r}"
        )


def _host_ifnames() -> list[str]:
    try:
        return os.listdir("/sys/class/net")
    except FileNotFoundError:
        return []


def cleanup_leftovers(prefix: str) -> list[str]:
    """Remove named namespaces and host interfaces whose names start with ``prefix``.

    Returns the names removed. Only names with that prefix are touched; processes
    are never killed (a leftover process keeps its namespace alive but unnamed,
    which is harmless, and is logged).
    """
    _check_prefix(prefix)
    removed: list[str] = []
    for name in sorted(pyroute2_netns.listnetns()):
        if name.startswith(prefix) and remove_netns(name):
            removed.append(name)
    doomed = [n for n in _host_ifnames() if n.startswith(prefix)]
    if doomed:
        with iproute() as ipr:
            for name in doomed:
                idx = ipr.link_lookup(ifname=name)
                if not idx:
                    continue
                try:
                    ipr.link("del", index=idx[0])
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:
                        raise
                    continue
                removed.append(name)
    if removed:
        log.info("removed leftovers with prefix %s: %s", prefix, ", ".join(removed))
    return removed


@dataclass
class LinkInfo:
    """A snapshot of one interface, as rtnetlink reports it."""

    name: str
    index: int
    kind: str | None
    """``veth``, ``vxlan``, ``bridge``, ``tun``…; ``None`` for ``lo`` and physical devices."""
    mtu: int
    state: str
    """Administrative state: ``up`` or ``down``."""
    operstate: str
    mac: str | None
    addresses: list[str] = field(default_factory=list)
    """CIDRs, e.g. ``198.18.0.1/24``."""
    stats: dict[str, int] = field(default_factory=dict)
    """IFLA_STATS64 counters: ``rx_packets``, ``tx_bytes``, ``rx_dropped``…"""


@dataclass(frozen=True)
class VethPair:
    """Both ends of a veth pair made by :meth:`Topology.veth`."""

    a: Netns
    name_a: str
    b: Netns
    name_b: str


class Netns:
    """A named network namespace at ``/var/run/netns/<name>``.

    Usually made by :meth:`Topology.add_netns`, which also removes it. Everything
    here acts inside the namespace without moving the calling thread: see the
    module docstring for how.
    """

    def __init__(self, name: str) -> None:
        if not name or "/" in name:
            raise ValueError(f"namespace name {name!r} is invalid: no '/' and not empty")
        self.name = name
        self.path = os.path.join(NETNS_RUN_DIR, name)
        self._procs: list[subprocess.Popen[Any]] = []
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    # -- the primitive -------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a new thread inside this namespace; return its result.

        The thread enters the namespace with setns(2), runs ``fn``, restores its
        original namespace and ends; the caller's thread never moves. Exceptions
        from ``fn`` are re-raised here. Sockets made by ``fn`` stay in this
        namespace; processes it spawns start in it.
        """
        return call_in(self.path, fn, *args, **kwargs)

    # -- sockets and processes ----------------------------------------------

    def socket(
        self,
        family: int = socket.AF_INET,
        type: int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """A socket living in this namespace (closed by :meth:`Topology.close` if still open)."""
        sock = self.call(socket.socket, family, type, proto)
        self._sockets.add(sock)
        return sock

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this namespace (``subprocess.Popen`` keyword arguments apply).

        The process is remembered and stopped by PID in :meth:`stop_processes`
        (which :meth:`Topology.close` calls) if it is still running then.
        """
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of strings, not one string")
        proc: subprocess.Popen[Any] = self.call(subprocess.Popen, list(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion inside this namespace, capturing text stdout and stderr.

        A process still running after ``timeout`` seconds is killed by PID and
        ``subprocess.TimeoutExpired`` raised. With ``check``, a non-zero exit
        raises ``subprocess.CalledProcessError`` whose message includes stderr.
        """
        proc = self.popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            # A grandchild may still hold the pipes; don't wait on it forever.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5.0)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._procs.remove(proc)
        done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, f"{' '.join(argv)} (in {self.name}): {err.strip()}", out, err
            )
        return done

    def stop_processes(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds, every process :meth:`popen` started."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def close_sockets(self) -> None:
        """Close every socket :meth:`socket` made that is still open."""
        for sock in list(self._sockets):
            sock.close()

    # -- rtnetlink -----------------------------------------------------------

    @contextlib.contextmanager
    def ipr(self) -> Iterator[Any]:
        """A pyroute2 ``IPRoute`` bound to this namespace, closed on exit.

        Use it from the thread that opened it (pyroute2 0.9 binds its event loop
        to that thread).
        """
        with iproute(self.path) as ipr:
            yield ipr

    _lookup = staticmethod(link_index)

    def ifindex(self, name: str) -> int:
        """The ifindex of ``name``; ``LookupError`` if there is no such interface."""
        with self.ipr() as ipr:
            return self._lookup(ipr, name, self.name)

    def links(self) -> list[str]:
        """Names of all interfaces in this namespace."""
        with self.ipr() as ipr:
            return [str(m.get("ifname")) for m in ipr.link("dump")]

    def link_info(self, name: str) -> LinkInfo:
        """A :class:`LinkInfo` snapshot (state, MTU, MAC, addresses, counters) of ``name``."""
        with self.ipr() as ipr:
            idx = self._lookup(ipr, name, self.name)
            msg = ipr.link("get", index=idx)[0]
            addrs = [f"{a.get('address')}/{a['prefixlen']}" for a in ipr.addr("dump", index=idx)]
        stats64 = msg.get("IFLA_STATS64")
        stats = {k: int(stats64[k]) for k in stats64} if stats64 is not None else {}
        return LinkInfo(
            name=name,
            index=idx,
            kind=msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")),
            mtu=int(msg.get("mtu")),
            state=str(msg.get("state")),
            operstate=str(msg.get("operstate")),
            mac=msg.get("address"),
            addresses=addrs,
            stats=stats,
        )

    def link_set(self, ifname: str, /, **kw: Any) -> None:
        """``ip link set``: e.g. ``state="up"``, ``mtu=1450``, ``address="02:…"``, ``master=idx``.

        ``ifname`` is positional-only, so ``link_set("eth0", ifname="pod0")`` renames.
        """
        with self.ipr() as ipr:
            ipr.link("set", index=self._lookup(ipr, ifname, self.name), **kw)

    def link_del(self, ifname: str) -> None:
        """Delete interface ``ifname`` (its veth peer goes with it)."""
        with self.ipr() as ipr:
            ipr.link("del", index=self._lookup(ipr, ifname, self.name))

    def move_link(self, ifname: str, dest: Netns, new_name: str | None = None) -> None:
        """Move ``ifname`` into namespace ``dest`` (optionally renaming it). It arrives down."""
        kw: dict[str, Any] = {}
        if new_name is not None:
            _check_ifname(new_name)
            kw["ifname"] = new_name
        fd = os.open(dest.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.link_set(ifname, net_ns_fd=fd, **kw)
        finally:
            os.close(fd)

    def addr_add(self, ifname: str, cidr: str, *, nodad: bool = True) -> None:
        """Add address ``cidr`` (e.g. ``"198.18.0.1/24"``) to ``ifname``.

        IPv6 addresses skip duplicate address detection by default, so they are
        usable at once rather than "tentative" for a second or two.
        """
        check_allowed(cidr, f"address for {ifname} in {self.name}")
        iface = ipaddress.ip_interface(cidr)
        kw: dict[str, Any] = {}
        if iface.version == 6 and nodad:
            kw["flags"] = _IFA_F_NODAD
        with self.ipr() as ipr:
            ipr.addr(
                "add",
                index=self._lookup(ipr, ifname, self.name),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **kw,
            )

    def route_add(
        self,
        dst: str,
        gateway: str | None = None,
        dev: str | None = None,
        **kw: Any,
    ) -> None:
        """Add a route to ``dst`` (CIDR or ``"default"``) via ``gateway`` and/or out of ``dev``."""
        if gateway is None and dev is None:
            raise ValueError("route_add needs gateway=..., dev=... or both")
        spec: dict[str, Any] = dict(kw)
        if dst == "default":
            family = 6 if gateway is not None and ":" in gateway else 4
            spec["dst"] = "::/0" if family == 6 else "0.0.0.0/0"
        else:
            check_allowed(dst, f"route destination in {self.name}")
            spec["dst"] = dst
        if gateway is not None:
            check_allowed(gateway, f"route gateway in {self.name}")
            spec["gateway"] = gateway
        with self.ipr() as ipr:
            if dev is not None:
                spec["oif"] = self._lookup(ipr, dev, self.name)
            ipr.route("add", **spec)

    def ipv6_enabled(self, ifname: str) -> bool:
        """Whether IPv6 is on for ``ifname`` (``net.ipv6.conf.<ifname>.disable_ipv6 == 0``)."""
        try:
            return self.sysctl_get(f"net/ipv6/conf/{ifname}/disable_ipv6") == "0"
        except FileNotFoundError:
            return False

    def wait_up(self, ifname: str, timeout: float = 5.0) -> None:
        """Wait until ``ifname``'s operational state is UP.

        A device set up gets its carrier at once, but the kernel's link watch
        (which attaches its queueing discipline and sets the operational
        state) may run up to a second later; until then every frame sent on
        it is dropped, so a first ARP request is lost and the first datagram
        waits a full second for the retransmission. ``TimeoutError`` after
        ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while (state := self.link_info(ifname).operstate) != "UP":
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{ifname} in {self.name} is still {state}")
            time.sleep(0.01)

    def wait_ipv6_ready(self, ifname: str, timeout: float = 5.0) -> None:
        """Wait until ``ifname`` has a link-local IPv6 address that is no longer tentative.

        Until then neighbour discovery on the link stalls and the first IPv6
        packets wait a full second for a retransmission. ``TimeoutError`` after
        ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.ipr() as ipr:
                idx = self._lookup(ipr, ifname, self.name)
                for a in ipr.addr("dump", index=idx, family=socket.AF_INET6):
                    flags = a.get("IFA_FLAGS")
                    flags = int(a["flags"]) if flags is None else int(flags)
                    if str(a.get("address")).startswith("fe80:") and not flags & _IFA_F_TENTATIVE:
                        return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{ifname} in {self.name} has no usable link-local address")
            time.sleep(0.01)

    # -- sysctl and ethtool --------------------------------------------------

    @staticmethod
    def _sysctl_path(key: str) -> str:
        rel = key if "/" in key else key.replace(".", "/")
        if not rel.startswith("net/") or ".." in rel.split("/"):
            raise ValueError(
                f"sysctl {key!r} is not per-namespace: only net.* keys may be set here "
                "(anything else would change the host)"
            )
        return "/proc/sys/" + rel

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a ``net.*`` sysctl in this namespace, e.g. ``sysctl("net.ipv4.ip_forward", 1)``.

        ``key`` uses dots, or slashes when an interface name contains a dot
        (``net/ipv4/conf/eth0.100/rp_filter``).
        """
        path = self._sysctl_path(key)

        def write() -> None:
            with open(path, "w") as f:
                f.write(f"{value}\n")

        self.call(write)

    def sysctl_get(self, key: str) -> str:
        """Read a ``net.*`` sysctl in this namespace."""
        path = self._sysctl_path(key)

        def read() -> str:
            with open(path) as f:
                return f.read().strip()

        return self.call(read)

    def ethtool_offload(self, ifname: str, tx: bool | None = False, **features: bool) -> None:
        """``ethtool -K ifname tx off …`` (there is no rtnetlink call for offloads).

        Turning ``tx`` off on the kernel peer's underlay veth makes it finish
        inner checksums itself: needed whenever a userspace VTEP receives its
        VXLAN traffic (see tests/README.md, "Checksum offload on veth"). Further
        features by ethtool name, underscores for dashes: ``tso=False``,
        ``gro=False``, ``tx_checksum_ip_generic=False``.
        """
        args: list[str] = []
        if tx is not None:
            args += ["tx", "on" if tx else "off"]
        for name, on in features.items():
            args += [name.replace("_", "-"), "on" if on else "off"]
        if not args:
            raise ValueError("ethtool_offload needs at least one feature")
        self.run(["ethtool", "-K", ifname, *args], timeout=10.0)


class TopologyCleanupError(RuntimeError):
    """:meth:`Topology.close` could not remove everything; the message lists what is left."""


class Topology:
    """A set of namespaces and links that is removed as a whole.

    Use as a context manager (or the ``overlay_topology`` pytest fixture)::

        with Topology() as topo:
            n1, n2 = topo.add_netns("n1"), topo.add_netns("n2")
            topo.veth(n1, n2)            # 198.18.0.1/24 <-> 198.18.0.2/24 on ul0

    :meth:`close` stops processes started in the namespaces, closes sockets
    made in them and removes the namespaces (which destroys their devices). It
    runs every step even when one fails, and is idempotent.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = run_prefix() if prefix is None else prefix
        _check_prefix(self.prefix)
        self.namespaces: dict[str, Netns] = {}
        self._closed = False

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as cleanup_exc:  # don't hide the test's own failure
            log.error("topology cleanup after a failure also failed: %s", cleanup_exc)
            if hasattr(exc, "add_note"):
                exc.add_note(f"and topology cleanup failed: {cleanup_exc}")

    def add_netns(self, short_name: str, *, ipv6: bool = False) -> Netns:
        """Create namespace ``<prefix><short_name>`` with ``lo`` up.

        IPv6 is disabled (``net.ipv6.conf.{all,default}.disable_ipv6=1``) to
        keep router solicitations out of counters, unless ``ipv6=True``; then
        duplicate address detection is off instead (``accept_dad=0``), so
        addresses are usable at once.
        """
        if self._closed:
            raise RuntimeError("this Topology is closed; make a new one")
        name = self.prefix + short_name
        if not short_name or "/" in short_name:
            raise ValueError(f"namespace short name {short_name!r} is invalid")
        if name in self.namespaces or os.path.exists(os.path.join(NETNS_RUN_DIR, name)):
            raise FileExistsError(
                errno.EEXIST,
                f"namespace {name} already exists: pick another short name, or remove "
                f"leftovers with cleanup_leftovers({self.prefix!r})",
            )
        create_netns(name)
        ns = Netns(name)
        self.namespaces[name] = ns
        try:
            if ns.call(os.path.exists, "/proc/sys/net/ipv6"):
                if ipv6:
                    # DAD on a private veth only delays the first packets.
                    ns.sysctl("net.ipv6.conf.all.accept_dad", 0)
                    ns.sysctl("net.ipv6.conf.default.accept_dad", 0)
                else:
                    ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
                    ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
            ns.link_set("lo", state="up")
        except BaseException:
            self._remove(ns)
            raise
        return ns

    def veth(
        self,
        a: Netns,
        b: Netns,
        addr_a: str | None = "198.18.0.1/24",
        addr_b: str | None = "198.18.0.2/24",
        name_a: str = "ul0",
        name_b: str = "ul0",
        mtu: int = 1500,
    ) -> VethPair:
        """A veth pair between ``a`` and ``b``, addressed and up.

        Created from inside ``a`` with the peer placed straight into ``b``: no
        end ever exists in the host namespace. ``addr_a``/``addr_b`` may be
        ``None`` for an unaddressed end (e.g. one that joins a bridge).
        """
        _check_ifname(name_a)
        _check_ifname(name_b)
        if a is b and name_a == name_b:
            raise ValueError("both ends are in one namespace: give them different names")
        for addr in (addr_a, addr_b):
            if addr is not None:
                check_allowed(addr, "veth address")
        peer: dict[str, Any] = {"ifname": name_b}
        fd = os.open(b.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if a is not b:
                peer["net_ns_fd"] = fd
            with a.ipr() as ipr:
                ipr.link("add", ifname=name_a, kind="veth", peer=peer)
        finally:
            os.close(fd)
        ends = ((a, name_a, addr_a), (b, name_b, addr_b))
        for ns, name, addr in ends:
            ns.link_set(name, mtu=mtu)
            if addr is not None:
                ns.addr_add(name, addr)
            ns.link_set(name, state="up")
        for ns, name, _ in ends:
            ns.wait_up(name)
            if ns.ipv6_enabled(name):
                ns.wait_ipv6_ready(name)
        return VethPair(a, name_a, b, name_b)

    def underlay(self, nodes: Sequence[Netns], *, mtu: int = 1500, switch: str = "sw") -> list[str]:
        """Wire ``nodes`` as the testbed's underlay, node ``i`` at ``underlay_ip(i)/24``
        on ``ul0``: two by a veth, more by a ``lan`` through ``switch``, one not at
        all. Returns the addresses with their prefix."""
        cidrs = [f"{underlay_ip(i)}/24" for i in range(len(nodes))]
        if len(nodes) == 2:
            self.veth(nodes[0], nodes[1], cidrs[0], cidrs[1], mtu=mtu)
        elif len(nodes) > 2:
            self.lan(nodes, cidrs, mtu=mtu, switch=switch)
        return cidrs

    def lan(
        self,
        nodes: Iterable[Netns],
        cidrs: Iterable[str | None],
        *,
        name: str = "ul0",
        mtu: int = 1500,
        switch: str = "sw",
    ) -> Netns:
        """Join ``nodes`` on one L2 segment: a bridge in a new namespace ``<prefix><switch>``.

        Node ``i`` gets interface ``name`` with address ``cidrs[i]``. Use it when
        more than two nodes share an underlay. Returns the switch namespace.
        """
        members, addrs = list(nodes), list(cidrs)
        if len(members) != len(addrs):
            raise ValueError(f"lan got {len(members)} nodes but {len(addrs)} cidrs")
        sw = self.add_netns(switch)
        with sw.ipr() as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
        sw.link_set("br0", mtu=mtu, state="up")
        bridge = sw.ifindex("br0")
        for i, (node, cidr) in enumerate(zip(members, addrs, strict=True)):
            port = f"p{i}"
            self.veth(sw, node, None, cidr, name_a=port, name_b=name, mtu=mtu)
            sw.link_set(port, master=bridge)
        return sw

    def _remove(self, ns: Netns) -> None:
        try:
            ns.stop_processes()
        finally:
            try:
                ns.close_sockets()
            finally:
                remove_netns(ns.name)
                self.namespaces.pop(ns.name, None)

    def close(self) -> None:
        """Remove everything this topology made; safe to call again.

        Raises :class:`TopologyCleanupError` naming what could not be removed.
        """
        self._closed = True
        failures: list[str] = []
        for ns in reversed(list(self.namespaces.values())):
            try:
                self._remove(ns)
            except Exception as exc:
                failures.append(f"{ns.name}: {exc!r}")
        if failures:
            raise TopologyCleanupError("could not remove: " + "; ".join(failures))


def kernel_vxlan(
    ns: Netns,
    name: str = "vx0",
    *,
    vni: int,
    local: str,
    dev: str = "ul0",
    port: int = 4789,
    remotes: Iterable[str] = (),
    learning: bool = False,
    mtu: int | None = None,
    mac: str | None = None,
    udp_csum: bool | None = None,
) -> LinkInfo:
    """A Linux VXLAN device in ``ns``: the kernel twin for interop tests and benchmarks.

    Equivalent to ``ip link add vx0 type vxlan id VNI local LOCAL dev DEV dstport
    PORT nolearning`` plus ``bridge fdb append 00:00:00:00:00:00 dev vx0 dst R``
    for every remote (head-end replication of BUM traffic to each), then up.
    ``port`` is always passed: the kernel's own default is 8472, not 4789.
    Without ``mtu`` the kernel derives it from ``dev`` (1450 on a 1500 underlay).
    Returns the device's :class:`LinkInfo` (its MAC is what a userspace peer's
    FDB needs).
    """
    _check_ifname(name)
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"vni {vni} is out of range: VXLAN VNIs are 0..16777215")
    check_allowed(local, "kernel_vxlan local")
    remotes = list(remotes)
    for remote in remotes:
        check_allowed(remote, "kernel_vxlan remote")
    spec: dict[str, Any] = {
        "ifname": name,
        "kind": "vxlan",
        "vxlan_id": vni,
        "vxlan_port": port,
        "vxlan_learning": int(learning),
    }
    if ipaddress.ip_address(local).version == 6:
        spec["vxlan_local6"] = local
    else:
        spec["vxlan_local"] = local
    if udp_csum is not None:
        spec["vxlan_udp_csum"] = int(udp_csum)
    if mtu is not None:
        spec["mtu"] = mtu
    if mac is not None:
        spec["address"] = mac
    with ns.ipr() as ipr:
        spec["vxlan_link"] = Netns._lookup(ipr, dev, ns.name)
        ipr.link("add", **spec)
        idx = Netns._lookup(ipr, name, ns.name)
        for remote in remotes:
            ipr.fdb("append", ifindex=idx, lladdr="00:00:00:00:00:00", dst=remote)
        ipr.link("set", index=idx, state="up")
    return ns.link_info(name)
