"""Packet capture in a test namespace, dissected by tshark as an independent judge.

Why this module exists
----------------------
"Byte-exact with the RFCs and with the kernel" is only believable if someone
other than our own codec reads the wire. Wireshark's dissectors are that
someone: :class:`Capture` records an interface inside a namespace with
``tshark -w``, and :func:`tshark_fields` turns the pcap into one dict per
packet with exactly the fields a test asserts on (``vxlan.vni``,
``geneve.option.unknown.data``, ``ip.src``…).

Traps this module handles, measured on tshark 4.0:

* "Capturing on '<iface>'" is printed a few tens of milliseconds *before*
  capture is live; the later log line "Capture started." is the real signal,
  so :meth:`Capture.start` waits for that one (with a fallback grace period).
* Packets sitting in the kernel ring when tshark is stopped are lost (up to
  ~150 ms worth), so :meth:`Capture.stop` lets the capture settle first.
* tshark warns on stderr when run as root: only stdout is parsed.
* ``-n`` is always passed: no name resolution, so reading a capture never
  sends a DNS query.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from overlay.testing.netns import Netns

__all__ = ["Capture", "tshark_fields"]

_CAPTURED_RE = re.compile(r"^(\d+) packets? captured", re.MULTILINE)


class Capture:
    """``tshark -i <iface> -w <pcap> -f <bpf>`` running inside a namespace.

    ::

        with Capture(n1, "ul0", bpf="udp port 4789", path=tmp_path / "ul0.pcap") as cap:
            ping(n1, "10.244.1.2")
        rows = tshark_fields(cap.path, ["vxlan.vni"])

    Leaving the ``with`` block stops tshark (by its PID) and waits until the
    file is complete. Without ``path`` a temporary file is made; delete it when
    done or pass a path under the test's ``tmp_path``.
    """

    def __init__(
        self,
        ns: Netns,
        iface: str,
        bpf: str | None = None,
        path: str | os.PathLike[str] | None = None,
        *,
        snaplen: int | None = None,
    ) -> None:
        self.ns = ns
        self.iface = iface
        self.bpf = bpf
        self.snaplen = snaplen
        if path is None:
            fd, name = tempfile.mkstemp(prefix=f"{ns.name}-{iface}-", suffix=".pcap")
            os.close(fd)
            path = name
        self.path = Path(path)
        self.packets_captured: int | None = None
        """tshark's own count, known after :meth:`stop`."""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self._reader: threading.Thread | None = None
        self._announced = threading.Event()  # "Capturing on ..."
        self._started = threading.Event()  # "Capture started."

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def stderr(self) -> str:
        """Everything tshark wrote to stderr so far."""
        return "".join(self._stderr)

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                self._stderr.append(line)
                if "Capturing on" in line:
                    self._announced.set()
                if "Capture started" in line:
                    self._started.set()
        except (OSError, ValueError):
            pass  # the pipe was closed under us (Topology.close() stopping tshark)
        finally:
            self._announced.set()  # EOF: tshark is gone; wake start()
            self._started.set()

    def start(self, timeout: float = 10.0, grace: float = 0.25) -> Capture:
        """Start tshark and return once it is capturing.

        Waits for "Capture started." on stderr; if only "Capturing on" ever
        appears, waits ``grace`` seconds more instead. Raises ``RuntimeError``
        (with tshark's stderr) if tshark exits or is not ready by ``timeout``.
        """
        if self._proc is not None:
            raise RuntimeError("capture already started")
        argv = ["tshark", "-n", "-i", self.iface, "-w", str(self.path), "-F", "pcap"]
        if self.snaplen is not None:
            argv += ["-s", str(self.snaplen)]
        if self.bpf:
            argv += ["-f", self.bpf]
        self._proc = proc = self.ns.popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(
            target=self._read_stderr, args=(proc,), name="capture-stderr", daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + timeout
        if not self._announced.wait(timeout):
            self._abort()
            raise RuntimeError(
                f"tshark on {self.iface} in {self.ns.name} not capturing after {timeout}s: "
                f"{self.stderr.strip()}"
            )
        if not self._started.wait(max(0.0, min(1.0, deadline - time.monotonic()))):
            time.sleep(grace)
        if not self._reader.is_alive() or proc.poll() is not None:
            # stderr reached EOF: tshark is gone (or going).
            self._abort()
            self._reader.join(2.0)
            raise RuntimeError(
                f"tshark on {self.iface} in {self.ns.name} exited with {proc.poll()}: "
                f"{self.stderr.strip()}"
            )
        return self

    def _abort(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5.0)

    def stop(self, settle: float = 0.5, timeout: float = 10.0) -> Path:
        """Stop tshark by PID and return the pcap path once the file is complete.

        ``settle`` seconds pass first, so packets still in the kernel's capture
        ring reach the file. Safe to call twice.
        """
        proc = self._proc
        if proc is None:
            raise RuntimeError("capture was never started")
        if proc.poll() is None:
            time.sleep(settle)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if proc.stderr is not None:
            proc.stderr.close()
        m = _CAPTURED_RE.search(self.stderr)
        self.packets_captured = int(m.group(1)) if m else None
        return self.path

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(settle=0.5 if exc is None else 0.0)


def tshark_fields(
    pcap: str | os.PathLike[str],
    fields: Sequence[str],
    decode_as: Iterable[str] = (),
    display_filter: str | None = None,
    *,
    timeout: float = 60.0,
) -> list[dict[str, str]]:
    """Dissect ``pcap`` with tshark; one ``{field: value}`` dict per (filtered) packet.

    ``decode_as`` entries go to ``-d``, e.g. ``"udp.port==8472,vxlan"`` for
    VXLAN on a non-default port. A field absent from a packet maps to ``""``;
    a field present several times (inner and outer ``ip.src``) gives its
    values joined by ``","`` in order, outer first. Field names are checked by
    tshark itself: an unknown one is an error (see ``tshark -G fields``).
    Reads stdout only: tshark as root warns on stderr.
    """
    if not fields:
        raise ValueError("tshark_fields needs at least one field")
    argv = ["tshark", "-n", "-r", os.fspath(pcap), "-T", "fields"]
    argv += ["-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for rule in decode_as:
        argv += ["-d", rule]
    if display_filter:
        argv += ["-Y", display_filter]
    for name in fields:
        argv += ["-e", name]
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"tshark could not read {os.fspath(pcap)} (exit {done.returncode}): "
            f"{done.stderr.strip()}"
        )
    rows: list[dict[str, str]] = []
    for line in done.stdout.splitlines():
        values = line.split("\t")
        values += [""] * (len(fields) - len(values))
        rows.append(dict(zip(fields, values, strict=False)))
    return rows
