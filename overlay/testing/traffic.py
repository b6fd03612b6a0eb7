"""Traffic between test namespaces: ping, a verified TCP stream, UDP echo, iperf3.

Why this module exists
----------------------
An overlay test that only pings proves little: ICMP survives the classic
failure (an unfinished inner checksum from a veth with tx offload on) that
silently stalls TCP. So every end-to-end check should also move a TCP stream
and verify it byte for byte. :func:`tcp_transfer` does that in-process, with
sockets created inside the namespaces (see :meth:`Netns.socket`) and one
receiving thread, so there is no helper program to start, find a port for, or
reap, and the result says how far the stream got when it fails.

Every function here is bounded in count and in time (a stalled stream ends at
its deadline with ``sha256_match=False``, never hangs), and sends only to
addresses inside the test bed's networks (see :func:`check_allowed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from overlay.testing.netns import Netns, check_allowed

__all__ = [
    "EchoResult",
    "IperfResult",
    "PingResult",
    "TransferResult",
    "iperf3",
    "ping",
    "send_frames",
    "tcp_peer",
    "tcp_transfer",
    "udp_echo",
    "wait_for",
    "wait_listening",
]


def wait_for(pred: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``pred`` every 10 ms until it is true or ``timeout`` seconds pass; its
    last value, as a bool (for ``assert wait_for(...)``: counters and tables that
    a worker thread or another namespace updates a moment later)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


def send_frames(ns: Netns, *frames: bytes, ifname: str = "eth0") -> None:
    """Send Ethernet frames as they are from ``ifname`` in ``ns`` (an AF_PACKET
    socket: no IP stack, no checks), as a hostile or broken pod would."""
    s = ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((ifname, 0))
        for frame in frames:
            s.send(frame)
    finally:
        s.close()


_PING_SENT_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT_RE = re.compile(r"time[=<]([\d.]+) ?ms")

# The payload pool: random bytes repeated with an odd period, so a stream of any
# length is cheap to produce and a misplaced or repeated segment changes the hash.
_POOL_BYTES = (1 << 20) + 7


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


@dataclass
class PingResult:
    """What ``ping`` reported: packets sent and received, and each reply's round trip."""

    sent: int
    received: int
    rtts_ms: list[float] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        """At least one packet sent and every one answered."""
        return self.sent > 0 and self.received == self.sent

    @property
    def loss(self) -> float:
        """Fraction of packets lost, 0.0-1.0."""
        return 1.0 - self.received / self.sent if self.sent else 1.0


