"""A real etcd for tests: started by hand on loopback, stopped by PID.

Why a real one. ``EtcdStore`` is only as good as its handling of what etcd
actually does — revisions, compaction, lease expiry on the server's own
clock, a watch stream that breaks when the server dies — and a mock would
only echo our assumptions. Debian's ``etcd-server`` starts in well under a
second with the flags below, so tests use the real thing.

``EtcdServer`` runs ``/usr/bin/etcd`` as a one-member cluster on free
``127.0.0.1`` ports (client and peer) with its data in a directory of the
caller's (a test's ``tmp_path``). It is healthy when a linearizable range
request through etcd's JSON gateway succeeds, which needs an elected leader.
``kill()`` (SIGKILL) and ``start()`` again — same ports, same data dir — are
how fault tests take etcd away and bring it back. etcd is killed if the
thread that started it dies (``setpriv --pdeathsig``), so a crashed test run
leaves no etcd behind; start it from a thread that outlives it.

Nothing here imports aetcd: the health check is plain HTTP to loopback,
with proxies disabled.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

ETCD_BINARY = "/usr/bin/etcd"
LOOPBACK = "127.0.0.1"


def etcd_binary() -> str | None:
    """The etcd executable to run, or ``None`` when there is none."""
    if os.access(ETCD_BINARY, os.X_OK):
        return ETCD_BINARY
    return shutil.which("etcd")


def etcd_unavailable_reason() -> str | None:
    """Why a real etcd cannot run here, or ``None`` if it can."""
    if etcd_binary() is None:
        return "needs etcd: apt-get install etcd-server etcd-client (or scripts/dev)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent_argv() -> list[str]:
    """A prefix that makes the command die with the thread that started it.

    ``setpriv --pdeathsig`` (util-linux) rather than a ``preexec_fn`` calling
    prctl: a ``preexec_fn`` forces a real fork(), which gRPC (loaded in the
    same test process by EtcdStore) warns about and does not support.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class EtcdServer:
    """One etcd member on loopback; a context manager (start on enter, stop on exit).

    ``tmpdir`` holds ``data/`` (etcd's data dir, kept across restarts) and
    ``etcd.log``. Ports are chosen at the first ``start()`` and kept.
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        *,
        name: str = "overlay-test",
        startup_timeout: float = 15.0,
    ) -> None:
        self.dir = Path(tmpdir)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.name = name
        self.startup_timeout = startup_timeout
        self.client_port = 0
        self.peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client URL, ``http://127.0.0.1:PORT`` (known after the first ``start()``)."""
        if not self.client_port:
            raise RuntimeError("EtcdServer.endpoint: start() the server first")
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EtcdServer:
        """Start etcd (if not running) and wait until it serves a linearizable read.

        Skips the calling test when there is no etcd binary. Raises
        ``RuntimeError`` with the end of etcd's log if it does not become
        healthy within ``startup_timeout``.
        """
        if self.running:
            return self
        binary = etcd_binary()
        if binary is None:
            import pytest

            pytest.skip(etcd_unavailable_reason() or "no etcd")
        self.dir.mkdir(parents=True, exist_ok=True)
        first = not self.client_port
        # A port found free may be taken before etcd binds it: on a first start,
        # try fresh ports again. A restart must keep its ports.
        attempts = 3 if first else 1
        for attempt in range(attempts):
            if first:
                self.client_port, self.peer_port = _free_ports(2)
            self._spawn(binary)
            try:
                self._wait_healthy()
                return self
            except RuntimeError:
                self.kill()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after timeout seconds; waits for the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL now (a crash, for fault tests); waits for the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(5.0)
        self._proc = None

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"EtcdServer({self.endpoint if self.client_port else 'unstarted'}, {state})"

    # -- internals ------------------------------------------------------------

    def _spawn(self, binary: str) -> None:
        client = f"http://{LOOPBACK}:{self.client_port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        argv = [
            *_die_with_parent_argv(),
            binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--initial-cluster-state=new",  # ignored when the data dir exists
            "--heartbeat-interval=10",
            "--election-timeout=100",
        ]
        # Our flags only: ETCD_* variables of the caller's environment would
        # override them or clash with them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def _wait_healthy(self) -> None:
        # A linearizable range read through the JSON gateway: it needs a
        # leader and a working store, unlike a bare TCP connect.
        body = json.dumps({"key": base64.b64encode(b"\0").decode()}).encode()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise RuntimeError(f"etcd exited with {code}:\n{self._log_tail()}")
            request = urllib.request.Request(
                f"{self.endpoint}/v3/kv/range",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            try:
                with opener.open(request, timeout=1.0) as response:
                    if "header" in json.load(response):
                        return
            except (OSError, ValueError) as e:
                last = repr(e)
            time.sleep(0.05)
        raise RuntimeError(
            f"etcd on {self.endpoint} not healthy within {self.startup_timeout} s "
            f"(last: {last}):\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
