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

TLS and authentication. ``make_pki`` makes a throw-away CA, a server
certificate for 127.0.0.1 (IP SAN) and client certificates with the
``openssl`` CLI (no Python crypto dependency); ``EtcdServer(tls=pki)`` then
serves ``https://`` only and requires a client certificate signed by that CA
(``--client-cert-auth``), as a production etcd does. ``enable_auth`` turns on
etcd's users and roles through ``etcdctl``, exactly as an operator would:
root, one role with read/write on a prefix, users holding it. With auth on
and no token, etcd takes the client certificate's CN as the user name, so a
user named like a certificate's CN authenticates by certificate alone.

Nothing here imports aetcd: the health check is plain HTTP(S) to loopback,
with proxies disabled (over TLS it is ``/health``: etcd's JSON gateway refuses
requests that carry a client certificate once auth is on).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from overlay.nsenter import stop_process

ETCD_BINARY = "/usr/bin/etcd"
ETCDCTL_BINARY = "/usr/bin/etcdctl"
OPENSSL_BINARY = "/usr/bin/openssl"
LOOPBACK = "127.0.0.1"
ROLE = "overlay-rw"  # the role enable_auth grants read/write on its prefix


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


def tls_unavailable_reason() -> str | None:
    """Why a TLS etcd with auth cannot run here (no etcd, etcdctl or openssl), or ``None``."""
    reason = etcd_unavailable_reason()
    if reason is not None:
        return reason
    if not (os.access(ETCDCTL_BINARY, os.X_OK) or shutil.which("etcdctl")):
        return "needs etcdctl: apt-get install etcd-client (or scripts/dev)"
    if not (os.access(OPENSSL_BINARY, os.X_OK) or shutil.which("openssl")):
        return "needs openssl: apt-get install openssl (or scripts/dev)"
    return None


@dataclasses.dataclass(frozen=True)
class Pki:
    """The certificates ``make_pki`` wrote: PEM files, unencrypted keys."""

    ca: Path  # the CA that signed the server's and the clients' certificates
    server_cert: Path  # etcd's: subjectAltName IP:127.0.0.1, serverAuth
    server_key: Path
    client_cert: Path  # a client's: CN = make_pki's client_cn, clientAuth
    client_key: Path
    other_ca: Path  # an unrelated CA: trusting it instead of ``ca`` must fail
    stranger_cert: Path  # a client certificate signed by other_ca: etcd refuses it
    stranger_key: Path


def _openssl() -> str:
    return OPENSSL_BINARY if os.access(OPENSSL_BINARY, os.X_OK) else shutil.which("openssl") or ""