def ping(
    ns: Netns,
    dst: str,
    count: int = 3,
    interval: float = 0.2,
    timeout: float = 5.0,
    *,
    size: int | None = None,
    dont_fragment: bool = False,
) -> PingResult:
    """Ping ``dst`` (IPv4 or IPv6) from inside ``ns``; never raises for lost packets.

    Exactly ``count`` probes go out, ``interval`` seconds apart; the run ends at
    most ``timeout`` seconds after the last (ping's ``-W``). ``size`` is the
    ICMP payload in bytes; ``dont_fragment`` sets DF (``-M do``) to probe path MTU.
    """
    check_allowed(dst, "ping destination", loopback=True)
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    argv = ["ping", "-n", "-6" if ":" in dst else "-4", "-c", str(count), "-i", f"{interval:g}"]
    # Not -w: with a deadline iputils keeps sending until `count` replies arrive.
    argv += ["-W", f"{timeout:g}"]
    if size is not None:
        argv += ["-s", str(size)]
    if dont_fragment:
        argv += ["-M", "do"]
    argv.append(dst)
    done = ns.run(argv, timeout=count * interval + timeout + 5.0, check=False)
    m = _PING_SENT_RE.search(done.stdout)
    if m is None:
        raise RuntimeError(
            f"ping {dst} in {ns.name} failed (exit {done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    rtts = [float(x) for x in _PING_RTT_RE.findall(done.stdout)]
    return PingResult(int(m.group(1)), int(m.group(2)), rtts, done.stdout)


@dataclass
class TransferResult:
    """The outcome of :func:`tcp_transfer`."""

    sent_bytes: int
    """Bytes the client handed to its socket."""
    nbytes: int
    """Bytes the server received."""
    sha256_match: bool
    """The received stream hashes to what was sent, and is complete."""
    seconds: float
    """From connect to the server seeing end of stream (or to the deadline)."""
    error: str | None = None
    """Why the transfer stopped early, if it did."""

    @property
    def ok(self) -> bool:
        return self.sha256_match and self.error is None

    @property
    def mbit_per_s(self) -> float:
        return self.nbytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0


class _Receiver:
    def __init__(self, listener: socket.socket, deadline: float) -> None:
        self.listener = listener
        self.deadline = deadline
        self.hash = hashlib.sha256()
        self.nbytes = 0
        self.error: str | None = None
        self.done_at: float | None = None

    def run(self) -> None:
        conn: socket.socket | None = None
        try:
            self.listener.settimeout(max(0.01, self.deadline - time.monotonic()))
            conn, _ = self.listener.accept()
            buf = bytearray(1 << 18)
            view = memoryview(buf)
            while True:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    self.error = f"server: deadline passed after {self.nbytes} bytes"
                    return
                conn.settimeout(remaining)
                n = conn.recv_into(buf)
                if n == 0:
                    self.done_at = time.monotonic()
                    return
                self.hash.update(view[:n])
                self.nbytes += n
        except OSError as exc:
            self.error = f"server: {exc!r} after {self.nbytes} bytes"
        finally:
            if conn is not None:
                conn.close()


def tcp_transfer(
    client_ns: Netns,
    server_ns: Netns,
    server_ip: str,
    nbytes: int,
    port: int = 0,
    timeout: float = 30.0,
    *,
    chunk_bytes: int = 1 << 16,
) -> TransferResult:
    """Send ``nbytes`` random bytes over TCP from ``client_ns`` to ``server_ip`` in ``server_ns``.

    The server socket listens on ``server_ip:port`` (``port=0``: the kernel
    picks a free one in that namespace). The receiving side hashes what arrives
    and the result compares it with the sender's SHA-256. Everything ends by
    ``timeout`` seconds; failures are reported in the result, not raised.
    """
    check_allowed(server_ip, "tcp_transfer server address", loopback=True)
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    family = _family(server_ip)
    start = time.monotonic()
    deadline = start + timeout
    pool = os.urandom(_POOL_BYTES)
    pool2 = memoryview(pool + pool)
    sent_hash = hashlib.sha256()
    sent = 0
    error: str | None = None
    listener = server_ns.socket(family, socket.SOCK_STREAM)
    client: socket.socket | None = None
    receiver = _Receiver(listener, deadline)
    thread = threading.Thread(target=receiver.run, name="tcp_transfer-server", daemon=True)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server_ip, port))
        listener.listen(1)
    except OSError as exc:
        listener.close()
        raise OSError(
            exc.errno,
            f"tcp_transfer cannot listen on {server_ip}:{port} in {server_ns.name}: "
            f"{exc.strerror} (is the address configured in that namespace?)",
        ) from exc
    bound_port = listener.getsockname()[1]
    try:
        thread.start()
        client = client_ns.socket(family, socket.SOCK_STREAM)
        client.settimeout(max(0.01, deadline - time.monotonic()))
        start = time.monotonic()
        client.connect((server_ip, bound_port))
        while sent < nbytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = f"client: deadline passed after sending {sent} bytes"
                break
            off = sent % _POOL_BYTES
            chunk = pool2[off : off + min(chunk_bytes, nbytes - sent)]
            client.settimeout(remaining)
            n = client.send(chunk)
            sent_hash.update(chunk[:n])
            sent += n
        if error is None:
            client.shutdown(socket.SHUT_WR)
    except OSError as exc:
        error = f"client: {exc!r} after sending {sent} bytes"
    finally:
        if error is not None:
            # Wake the receiver now rather than at the deadline: a closed client
            # ends its recv() with EOF/RST, a shut-down listener ends accept().
            if client is not None:
                client.close()
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
        if thread.ident is not None:
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if client is not None:
            client.close()
        listener.close()
    end = receiver.done_at if receiver.done_at is not None else time.monotonic()
    complete = receiver.done_at is not None and receiver.nbytes == nbytes == sent
    match = complete and receiver.hash.digest() == sent_hash.digest()
    if error is None and receiver.error is not None:
        error = receiver.error
    if error is None and not match:
        error = f"received {receiver.nbytes} of {nbytes} bytes, hash mismatch"
    return TransferResult(sent, receiver.nbytes, match, end - start, error)


