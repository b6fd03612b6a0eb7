"""EtcdStore and overlayd on a real etcd with TLS, client certificates and users.

The certificates are made by the test (``make_pki``: a CA, etcd's certificate
for 127.0.0.1, client certificates, and an unrelated CA). etcd runs with
``--client-cert-auth`` on ``https://127.0.0.1:PORT`` and with authentication
on, set up with ``etcdctl`` as an operator would: root, a role with read/write
on ``/overlay/``, users holding it (one named like the client certificate's
CN, so the certificate alone identifies it), users holding nothing.

One etcd serves the module (each test keeps to keys of its own); its
``--auth-token-ttl`` is 1 s, so tokens expire whenever a store is idle a
moment and renewal is exercised throughout. Store tests run on the stdlib
loop and on uvloop; the overlayd tests run real daemons in namespaces.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlay.control.store import Event, StoreUnavailable
from overlay.errors import ConfigError
from overlay.testing.aio import run
from overlay.testing.etcd import ROLE, EtcdServer, Pki, make_pki, tls_unavailable_reason

pytest.importorskip("aetcd")
from overlay.control.etcd import EtcdStore, StoreAccessDenied  # noqa: E402

pytestmark = pytest.mark.skipif(
    tls_unavailable_reason() is not None, reason=str(tls_unavailable_reason())
)

TIMEOUT_S = 3.0  # EtcdStore's call timeout here
TOKEN_TTL_S = 1  # etcd's --auth-token-ttl for the module's server
USER, PASSWORD = "node-a", "node-a-secret"  # holds the role
CN_USER = "overlay"  # the client certificate's CN: a user holding the role
IDLE, LATE = "idle", "late"  # users holding no role ("late" gets one in a test)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), client_cn=CN_USER)


def _secure_server(directory: Path, pki: Pki) -> EtcdServer:
    server = EtcdServer(directory, tls=pki, auth_token_ttl=TOKEN_TTL_S)
    server.start()
    server.enable_auth(
        {USER: PASSWORD, CN_USER: "unused: this user logs in by certificate"},
        no_role={IDLE: "idle-secret", LATE: "late-secret"},
    )
    return server


@pytest.fixture(scope="module")
def secure_etcd(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server: EtcdServer | None = None
    try:
        server = _secure_server(tmp_path_factory.mktemp("etcd-tls"), pki)
        yield server
    finally:
        if server is not None:
            server.stop()


def _store(server: EtcdServer, pki: Pki, identity: str = "password", **kw: Any) -> EtcdStore:
    """A store as a node would configure it: etcd's CA, the client certificate, and for
    the "password" identity a user and password (kw overrides any of them)."""
    args: dict[str, Any] = {
        "ca_file": pki.ca,
        "cert_file": pki.client_cert,
        "key_file": pki.client_key,
    }
    if identity == "password":
        args.update(username=USER, password=PASSWORD)
    args.update(kw)
    return EtcdStore([server.endpoint], timeout=TIMEOUT_S, **args)


async def _next(watch: Any) -> list[Event]:
    return list(await asyncio.wait_for(anext(watch), 5))


# --------------------------------------------------------------------------
# The store over TLS, as a certificate's user and as a password's user


@pytest.mark.parametrize("identity", ["certificate", "password"])
def test_put_get_watch_and_leases_over_tls(
    secure_etcd: EtcdServer, pki: Pki, identity: str, loop_kind: str
) -> None:
    prefix = f"/overlay/test-ops/{identity}-{loop_kind}/".encode()

    async def main() -> None:
        async with _store(secure_etcd, pki, identity) as store:
            assert store.tls and store.username == (USER if identity == "password" else None)
            r1 = await store.put(prefix + b"a", b"1")
            got = await store.get(prefix + b"a")
            assert got is not None and got.value == b"1" and got.mod_revision == r1
            r2 = await store.cas(prefix + b"a", r1, b"2")
            assert r2 is not None and await store.cas(prefix + b"a", r1, b"stale") is None
            kvs, _ = await store.get_prefix(prefix)
            assert [(kv.key, kv.value) for kv in kvs] == [(prefix + b"a", b"2")]

            watch = store.watch(prefix, r1)
            assert [(e.kind, e.value) for e in await _next(watch)] == [("put", b"1"), ("put", b"2")]
            lease = await store.lease_grant(5)
            r3 = await store.put(prefix + b"leased", b"x", lease=lease)
            assert await _next(watch) == [Event("put", prefix + b"leased", b"x", r3, r3)]
            assert await store.lease_keepalive(lease) is True
            await store.lease_revoke(lease)
            assert [(e.kind, e.key) for e in await _next(watch)] == [("delete", prefix + b"leased")]
            assert await store.delete(prefix + b"a") is True
            assert [e.kind for e in await _next(watch)] == ["delete"]
            await watch.aclose()
            assert store.last_error == ""

    run(loop_kind, main)


def test_an_expired_token_is_renewed_for_calls_and_watches(
    secure_etcd: EtcdServer, pki: Pki, loop_kind: str
) -> None:
    prefix = f"/overlay/test-ttl/{loop_kind}/".encode()

    async def main() -> None:
        calls, watches = _store(secure_etcd, pki), _store(secure_etcd, pki)
        async with calls, watches:
            rev = await calls.put(prefix + b"k", b"1")
            await watches.get(prefix + b"k")
            assert calls.token_renewals == watches.token_renewals == 0
            # Unused for longer than --auth-token-ttl (plus etcd's 1 s sweep):
            # etcd forgets both tokens.
            await asyncio.sleep(TOKEN_TTL_S + 2)
            got = await calls.get(prefix + b"k")
            assert got is not None and got.value == b"1"
            assert calls.token_renewals == 1  # etcd refused the old token; a new one served
            watch = watches.watch(prefix, rev)
            assert [e.value for e in await _next(watch)] == [b"1"]
            assert watches.token_renewals == 1  # the watch's creation was refused once
            await watch.aclose()

    run(loop_kind, main)


# --------------------------------------------------------------------------
# What is wrong, said plainly


def _denied(loop_kind: str, store: EtcdStore, key: bytes = b"/overlay/test-denied/k") -> str:
    """The StoreAccessDenied a put raises (twice: the second must give the same)."""
    caught: list[StoreAccessDenied] = []

    async def main() -> None:
        async with store:
            for _ in range(2):
                with pytest.raises(StoreAccessDenied) as err:
                    await store.put(key, b"v")
                caught.append(err.value)
            assert store.last_error == str(caught[-1])

    run(loop_kind, main)
    assert str(caught[0]) == str(caught[1])
    assert isinstance(caught[0], StoreUnavailable)  # callers back off and retry
    return f"{caught[0].kind}: {caught[0]}"


def test_a_wrong_ca_is_reported_as_an_untrusted_server_certificate(
    secure_etcd: EtcdServer, pki: Pki, loop_kind: str
) -> None:
    message = _denied(loop_kind, _store(secure_etcd, pki, ca_file=pki.other_ca))
    assert message.startswith("tls: ")
    assert "not trusted by ca_file" in message and str(pki.other_ca) in message
    assert "certificate verify failed" in message and "set ca_file" in message


def test_a_missing_client_certificate_is_reported(
    secure_etcd: EtcdServer, pki: Pki, loop_kind: str
) -> None:
    store = EtcdStore([secure_etcd.endpoint], timeout=TIMEOUT_S, ca_file=pki.ca)
    message = _denied(loop_kind, store)
    assert message.startswith("tls: ") and "requires a client certificate" in message
    assert "set cert_file and key_file" in message


def test_a_client_certificate_of_another_ca_is_refused(
    secure_etcd: EtcdServer, pki: Pki, loop_kind: str
) -> None:
    store = _store(secure_etcd, pki, cert_file=pki.stranger_cert, key_file=pki.stranger_key)
    message = _denied(loop_kind, store)
    assert message.startswith("tls: ")
    assert f"refused the client certificate {pki.stranger_cert}" in message


def test_a_wrong_password_is_reported_and_logged_once(
    secure_etcd: EtcdServer, pki: Pki, loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="overlay.control.etcd")
    message = _denied(loop_kind, _store(secure_etcd, pki, password="not-the-password"))
    assert message.startswith("auth: ")
    assert f"refused user {USER!r}: wrong password or no such user" in message
    assert "check username and password" in message
    logged = [r.getMessage() for r in caplog.records if r.name == "overlay.control.etcd"]
    assert logged == [message.removeprefix("auth: ")]  # two failures, one line


def test_a_user_without_a_role_is_told_to_grant_one_for_calls_and_watches(
    secure_etcd: EtcdServer, pki: Pki, loop_kind: str
) -> None:
    message = _denied(loop_kind, _store(secure_etcd, pki, username=IDLE, password="idle-secret"))
    assert message.startswith("permission: ")
    assert f"denied user {IDLE!r} access" in message and "grant-permission" in message

    async def main() -> None:
        async with _store(secure_etcd, pki, username=IDLE, password="idle-secret") as store:
            with pytest.raises(StoreAccessDenied, match="denied user 'idle' access") as err:
                await _next(store.watch(b"/overlay/test-denied/", 1))
            assert err.value.kind == "permission" and store.last_error == str(err.value)

    run(loop_kind, main)


def test_access_works_again_once_the_role_is_granted(secure_etcd: EtcdServer, pki: Pki) -> None:
    async def main() -> None:
        async with _store(secure_etcd, pki, username=LATE, password="late-secret") as store:
            with pytest.raises(StoreAccessDenied, match="denied user 'late'"):
                await store.put(b"/overlay/test-late/k", b"1")
            assert store.last_error
            await asyncio.to_thread(
                secure_etcd.etcdctl,
                "user",
                "grant-role",
                LATE,
                ROLE,
                user=f"root:{secure_etcd.root_password}",
            )
            # The same store works now (a token older than the grant is renewed
            # if etcd says "revision of auth store is old").
            await store.put(b"/overlay/test-late/k", b"2")
            assert store.last_error == ""

    run("asyncio", main)


def test_http_to_a_tls_etcd_is_told_to_use_https(secure_etcd: EtcdServer) -> None:
    plain = secure_etcd.endpoint.replace("https://", "http://")
    message = _denied("asyncio", EtcdStore([plain], timeout=TIMEOUT_S))
    assert message == (
        f"tls: etcd at {plain} speaks TLS: use https:// (with ca_file, and cert_file/key_file "
        "if etcd asks for client certificates)"
    )


def test_https_to_a_plain_etcd_is_told_it_does_not_speak_tls(
    overlay_etcd_session: EtcdServer, pki: Pki
) -> None:
    url = overlay_etcd_session.endpoint.replace("http://", "https://")
    message = _denied("asyncio", EtcdStore([url], timeout=TIMEOUT_S, ca_file=pki.ca))
    assert message.startswith("tls: ") and "does not seem to speak TLS" in message
    assert "use http://" in message


def test_a_user_set_before_etcd_turns_auth_on_still_works(
    overlay_etcd_session: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="overlay.control.etcd")

    async def main() -> None:
        # etcd_session has no auth: etcd answers Authenticate with "authentication
        # is not enabled", and the store works without a token, as etcd's own client.
        store = EtcdStore([overlay_etcd_session.endpoint], username=USER, password=PASSWORD)
        async with store:
            rev = await store.put(b"/overlay/test-noauth/k", b"1")
            got = await store.get(b"/overlay/test-noauth/k")
            assert got is not None and got.mod_revision == rev
            await store.delete(b"/overlay/test-noauth/k")

    run("asyncio", main)
    assert [r.getMessage() for r in caplog.records] == [
        f"etcd at {overlay_etcd_session.endpoint}: username {USER!r} is set but etcd's "
        "authentication is off; working without a token"
    ]


# --------------------------------------------------------------------------
# Settings checked when the store is made (nothing is connected)


def test_tls_and_auth_settings_are_checked_before_anything_connects(
    pki: Pki, tmp_path: Path
) -> None:
    https, http = "https://127.0.0.1:2379", "http://127.0.0.1:2379"
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.client_key), "-aes256", "-passout", "pass:x",
         "-out", str(encrypted)],
        check=True, capture_output=True,
    )  # fmt: skip
    cases: list[tuple[list[str], dict[str, Any], str, str]] = [
        ([http], {"ca_file": pki.ca}, "ca_file", "https:// endpoints"),
        ([https, http], {}, "endpoints[1]", "a https:// URL like endpoints[0]"),
        ([https], {"cert_file": pki.client_cert}, "key_file", "required"),
        ([https], {"key_file": pki.client_key}, "cert_file", "required"),
        ([https], {"ca_file": tmp_path / "nope.pem"}, "ca_file", "a readable file"),
        ([https], {"ca_file": pki.client_key}, "ca_file", "PEM file of the CA"),
        (
            [https],
            {"cert_file": pki.client_cert, "key_file": pki.stranger_key},
            "key_file",
            f"the private key of cert_file {pki.client_cert}",
        ),
        (
            [https],
            {"cert_file": pki.client_cert, "key_file": encrypted},
            "key_file",
            "an unencrypted PEM private key",
        ),
        ([https], {"username": USER}, "password", "required with username"),
        ([https], {"password": PASSWORD}, "username", "required with password"),
        (
            ["http://198.18.0.9:2379"],
            {"username": USER, "password": PASSWORD},
            "endpoints[0]",
            "https:// when a password is set",
        ),
    ]
    for endpoints, kw, field, expected in cases:
        with pytest.raises(ConfigError) as err:
            EtcdStore(endpoints, **kw)
        assert err.value.field == field, (endpoints, kw, err.value)
        assert expected in err.value.expected, (endpoints, kw, err.value)
        assert PASSWORD not in str(err.value)
    # Accepted: a password in clear to loopback only; https without a CA file
    # (the system's trust store); a full TLS client.
    assert not EtcdStore([http], username=USER, password=PASSWORD).tls
    assert EtcdStore([https]).tls
    EtcdStore([https], ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)


# --------------------------------------------------------------------------
# overlayd configured for TLS and auth


def _password_file(directory: Path, text: str) -> Path:
    path = directory / "etcd-password"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.root
def test_overlayd_with_tls_and_auth_becomes_ready_and_pods_talk(
    overlay_topology: Any, overlay_daemons: Any, pki: Pki, tmp_path: Path
) -> None:
    from overlay.testing.traffic import ping

    server = _secure_server(tmp_path / "etcd", pki)  # this test's own: it writes the cluster
    try:
        tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert)}
        tls["key_file"] = str(pki.client_key)
        cl = overlay_daemons(store=server.endpoint)
        # node0: user and password (from a file); node1: its certificate's CN alone.
        node0 = {**tls, "username": USER, "password_file": str(_password_file(tmp_path, PASSWORD))}
        for d, store in zip(cl.daemons, (node0, tls), strict=True):
            config = d.config
            config["store"].update(store)
            d.write_config(config)
        try:
            cl.start()
            pods = [overlay_topology.add_netns("pa"), overlay_topology.add_netns("pb")]
            recs = [
                d.client.attach({"container_id": f"c{i}", "ifname": "eth0", "netns": ns.path,
                                 "vni": 100})
                for i, (d, ns) in enumerate(zip(cl.daemons, pods, strict=True))
            ]  # fmt: skip
            status = cl.daemons[0].client.status()
            assert status["ready"] and status["store"]["connected"]
            assert status["store"]["error"] == ""
            assert status["store"]["endpoints"] == [server.endpoint]
            assert ping(pods[0], recs[1]["ips"][0].split("/")[0], count=3).received == 3
            # Both nodes registered through etcd's auth, each as its own user.
            nodes = server.etcdctl(
                "get", "--prefix", "--keys-only", "/overlay/v1/nodes/", user=f"{USER}:{PASSWORD}"
            )
            assert set(nodes.split()) == {"/overlay/v1/nodes/node0", "/overlay/v1/nodes/node1"}
            assert PASSWORD not in cl.daemons[0].log()
        finally:
            cl.close()  # before etcd goes
    finally:
        server.stop()


@pytest.mark.root
def test_overlayd_says_why_etcd_refuses_it_and_keeps_trying(
    overlay_daemons: Any, secure_etcd: EtcdServer, pki: Pki, tmp_path: Path
) -> None:
    cl = overlay_daemons(n_nodes=1, store=secure_etcd.endpoint)
    d = cl.daemons[0]
    config = d.config
    config["store"].update(
        ca_file=str(pki.ca),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
        username=USER,
        password_file=str(_password_file(tmp_path, "not-the-password")),
    )
    d.write_config(config)
    d.start(wait=False)
    expected = f"refused user {USER!r}: wrong password or no such user"
    deadline = time.monotonic() + 20
    while True:
        assert d.proc is not None and d.proc.poll() is None, d.log()[-3000:]
        try:
            status = d.client.status()
        except Exception:  # the API is not up yet
            status = {}
        if expected in status.get("reason", ""):
            break
        assert time.monotonic() < deadline, (status, d.log()[-3000:])
        time.sleep(0.1)
    assert not status["ready"] and expected in status["store"]["error"]
    assert expected in d.client.health()["store_error"]
    log = d.log()
    assert f"ERROR overlay.control.etcd: etcd at {secure_etcd.endpoint} {expected}" in log
    assert "not-the-password" not in log
    assert d.proc.poll() is None  # still running, still retrying