def _ec_key(path: Path) -> None:
    # P-256: a key in milliseconds (RSA-2048 takes a noticeable moment).
    subprocess.run(
        [_openssl(), "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    path.chmod(0o600)


def _self_signed_ca(directory: Path, name: str, days: int) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _ec_key(key)
    subprocess.run(
        [_openssl(), "req", "-x509", "-new", "-key", str(key), "-out", str(cert),
         "-days", str(days), "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _issue(
    directory: Path, name: str, cn: str, ca: tuple[Path, Path], serial: int, ext: str, days: int
) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    csr, extfile = directory / f"{name}.csr", directory / f"{name}.ext"
    _ec_key(key)
    extfile.write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}\n"
    )
    subprocess.run(
        [_openssl(), "req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={cn}"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [_openssl(), "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-set_serial", str(serial), "-days", str(days), "-extfile", str(extfile),
         "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    csr.unlink()
    extfile.unlink()
    return cert, key


def make_pki(
    directory: str | os.PathLike[str], *, client_cn: str = "overlay", days: int = 2
) -> Pki:
    """A CA, etcd's server certificate for 127.0.0.1 and client certificates, in directory.

    Made with the ``openssl`` CLI in about 0.1 s; valid for ``days`` days. The
    client certificate's CN is ``client_cn`` (etcd's user name when a request
    carries no token). Skips the calling test when openssl is missing.
    """
    if not _openssl():
        import pytest

        pytest.skip("needs openssl: apt-get install openssl (or scripts/dev)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = _self_signed_ca(d, "ca", days)
    other = _self_signed_ca(d, "other-ca", days)
    server = _issue(
        d, "server", "etcd", ca, 2, f"subjectAltName=IP:{LOOPBACK}\nextendedKeyUsage=serverAuth",
        days,
    )  # fmt: skip
    client = _issue(d, "client", client_cn, ca, 3, "extendedKeyUsage=clientAuth", days)
    stranger = _issue(d, "stranger", client_cn, other, 4, "extendedKeyUsage=clientAuth", days)
    return Pki(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca=other[0],
        stranger_cert=stranger[0],
        stranger_key=stranger[1],
    )


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
    ``etcd.log``. Ports are chosen at the first ``start()`` and kept. With
    ``tls`` (see ``make_pki``) it serves ``https://`` and requires client
    certificates; ``auth_token_ttl`` is etcd's ``--auth-token-ttl`` (seconds a
    simple token lives unused; etcd's default is 300).
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        *,
        name: str = "overlay-test",
        startup_timeout: float = 15.0,
        tls: Pki | None = None,
        auth_token_ttl: int | None = None,
    ) -> None:
        self.dir = Path(tmpdir)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.name = name
        self.startup_timeout = startup_timeout
        self.tls = tls
        self.auth_token_ttl = auth_token_ttl
        self.root_password: str | None = None  # set by enable_auth
        self.client_port = 0
        self.peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client URL, ``http(s)://127.0.0.1:PORT`` (known after the first ``start()``)."""
        if not self.client_port:
            raise RuntimeError("EtcdServer.endpoint: start() the server first")
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.client_port}"

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
        stop_process(proc, timeout)
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

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        """Run ``etcdctl`` against this server (its TLS files; ``user`` as "name:password");
        its stdout, or ``RuntimeError`` with its output when it fails."""
        binary = ETCDCTL_BINARY if os.access(ETCDCTL_BINARY, os.X_OK) else shutil.which("etcdctl")
        if binary is None:
            import pytest

            pytest.skip("needs etcdctl: apt-get install etcd-client (or scripts/dev)")
        argv = [binary, f"--endpoints={self.endpoint}", "--dial-timeout=5s"]
        if self.tls is not None:
            argv += [
                f"--cacert={self.tls.ca}",
                f"--cert={self.tls.client_cert}",
                f"--key={self.tls.client_key}",
            ]
        if user is not None:
            argv.append(f"--user={user}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        done = subprocess.run(
            [*argv, *args], capture_output=True, text=True, env=env, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def enable_auth(
        self,
        users: Mapping[str, str],
        *,
        prefix: str = "/overlay/",
        root_password: str = "root-secret",
        no_role: Mapping[str, str] | None = None,
    ) -> None:
        """Turn on etcd's authentication as an operator does: a root user, a role
        (``ROLE``) with read/write on keys under ``prefix``, each of ``users``
        (name -> password) holding it, the users of ``no_role`` holding nothing,
        then ``auth enable``. Later admin commands need ``user=f"root:{root_password}"``."""
        self.etcdctl("user", "add", f"root:{root_password}", "--interactive=false")
        self.etcdctl("role", "add", ROLE)
        self.etcdctl("role", "grant-permission", ROLE, "--prefix=true", "readwrite", prefix)
        for name, password in users.items():
            self.etcdctl("user", "add", f"{name}:{password}", "--interactive=false")
            self.etcdctl("user", "grant-role", name, ROLE)
        for name, password in (no_role or {}).items():
            self.etcdctl("user", "add", f"{name}:{password}", "--interactive=false")
        self.etcdctl("auth", "enable")
        self.root_password = root_password

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
        client = self.endpoint
        peer = f"http://{LOOPBACK}:{self.peer_port}"  # one member: no peer traffic to secure
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
        if self.tls is not None:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        if self.auth_token_ttl is not None:
            argv.append(f"--auth-token-ttl={self.auth_token_ttl}")
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
        # leader and a working store, unlike a bare TCP connect. Over TLS,
        # /health (a quorum read through raft, equally strong): the gateway
        # refuses a request with a client certificate once auth is on.
        body: bytes | None = json.dumps({"key": base64.b64encode(b"\0").decode()}).encode()
        path = "/v3/kv/range"
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
            handlers.append(urllib.request.HTTPSHandler(context=context))
            body, path = None, "/health"
        opener = urllib.request.build_opener(*handlers)
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise RuntimeError(f"etcd exited with {code}:\n{self._log_tail()}")
            request = urllib.request.Request(
                f"{self.endpoint}{path}",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            try:
                try:
                    with opener.open(request, timeout=1.0) as response:
                        answer = json.load(response)
                except urllib.error.HTTPError as e:  # a refusal, with etcd's JSON
                    with e:
                        answer = json.load(e)
                # With auth on (and no TLS), the range is refused for want of a
                # user, but only after the linearizable read: etcd is serving.
                refused = "user name is empty" in str(answer.get("error", ""))
                if "header" in answer or answer.get("health") == "true" or refused:
                    return
                last = repr(answer)
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