@dataclass
class EchoResult:
    """The outcome of :func:`udp_echo`."""

    sent: int
    received: int
    rtts_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent


def udp_echo(
    client_ns: Netns,
    server_ns: Netns,
    server_ip: str,
    count: int = 10,
    size: int = 64,
    port: int = 0,
    timeout: float = 5.0,
    *,
    reply_timeout: float = 1.0,
) -> EchoResult:
    """Send ``count`` UDP datagrams of ``size`` bytes to an echo server in ``server_ns``.

    One datagram at a time; each waits up to ``reply_timeout`` for its echo,
    the whole run at most ``timeout``. Replies are matched by sequence number
    and a random token, so stray or duplicated datagrams do not count.
    """
    check_allowed(server_ip, "udp_echo server address", loopback=True)
    if size < 12:
        raise ValueError(f"size must be >= 12 bytes (sequence + token), got {size}")
    family = _family(server_ip)
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    server = server_ns.socket(family, socket.SOCK_DGRAM)
    client = client_ns.socket(family, socket.SOCK_DGRAM)

    def serve() -> None:
        # Bounded: at most count * 2 datagrams, and never past the deadline.
        for _ in range(count * 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.is_set():
                return
            server.settimeout(min(remaining, 0.2))
            try:
                data, peer = server.recvfrom(65535)
                server.sendto(data, peer)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, name="udp_echo-server", daemon=True)
    token = os.urandom(8)
    rtts: list[float] = []
    sent = 0
    try:
        server.bind((server_ip, port))
        bound_port = server.getsockname()[1]
        thread.start()
        filler = b"\x00" * (size - 12)
        for seq in range(count):
            if time.monotonic() >= deadline:
                break
            msg = struct.pack("!I", seq) + token + filler
            t0 = time.monotonic()
            client.sendto(msg, (server_ip, bound_port))
            sent += 1
            wait_until = min(deadline, t0 + reply_timeout)
            while (remaining := wait_until - time.monotonic()) > 0:
                client.settimeout(remaining)
                try:
                    data = client.recv(65535)
                except TimeoutError:
                    break
                if data[:12] == msg[:12]:
                    rtts.append((time.monotonic() - t0) * 1e3)
                    break
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        client.close()
        server.close()
    return EchoResult(sent, len(rtts), rtts)


def tcp_peer(
    client_ns: Netns,
    server_ns: Netns,
    listen: tuple[str, int],
    connect: tuple[str, int] | None = None,
    timeout: float = 5.0,
) -> str | None:
    """Connect from ``client_ns`` to ``connect`` (default: ``listen``) while a
    server in ``server_ns`` listens on ``listen``; the address the server saw the
    connection come from, once a request and its answer crossed both ways, or
    None when no connection completed by ``timeout``.

    For translations: a Service (``connect`` a ClusterIP that a DNAT rule maps to
    ``listen``) and masquerading (the source the server sees).
    """
    for ip, _ in (listen, connect or listen):
        check_allowed(ip, "tcp_peer address", loopback=True)
    family = _family(listen[0])
    server = server_ns.socket(family, socket.SOCK_STREAM)
    seen: list[str] = []

    def serve() -> None:
        try:
            conn, peer = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(timeout)
            with contextlib.suppress(OSError):
                if conn.recv(64) == b"hello\n":
                    seen.append(str(peer[0]))
                    conn.sendall(f"{peer[0]}\n".encode())

    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(listen)
        server.listen(1)
        server.settimeout(timeout)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = client_ns.socket(_family((connect or listen)[0]), socket.SOCK_STREAM)
        try:
            client.settimeout(timeout)
            client.connect(connect or listen)
            client.sendall(b"hello\n")
            answer = client.recv(64).decode().strip()
        except OSError:
            return None
        finally:
            client.close()
        thread.join(timeout)
        return answer if seen and answer == seen[0] else None
    finally:
        server.close()


