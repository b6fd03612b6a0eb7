"""etcd's TLS and authentication settings: checked together, and diagnosed when refused.

Why a room of its own. The same rules judge ``EtcdStore``'s arguments and
overlayd's ``[store]`` keys (``overlayd --check`` must refuse a bad file
without gRPC or aetcd loaded, and give the same answer the store would), and
the diagnosis of a refused TLS connection needs only the standard ``ssl``
module. Nothing here imports gRPC.

The settings follow etcd's own clients and flannel.

* ``https://`` endpoints use TLS; ``ca_file`` is the CA that signed etcd's
  certificate (etcdctl ``--cacert``, flannel ``-etcd-cafile``); without it
  the system's trust store is used (``ssl``'s default CA file, the one
  ``update-ca-certificates`` maintains), not gRPC's bundled copy, so a CA an
  operator installed system-wide is trusted. ``cert_file``/``key_file`` are
  the client certificate and its unencrypted key (``--cert``/``--key``,
  ``-etcd-certfile``/``-etcd-keyfile``), for an etcd run with
  ``--client-cert-auth``. ``username``/``password`` (``--user``) get a token
  from etcd's Authenticate call; with auth on and no user, etcd takes the
  client certificate's CN as the user, so a certificate alone also works.
* Refused, not guessed: every endpoint has the same scheme (one set of TLS
  settings serves all members); TLS files with ``http://`` endpoints are an
  error (the operator meant TLS; sending in clear instead would be silent);
  a password goes over ``http://`` only to a loopback address (an etcd or a
  gRPC proxy on this host): elsewhere it, and the token that grants what it
  grants, would cross the network in clear, and a log warning cannot take a
  sniffed password back. ``check_security`` reads the files: readable, PEM,
  the key unencrypted (gRPC cannot ask for a passphrase) and matching the
  certificate, so a swapped or wrong file is named before anything connects.
* Why the handshake is repeated (``probe_tls``). gRPC reports a client
  certificate the server refuses only as "Unwrap failed (TSI_DATA_CORRUPTED)"
  (the TLS alert goes to its C log), and a server that does not speak TLS as
  "Socket closed". When a call fails with such words, the store repeats the
  handshake with Python's ``ssl`` (in a thread) to read the server's verdict:
  an untrusted or misnamed certificate, a certificate required or refused,
  no TLS at all — each said with the setting to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import ssl
import urllib.parse
from collections.abc import Sequence

from overlay.control.store import StoreUnavailable
from overlay.errors import ConfigError

PathLike = str | os.PathLike[str]


class StoreAccessDenied(StoreUnavailable):
    """etcd answers, but TLS or authentication fails: ``kind`` is "tls" (a certificate,
    ours or etcd's, is refused, or the schemes do not match), "auth" (the user or its
    token is refused) or "permission" (the user may not touch the key).

    A ``StoreUnavailable``: callers back off and retry, as the fix is often made on
    the server side; the message names the cause and the setting to fix."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    url: str  # as given
    scheme: str  # "http" or "https"
    host: str  # without brackets
    port: int

    @property
    def target(self) -> str:
        """gRPC's HOST:PORT (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_endpoint(endpoint: str, field: str = "endpoints") -> Endpoint:
    expected = "http://HOST:PORT or https://HOST:PORT, e.g. https://127.0.0.1:2379"
    if not isinstance(endpoint, str):
        raise ConfigError(field, endpoint, expected)
    text = endpoint if "://" in endpoint else "http://" + endpoint
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as e:
        raise ConfigError(field, endpoint, f"{expected} ({e})") from None
    if url.scheme not in ("http", "https"):
        raise ConfigError(field, endpoint, expected)
    if not url.hostname or port is None or url.path not in ("", "/"):
        raise ConfigError(field, endpoint, expected)
    return Endpoint(endpoint, url.scheme, url.hostname, port)


@dataclasses.dataclass(frozen=True)
class Security:
    """What ``check_security`` read: the TLS material (PEM bytes) and the user.

    ``root_certificates`` is ``None`` over TLS only when there is neither a
    ``ca_file`` nor a system trust store (gRPC then uses its own roots)."""

    tls: bool
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def _read_pem(field: str, path: PathLike, marker: bytes, expected: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(field, str(path), f"a readable file ({e.strerror})") from None
    if marker not in data:
        raise ConfigError(field, str(path), expected)
    return data


def _system_roots() -> bytes | None:
    """The system's trust store (Debian: /etc/ssl/certs/ca-certificates.crt), if any."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path:
            with contextlib.suppress(OSError), open(path, "rb") as f:
                return f.read()
    return None


