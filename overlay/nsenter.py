"""Acting inside a network namespace without moving the calling thread.

A Linux thread can enter a network namespace with setns(2) on its own; a
socket keeps the namespace it was made in, and a child process inherits the
namespace of the thread that forked it. So one primitive, ``call_in`` (run a
callable in a short-lived thread that has entered the namespace), gives
netlink handles, sockets and processes in any namespace. pyroute2's own
``IPRoute(netns=...)`` is avoided: it forks a helper per handle and, by
default, creates the namespace again if it has just been removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

NETNS_RUN_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str) -> str:
    """A namespace name (under /var/run/netns) or path -> its path."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def pid_alive(pid: int) -> bool:
    """Does process ``pid`` exist (ours or another user's)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> int | None:
    """End a child we started, by its PID: SIGTERM, SIGKILL if it is still there
    after ``timeout`` seconds; waits for it and returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=timeout)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind ``fd``."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def unshare_net() -> None:
    """Give the calling thread a new, empty network namespace (``unshare``)."""
    if _libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")


def in_thread(fn: Callable[..., T], *args: Any, thread_name_: str = "overlay", **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a new thread, wait for it, return its result
    or raise its exception here."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    t = threading.Thread(target=target, name=thread_name_)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _entered(path: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """In this thread: enter namespace ``path``, run fn, come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, f"network namespace {path} does not exist", path
            ) from None
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            return fn(*args, **kwargs)
        finally:
            setns(own)
    finally:
        os.close(own)


def call_in(path: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a new thread inside namespace ``path``; return its result.

    ``path`` None runs it in the caller's namespace. Exceptions from ``fn``
    are re-raised in the caller.
    """
    if path is None:
        return fn(*args, **kwargs)
    return in_thread(
        _entered, path, fn, *args, thread_name_=f"netns:{os.path.basename(path)}", **kwargs
    )


@contextmanager
def iproute(path: str | None = None) -> Iterator[Any]:
    """A pyroute2 ``IPRoute`` whose netlink socket lives in namespace ``path`` (None: ours).

    Use it from the thread that opened it (pyroute2 0.9 binds its event loop
    to that thread).
    """
    from pyroute2 import IPRoute

    sock = call_in(path, socket.socket, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    try:
        ipr = IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise
    try:
        yield ipr
    finally:
        ipr.close()
        sock.close()


def link_index(ipr: Any, ifname: str, where: str | None) -> int:
    """The ifindex of ``ifname`` through ``ipr`` (an IPRoute of namespace ``where``,
    None: ours); LookupError naming both when there is no such link."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r} in namespace {where or 'host'}")
    return int(found[0])


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` here, or in a short-lived thread when this thread runs an asyncio
    loop: pyroute2 0.9 drives its own event loop and cannot run inside another."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    return in_thread(fn, *args, thread_name_="netlink", **kwargs)


def move_link(
    ifname: str,
    src: str | None,
    dst: str,
    *,
    new_name: str,
    mac: str,
    mtu: int,
    addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = (),
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
) -> None:
    """Move link ``ifname`` from namespace ``src`` (None: ours) into ``dst`` and set it up
    there as ``new_name`` (see ``setup_link``). LookupError when ``ifname`` is not in
    ``src``. Safe to call from a coroutine (see ``off_loop``)."""
    off_loop(_move_link, ifname, src, dst, new_name, mac, mtu, list(addresses), gateway)


def setup_link(
    path: str | None,
    ifname: str,
    *,
    mtu: int,
    addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = (),
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    mac: str | None = None,
) -> None:
    """In namespace ``path`` (None: ours), give link ``ifname`` its ``mac`` (if given),
    ``mtu`` and ``addresses`` (IPv6 ones without duplicate address detection: the
    overlay guarantees uniqueness), bring it up and, with ``gateway``, add a default
    route. LookupError when the link is not there. Safe to call from a coroutine."""
    off_loop(_setup_link, path, ifname, None, mac, mtu, list(addresses), gateway)


def _move_link(
    ifname: str,
    src: str | None,
    dst: str,
    new_name: str,
    mac: str,
    mtu: int,
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> None:
    with iproute(src) as ipr:
        idx = link_index(ipr, ifname, src)
        fd = os.open(dst, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("set", index=idx, net_ns_fd=fd)
        finally:
            os.close(fd)
    _setup_link(dst, ifname, new_name, mac, mtu, addresses, gateway)


def _setup_link(
    path: str | None,
    ifname: str,
    new_name: str | None,
    mac: str | None,
    mtu: int,
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> None:
    with iproute(path) as ipr:
        idx = link_index(ipr, ifname, path)
        change: dict[str, Any] = {"mtu": mtu}
        if new_name is not None and new_name != ifname:
            change["ifname"] = new_name
        if mac is not None:
            change["address"] = mac
        ipr.link("set", index=idx, **change)
        for ip in addresses:
            kw: dict[str, Any] = {"flags": 0x02} if ip.version == 6 else {}  # IFA_F_NODAD
            ipr.addr("add", index=idx, address=str(ip.ip), prefixlen=ip.network.prefixlen, **kw)
        ipr.link("set", index=idx, state="up")
        if gateway is not None:
            default = "0.0.0.0/0" if gateway.version == 4 else "::/0"
            ipr.route("add", dst=default, gateway=str(gateway), oif=idx)


def delete_link(path: str | None, ifname: str) -> None:
    """Delete ``ifname`` in namespace ``path`` (None: ours); nothing when the link or
    the namespace is gone already."""
    if path is not None and not os.path.exists(path):
        return
    with iproute(path) as ipr:
        try:
            idx = link_index(ipr, ifname, path)
        except LookupError:
            return
        ipr.link("del", index=idx)


def link_addresses(
    path: str | None, ifname: str
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] | None:
    """The global addresses of ``ifname`` in namespace ``path`` (None: ours), with
    their prefix lengths; None when there is no such link."""
    with iproute(path) as ipr:
        try:
            idx = link_index(ipr, ifname, path)
        except LookupError:
            return None
        return [
            ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=idx)
            if a["scope"] == 0
        ]


def _pyroute2_netns() -> Any:
    from pyroute2 import netns

    return netns


def create_netns(name: str) -> None:
    """Create named namespace ``name`` without forking.

    ``pyroute2.netns.create`` forks a child to unshare in; forking a process
    that runs threads (capture readers, transfer servers) is best avoided. A
    thread can unshare its own network namespace instead: pyroute2's ``attach``
    then bind-mounts that thread's namespace (``/proc/<tid>/ns/net``) at
    ``/var/run/netns/<name>``, and the thread returns to its old namespace.
    """

    def target() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            unshare_net()
            try:
                _pyroute2_netns().attach(name, threading.get_native_id(), libc=_libc)
            finally:
                setns(own)
        finally:
            os.close(own)

    try:
        in_thread(target, thread_name_=f"netns-create-{name}")
    except BaseException as exc:
        if not isinstance(exc, FileExistsError):  # never remove someone else's
            with contextlib.suppress(OSError):
                remove_netns(name)
        raise


def remove_netns(name: str) -> bool:
    """Unmount and unlink one named namespace; ``False`` if it was already gone."""
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.exists(path):
        return False
    try:
        _pyroute2_netns().remove(path, libc=_libc)
    except FileNotFoundError:
        return False
    return True