def wait_listening(ns: Netns, port: int, *, udp: bool = False, timeout: float = 5.0) -> None:
    """Wait until something in ``ns`` listens on TCP (or binds UDP) ``port``.

    Reads ``/proc/thread-self/net/{tcp,tcp6}`` from inside the namespace, so it
    never connects (a probe connection would be taken for a client by one-shot
    servers such as ``iperf3 -1``). ``TimeoutError`` after ``timeout`` seconds.
    """
    proto = "udp" if udp else "tcp"
    want_state = "07" if udp else "0A"  # TCP_CLOSE for bound UDP, TCP_LISTEN for TCP
    suffix = f":{port:04X}"

    def bound() -> bool:
        for table in (proto, proto + "6"):
            try:
                with open(f"/proc/thread-self/net/{table}") as f:
                    lines = f.read().splitlines()[1:]
            except FileNotFoundError:
                continue
            for line in lines:
                cols = line.split()
                if len(cols) > 3 and cols[1].endswith(suffix) and cols[3] == want_state:
                    return True
        return False

    deadline = time.monotonic() + timeout
    while not ns.call(bound):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listens on {proto} port {port} in {ns.name}")
        time.sleep(0.02)


def _free_port(ns: Netns, ip: str) -> int:
    with ns.socket(_family(ip), socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@dataclass
class IperfResult:
    """The summary of one iperf3 run (``raw`` holds iperf3's whole JSON report)."""

    bits_per_second: float
    """Receiver-side throughput (TCP), or the UDP stream's rate."""
    retransmits: int | None
    """TCP retransmissions (``None`` for UDP)."""
    lost_percent: float | None
    """UDP datagrams lost (``None`` for TCP)."""
    raw: dict[str, Any]


def iperf3(
    client_ns: Netns,
    server_ns: Netns,
    server_ip: str,
    seconds: int = 2,
    *,
    udp: bool = False,
    bitrate: str | None = None,
    parallel: int = 1,
    port: int | None = None,
    reverse: bool = False,
    timeout: float | None = None,
) -> IperfResult:
    """Run iperf3 for ``seconds`` from ``client_ns`` to a one-shot server in ``server_ns``.

    The server runs ``iperf3 -s -1`` on a per-run port (the kernel's pick in
    the server namespace unless ``port`` is given) and is stopped by PID if it
    outlives the client. ``bitrate`` bounds UDP (iperf3's ``-b``, e.g. ``"1G"``).
    """
    check_allowed(server_ip, "iperf3 server address", loopback=True)
    if not isinstance(seconds, int) or not 1 <= seconds <= 600:
        # iperf3 reads -t as an integer: "0.5" would become 0, which means "forever".
        raise ValueError(f"seconds must be a whole number in 1..600, got {seconds!r}")
    port = _free_port(server_ns, server_ip) if port is None else port
    limit = timeout if timeout is not None else seconds + 20.0
    server = server_ns.popen(
        ["iperf3", "-s", "-1", "-B", server_ip, "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            wait_listening(server_ns, port, timeout=5.0)
        except TimeoutError:
            if server.poll() is not None and server.stderr is not None:
                raise RuntimeError(
                    f"iperf3 server in {server_ns.name} exited: {server.stderr.read().strip()}"
                ) from None
            raise
        argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J"]
        argv += ["-P", str(parallel)]
        if udp:
            argv.append("-u")
        if bitrate is not None:
            argv += ["-b", bitrate]
        if reverse:
            argv.append("-R")
        done = client_ns.run(argv, timeout=limit, check=False)
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise RuntimeError(
                f"iperf3 client in {client_ns.name} gave no report "
                f"(exit {done.returncode}): {done.stderr.strip()}"
            ) from exc
        if "error" in report:
            raise RuntimeError(f"iperf3 failed: {report['error']}")
        end = report["end"]
        if udp:
            summary = end["sum"]
            return IperfResult(
                float(summary["bits_per_second"]), None, float(summary["lost_percent"]), report
            )
        return IperfResult(
            float(end["sum_received"]["bits_per_second"]),
            int(end["sum_sent"].get("retransmits", 0)),
            None,
            report,
        )
    finally:
        try:
            server.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            server.terminate()
            try:
                server.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=3.0)
        if server.stderr is not None:
            server.stderr.close()