def check_security(
    endpoints: Sequence[str],
    *,
    ca_file: PathLike | None = None,
    cert_file: PathLike | None = None,
    key_file: PathLike | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Security:
    """Check endpoints and TLS/auth settings together, read the files; ``Security``,
    or ``ConfigError`` naming the argument (``endpoints[i]``, ``ca_file``, ...) and
    the fix. overlayd's configuration calls it too, prefixing ``store.``."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not endpoints:
        raise ConfigError("endpoints", list(endpoints), "at least one http(s)://HOST:PORT")
    parsed = [parse_endpoint(e, f"endpoints[{i}]") for i, e in enumerate(endpoints)]
    tls = parsed[0].scheme == "https"
    for i, ep in enumerate(parsed):
        if ep.scheme != parsed[0].scheme:
            raise ConfigError(
                f"endpoints[{i}]",
                ep.url,
                f"a {parsed[0].scheme}:// URL like endpoints[0]: one set of TLS settings "
                "serves every member",
            )
    files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    if not tls:
        for field, path in files.items():
            if path is not None:
                raise ConfigError(
                    field,
                    str(path),
                    "https:// endpoints: TLS files are used only over TLS, and the endpoints "
                    "are http:// (make them https://, or remove it)",
                )
    if (cert_file is None) != (key_file is None):
        missing = "key_file" if key_file is None else "cert_file"
        raise ConfigError(
            missing, None, "required: a client certificate (cert_file) and its key (key_file)"
        )
    roots = None
    if tls:
        if ca_file is not None:
            roots = _read_pem(
                "ca_file",
                ca_file,
                b"-----BEGIN CERTIFICATE-----",
                "a PEM file of the CA certificate(s) that signed etcd's certificate",
            )
            try:
                ssl.create_default_context().load_verify_locations(cadata=roots.decode("ascii"))
            except (ssl.SSLError, ValueError) as e:
                raise ConfigError(
                    "ca_file", str(ca_file), f"PEM CA certificates ({e.__class__.__name__}: {e})"
                ) from None
        else:
            roots = _system_roots()
    chain = key = None
    if cert_file is not None and key_file is not None:
        chain = _read_pem(
            "cert_file", cert_file, b"-----BEGIN CERTIFICATE-----", "a PEM client certificate"
        )
        key = _read_pem("key_file", key_file, b"PRIVATE KEY-----", "a PEM private key")
        if b"ENCRYPTED" in key:
            raise ConfigError(
                "key_file",
                str(key_file),
                "an unencrypted PEM private key (openssl pkey -in KEY -out PLAIN)",
            )
        try:
            ssl.create_default_context().load_cert_chain(cert_file, key_file)
        except ssl.SSLError as e:
            if "KEY_VALUES_MISMATCH" in str(e):
                raise ConfigError(
                    "key_file", str(key_file), f"the private key of cert_file {cert_file}"
                ) from None
            raise ConfigError(
                "cert_file", str(cert_file), f"a PEM certificate and key that load ({e})"
            ) from None
    if username is not None and not username:
        raise ConfigError("username", username, "an etcd user name")
    if username is not None and password is None:
        raise ConfigError("password", None, "required with username: the user's password")
    if password is not None and username is None:
        raise ConfigError("username", None, "required with password: the etcd user's name")
    if password is not None and not tls:
        for i, ep in enumerate(parsed):
            if not ep.loopback:
                raise ConfigError(
                    f"endpoints[{i}]",
                    ep.url,
                    "https:// when a password is set: over http:// the password and its "
                    "token cross the network in clear (only loopback is exempt)",
                )
    return Security(
        tls=tls,
        root_certificates=roots,
        certificate_chain=chain,
        private_key=key,
        ca_file=None if ca_file is None else str(ca_file),
        cert_file=None if cert_file is None else str(cert_file),
        key_file=None if key_file is None else str(key_file),
        username=username,
        password=password,
    )


def probe_tls(endpoint: Endpoint, sec: Security, timeout: float) -> str | None:
    """What a TLS handshake with ``endpoint`` as configured says is wrong, or ``None``.

    Runs in a thread (blocking sockets). Over TLS it reads (up to 1 s) after
    the handshake: with TLS 1.3 a refused client certificate is announced
    only by an alert (or a close) after the client's side of the handshake
    is done, while a server that does not speak TLS drops the handshake
    itself. Over ``http://`` it checks whether the server speaks TLS instead.
    """
    url = endpoint.url
    if not sec.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif sec.root_certificates is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=sec.root_certificates.decode("ascii"))
    else:
        context = ssl.create_default_context()
    context.set_alpn_protocols(["h2"])
    try:
        if sec.tls and sec.cert_file is not None:
            context.load_cert_chain(sec.cert_file, sec.key_file)
        raw = socket.create_connection((endpoint.host, endpoint.port), timeout)
    except (OSError, ValueError):
        return None  # not reachable: an outage, not TLS
    with raw:
        try:
            tls = context.wrap_socket(
                raw, server_hostname=endpoint.host, do_handshake_on_connect=False
            )
            tls.do_handshake()
        except ssl.SSLCertVerificationError as e:
            return _untrusted(url, endpoint.host, sec, e.verify_message or str(e))
        except (ssl.SSLEOFError, ConnectionError):
            if not sec.tls:
                return None
            return (
                f"etcd at {url} dropped the TLS handshake: it does not seem to speak TLS "
                "(use http://, or turn TLS on in etcd)"
            )
        except ssl.SSLError as e:
            return _refused(url, sec, str(e.reason or e)) if sec.tls else None
        except OSError:
            return None  # no verdict in time
        if not sec.tls:
            return (
                f"etcd at {url} speaks TLS: use https:// (with ca_file, and "
                "cert_file/key_file if etcd asks for client certificates)"
            )
        try:
            # Read, not write: a write racing the server's close would turn
            # its alert into a reset. An accepting server waits for our
            # HTTP/2 preface: no verdict, an outage.
            tls.settimeout(min(timeout, 1.0))
            tls.recv(1)
        except (ssl.SSLEOFError, ConnectionError):
            return _refused(url, sec, "")
        except ssl.SSLError as e:
            return _refused(url, sec, str(e.reason or e))
        except OSError:
            return None
    return None


def _untrusted(url: str, host: str, sec: Security, why: str) -> str:
    if "mismatch" in why:
        return (
            f"etcd at {url}: its certificate does not name {host} ({why}): "
            "use an endpoint address listed in the certificate's subjectAltName"
        )
    source = f"ca_file {sec.ca_file}" if sec.ca_file else "the system's trust store"
    return (
        f"etcd at {url}: its certificate is not trusted by {source} "
        f"(certificate verify failed: {why}): set ca_file to the CA that signed "
        "etcd's certificate"
    )


def _refused(url: str, sec: Security, reason: str) -> str:
    """etcd ended the TLS session with an alert (``reason``) or by closing ("")."""
    if reason and "ALERT" not in reason:
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
            return f"etcd at {url} does not speak TLS: use http://, or turn TLS on in etcd"
        return f"etcd at {url}: TLS failed ({reason})"
    how = f"TLS {reason.lower().replace('_', ' ')}" if reason else "it closed the connection"
    if sec.cert_file is None:
        return f"etcd at {url} requires a client certificate ({how}): set cert_file and key_file"
    return (
        f"etcd at {url} refused the client certificate {sec.cert_file} ({how}): "
        "it must be signed by a CA in etcd's --trusted-ca-file, be valid now and "
        "allow client authentication"
    )
