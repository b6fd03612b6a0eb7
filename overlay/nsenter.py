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

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

NETNS_RUN_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str) -> str:
    """A namespace name (under /var/run/netns) or path -> its path."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind ``fd``."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def call_in(path: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a new thread inside namespace ``path``; return its result.

    ``path`` None runs it in the caller's namespace. Exceptions from ``fn``
    are re-raised in the caller.
    """
    if path is None:
        return fn(*args, **kwargs)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
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
                    result.append(fn(*args, **kwargs))
                finally:
                    setns(own)
            finally:
                os.close(own)
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    t = threading.Thread(target=target, name=f"netns:{os.path.basename(path)}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


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
