"""overlayd's local API under abuse: more connections than its cap, idle and slow
clients, malformed requests (fuzzed), attach fields outside the CNI rules, and
the privacy of its state files.

Two groups:

* the API server in this process (``ApiServer`` on a real Unix socket, with a
  small router), where the cap and the deadlines are made small so that their
  effect is seen at once; and the request parser fuzzed with hypothesis;
* a real ``overlayd`` process in a node namespace, flooded past its cap while
  health and a CNI ADD through the real ``overlay-cni`` go through; its API
  refusing bad requests and attach fields; its state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.cni import validate
from overlay.cni.spec import INVALID_ENV
from overlay.daemon import api
from overlay.daemon.api import MAX_BODY, MAX_CONNECTIONS, ApiServer, Router
from overlay.daemon.client import ApiError, Client
from overlay.daemon.state import MODE, Attachment, StateFile
from overlay.testing.daemon import DaemonCluster, cni
from overlay.testing.netns import Topology

# -- the server in this process ----------------------------------------------------


def _router() -> Router:
    r = Router()

    async def echo(query: dict[str, str], body: Any) -> Any:
        return {"query": query, "body": body}

    async def big(query: dict[str, str], body: Any) -> Any:
        return ["x" * 1000] * 8000  # ~8 MB: more than a socket buffer holds

    async def thing(query: dict[str, str], body: Any, cid: str) -> Any:
        return {"cid": cid}

    r.add("GET", "/v1/echo", echo)
    r.add("POST", "/v1/echo", echo)
    r.add("GET", "/v1/big", big)
    r.add("GET", "/v1/things/<cid>", thing)
    return r


@contextlib.asynccontextmanager
async def _server(router: Router | None = None) -> AsyncIterator[ApiServer]:
    d = tempfile.mkdtemp(prefix="ovapi-")
    server = ApiServer(router or _router(), os.path.join(d, "api.sock"))
    await server.start()
    try:
        yield server
    finally:
        await server.close()
        os.rmdir(d)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def _split(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _blocking_exchange(path: str, data: bytes) -> tuple[int, Any]:
    answer = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        # The server may answer (and close) before it has read everything: then
        # the rest cannot be sent, and after its answer the connection is reset.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
    return _split(answer)


async def _exchange(path: str, data: bytes) -> tuple[int, Any]:
    """Send ``data`` and half-close, as a client that has said everything; the answer
    (read as overlay's own client reads it, from a thread)."""
    return await asyncio.to_thread(_blocking_exchange, path, data)


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)


NESTED = b"[" * 5000 + b"]" * 5000


def _post(body: bytes, headers: bytes = b"") -> bytes:
    head = b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n" + headers
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize(
    "request_bytes,says",
    [
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", "Content-Length"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "Content-Length: '-1'"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", "Content-Length: '1e3'"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}", "Content-Length: '+2'"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n{}", "Content-Length"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: \r\n\r\n", "Content-Length"),
        (
            b"POST /v1/echo HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            "conflicting Content-Length",
        ),
        (
            b"POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "Transfer-Encoding",
        ),
        (_post(b"{not json"), "JSON"),
        (_post(NESTED), "nested at most 64 levels"),
        (_post(b'{"a": "\xff\xfe"}'), "UTF-8"),
        (_post(b"\xff\xfe{\x00}\x00"), "UTF-8"),
        (_post(b"{}" + b"x" * 10)[:-5], "ended after"),  # promised more than it sent
        (b"GET /v1/echo\r\n\r\n", "request line"),
        (b"GET  /v1/echo HTTP/1.1\r\n\r\n", "request line"),
        (b"GET /v1/echo HTTP/2.0\r\n\r\n", "HTTP/2.0"),
        (b"G(T /v1/echo HTTP/1.1\r\n\r\n", "method"),
        (b"GET v1/echo HTTP/1.1\r\n\r\n", "target"),
        (b"GET /v1/\xe9cho HTTP/1.1\r\n\r\n", "target"),
        (b"GET /v1/echo\n HTTP/1.1\r\n\r\n", "bare CR or LF"),
        (b"GET /v1/echo HTTP/1.1\r\nHost x\r\n\r\n", "header line"),
        (b"GET /v1/echo HTTP/1.1\r\nHo st: x\r\n\r\n", "header line"),
        (b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", "folded"),
        (b"GET /v1/echo HTTP/1.1\r\nHost: a\x00b\r\n\r\n", "control character"),
        (b"GET /v1/echo?a=%ff HTTP/1.1\r\n\r\n", "query"),
        (b"GET /v1/things/%ff%fe HTTP/1.1\r\n\r\n", "percent-encoded UTF-8"),
        (b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n", "ended before its head"),
    ],
)
def test_every_malformed_request_gets_a_400_naming_what_is_wrong(
    request_bytes: bytes, says: str
) -> None:
    async def go() -> None:
        async with _server() as server:
            status, body = await _exchange(server.path, request_bytes)
            assert status == 400, body
            err = body["error"]
            assert err["kind"] == "config" and says in err["message"] + str(err.get("field")), err
            assert (await _exchange(server.path, b"GET /v1/echo HTTP/1.1\r\n\r\n"))[0] == 200

    _run(go)


def test_heads_and_bodies_over_their_limits_are_413_and_in_limit_ones_are_served() -> None:
    async def go() -> None:
        async with _server() as server:
            length = b"%d" % (MAX_BODY + 1)
            for value in (length, b"0" * 5000 + length, b"9" * 5000):
                head = b"POST /v1/echo HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n"
                status, body = await _exchange(server.path, head)
                assert status == 413 and "1 MiB" in body["error"]["message"], value[:20]
            # Leading zeros and a repeated, agreeing length are still one length.
            status, body = await _exchange(
                server.path,
                b"POST /v1/echo HTTP/1.1\r\nContent-Length: 0002\r\nContent-Length: 2\r\n\r\n{}",
            )
            assert status == 200 and body["body"] == {}
            deep = b"[" * validate.MAX_JSON_DEPTH + b"]" * validate.MAX_JSON_DEPTH
            status, body = await _exchange(server.path, _post(deep))
            assert status == 200

    _run(go)


def _well_formed(draw: Any) -> bytes:
    """A request assembled from plausible and implausible parts."""
    method = draw(st.sampled_from([b"GET", b"POST", b"DELETE", b"get", b"PUT", b"", b"G T"]))
    target = draw(
        st.sampled_from([b"/v1/echo", b"/v1/things/a%2Fb", b"/v1/echo?x=1&x=2", b"*", b"/"])
        | st.binary(max_size=20)
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9", b""]))
    body = draw(
        st.sampled_from([b"", b"{}", b'{"a": [1, 2]}', NESTED[:200] + NESTED[-200:], b"\xff"])
        | st.binary(max_size=40)
    )
    headers = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [b"Content-Length", b"content-length", b"Transfer-Encoding", b"Host", b"X"]
                )
                | st.binary(max_size=8),
                st.sampled_from([b"%d" % len(body), b"-1", b"1e3", b"\xb2", b" 7 ", b"chunked"])
                | st.integers(0, 2**80).map(lambda n: b"%d" % n)
                | st.binary(max_size=12),
            ),
            max_size=4,
        )
    )
    lines = [b" ".join(x for x in (method, target, version) if x is not None)]
    lines += [name + b": " + value for name, value in headers]
    sep = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    data = sep.join(lines) + b"\r\n\r\n" + body
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


async def _respond(data: bytes) -> tuple[int, Any] | None:
    server = ApiServer(_router(), "/nonexistent/unused.sock")
    reader = asyncio.StreamReader(limit=api.MAX_HEADER - 4)
    reader.feed_data(data)
    reader.feed_eof()
    return await server.respond(reader)


def _check_answer(data: bytes, answer: tuple[int, Any] | None) -> None:
    if answer is None:  # only a client that sent nothing gets no answer
        assert data == b""
        return
    status, body = answer
    assert status in api._STATUS_TEXT and status != 500, answer
    json.dumps(body)  # every answer is JSON
    if status >= 400:
        err = body["error"]
        assert err["kind"] in ("config", "not_found") and err["message"], answer


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400) | st.composite(_well_formed)())
def test_the_request_parser_answers_every_input(data: bytes) -> None:
    _check_answer(data, asyncio.run(_respond(data)))


# Deadlines and the cap: made small here (module constants, read at each use).


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "HEAD_TIMEOUT_S", 0.3)
    monkeypatch.setattr(api, "BODY_TIMEOUT_S", 0.3)
    monkeypatch.setattr(api, "REQUEST_TIMEOUT_S", 0.5)
    monkeypatch.setattr(api, "WRITE_TIMEOUT_S", 0.3)


@pytest.mark.usefixtures("short_deadlines")
@pytest.mark.parametrize(
    "sent,says",
    [
        (b"", "no whole request head"),
        (b"GET /v1/echo HTTP/1.1\r\nHost:", "no whole request head"),
        (b"POST /v1/echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789", "did not arrive"),
    ],
    ids=["idle", "slow-head", "slow-body"],
)
def test_idle_and_slow_clients_get_408_and_are_closed(sent: bytes, says: str) -> None:
    async def go() -> None:
        async with _server() as server:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(sent)  # and then nothing more, the connection left open
            status, body = _split(await reader.read())  # read() returns at the close
            assert status == 408 and says in body["error"]["message"], body
            assert body["error"]["kind"] == "unavailable"
            await _until(lambda: server.connections == 0)
            writer.close()

    _run(go)


@pytest.mark.usefixtures("short_deadlines")
def test_a_trickled_body_is_cut_at_the_whole_request_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The body's own deadline is far away (past the test's 60 s bound): only the
    # whole request's deadline can end this one.
    monkeypatch.setattr(api, "BODY_TIMEOUT_S", 120.0)

    async def go() -> None:
        async with _server() as server:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"POST /v1/echo HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
            answer = b""
            for _ in range(1000):  # a byte at a time, until the daemon answers
                writer.write(b" ")
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(1 << 16), 0.05)
                    break
            answer += await reader.read()
            status, body = _split(answer)
            assert status == 408 and "did not arrive" in body["error"]["message"], body
            writer.close()

    _run(go)


@pytest.mark.usefixtures("short_deadlines")
def test_a_client_that_does_not_take_its_answer_is_cut() -> None:
    async def go() -> None:
        async with _server() as server:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"GET /v1/big HTTP/1.1\r\n\r\n")
            await _until(lambda: server.connections == 1)
            await _until(lambda: server.connections == 0)  # not read: aborted
            got = b""
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(1 << 16):
                    got += chunk
            assert len(got) < 8_000_000  # the answer was cut short
            writer.close()

    _run(go)


def test_at_the_cap_the_connection_waiting_longest_makes_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "MAX_CONNECTIONS", 4)

    async def go() -> None:
        async with _server() as server:
            # The oldest: a slow body; then idle ones, up to the cap.
            slow_r, slow_w = await asyncio.open_unix_connection(server.path)
            slow_w.write(b"POST /v1/echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
            await _until(lambda: server.connections == 1)
            idle = []
            for n in range(3):
                idle.append(await asyncio.open_unix_connection(server.path))
                await _until(lambda n=n: server.connections == n + 2)
            # A newcomer is served; the slow one, waiting longest, was closed for it.
            assert (await _exchange(server.path, b"GET /v1/echo HTTP/1.1\r\n\r\n"))[0] == 200
            status, body = _split(await slow_r.read())
            assert status == 408 and "limit of 4 connections" in body["error"]["message"]
            assert server.evictions == 1 and server.connections == 3
            # At the cap again, the next newcomer evicts the oldest idle one.
            idle.append(await asyncio.open_unix_connection(server.path))
            await _until(lambda: server.connections == 4)
            assert (await _exchange(server.path, b"GET /v1/echo HTTP/1.1\r\n\r\n"))[0] == 200
            assert _split(await idle[0][0].read())[0] == 408
            assert server.evictions == 2 and server.connections == 3
            assert not any(r.at_eof() for r, _w in idle[1:])
            for _r, w in [(slow_r, slow_w), *idle]:
                w.close()

    _run(go)


def test_when_every_connection_is_being_handled_a_newcomer_gets_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "MAX_CONNECTIONS", 2)
    release = asyncio.Event()
    router = _router()

    async def slow(query: dict[str, str], body: Any) -> Any:
        await release.wait()
        return {"done": True}

    router.add("GET", "/v1/slow", slow)

    async def go() -> None:
        async with _server(router) as server:
            busy = [
                asyncio.create_task(_exchange(server.path, b"GET /v1/slow HTTP/1.1\r\n\r\n"))
                for _ in range(2)
            ]
            await _until(lambda: server.connections == 2 and server.evictions == 0)
            status, body = await _exchange(server.path, b"GET /v1/echo HTTP/1.1\r\n\r\n")
            assert status == 503 and "try again" in body["error"]["message"]
            assert server.refusals == 1
            release.set()
            assert [(await t)[0] for t in busy] == [200, 200]

    _run(go)


def test_overlayd_raises_its_soft_descriptor_limit_to_the_hard_one() -> None:
    # As systemd starts a service: soft 1024 (here 256) under a higher hard limit.
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))\n"
        "from overlay.daemon.main import raise_nofile_limit\n"
        "print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["(1024,", "1024)", "(1024,", "1024)"], done


# -- the state directory -------------------------------------------------------------


def _attachment(cid: str) -> Attachment:
    return Attachment(cid, "eth0", "/var/run/netns/p", 100, "blue", "02:00:00:00:00:01",
                      ["10.244.1.2/24"], 1450, labels={"app": "web"})  # fmt: skip


def test_state_files_are_private_in_an_open_directory_whatever_the_umask(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)  # as systemd's StateDirectory= makes it
    old = os.umask(0)
    try:
        StateFile(str(state_dir)).save([_attachment("c1")])
    finally:
        os.umask(old)
    path = state_dir / "attachments.json"
    assert stat.S_IMODE(path.stat().st_mode) == MODE == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o755  # the directory is not ours
    assert [a.container_id for a in StateFile(str(state_dir)).load()] == ["c1"]
    # A file an older release left world-readable (and a damaged copy kept aside)
    # is tightened by secure(), which the daemon runs at start.
    path.chmod(0o644)
    (state_dir / "attachments.json.bad").write_text("{")
    (state_dir / "attachments.json.bad").chmod(0o644)
    (state_dir / "other-file").write_text("not ours")
    (state_dir / "other-file").chmod(0o644)
    StateFile(str(state_dir)).secure()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state_dir.iterdir()}
    assert modes == {"attachments.json": 0o600, "attachments.json.bad": 0o600, "other-file": 0o644}


# -- a real overlayd -------------------------------------------------------------------

BLUE = {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"}


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _connect(path: str) -> socket.socket | None:
    """A connection to ``path``, waiting while its listen queue is full (a daemon
    that stopped accepting gives None after a while)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    for _ in range(2000):
        try:
            s.connect(path)
            return s
        except BlockingIOError:  # the listen queue is full: the daemon is behind
            time.sleep(0.005)
        except OSError:
            break
    s.close()
    return None


@pytest.fixture
def daemon(overlay_daemons: Callable[..., DaemonCluster]) -> Iterator[DaemonCluster]:
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE])
    cluster.start()
    yield cluster


@pytest.mark.root
def test_more_connections_than_the_cap_leave_health_and_cni_add_working(
    daemon: DaemonCluster, overlay_topology: Topology
) -> None:
    d = daemon.daemons[0]
    assert d.proc is not None
    pid = d.proc.pid
    # A descriptor limit like systemd's default soft one, with room for the
    # daemon's own descriptors and the cap, but not for every socket opened below.
    limit = _fds(pid) + MAX_CONNECTIONS + 200
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    sockets: list[socket.socket] = []
    try:
        slow = []
        for _ in range(20):  # promise 100 body bytes, send 10
            s = _connect(d.socket)
            assert s is not None
            s.sendall(b"POST /v1/endpoints HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
            slow.append(s)
        sockets += slow
        for _ in range(limit + 100):  # idle, more than the daemon has descriptors for
            s = _connect(d.socket)
            if s is None:
                break
            sockets.append(s)
        assert len(sockets) > MAX_CONNECTIONS
        # Health and a pod's ADD are served meanwhile.
        client = Client(d.socket, timeout=10)
        assert client.health()["ready"]
        pod = overlay_topology.add_netns("flood")
        conf = {"cniVersion": "1.1.0", "name": "blue", "type": "overlay-cni", "vni": 100,
                "socket": d.socket}  # fmt: skip
        out = cni("ADD", conf, cid="flood1", netns=pod.path).success()
        assert out["interfaces"][0]["sandbox"] == pod.path and "eth0" in pod.links()
        # The slow sockets (the oldest) were closed, with a 408 saying why.
        for s in slow:
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    answer += chunk
            status, body = _split(answer)
            assert status == 408 and "limit" in body["error"]["message"], body
        assert _fds(pid) < limit
    finally:
        for s in sockets:
            s.close()
    assert client.status()["attachments"] == 1
    assert "Traceback" not in d.log() and "Too many open files" not in d.log()


@pytest.mark.root
def test_a_running_overlayd_answers_malformed_requests_with_400(daemon: DaemonCluster) -> None:
    d = daemon.daemons[0]
    cases = [
        b"POST /v1/endpoints HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
        b"POST /v1/endpoints HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/endpoints HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        b"POST /v1/endpoints HTTP/1.1\r\nContent-Length: 10000\r\n\r\n" + NESTED,
    ]
    for data in cases:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(d.socket)
            s.sendall(data)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        status, body = _split(answer)
        assert status == 400 and body["error"]["kind"] == "config", (data[:60], body)
    assert d.client.status()["ready"] and "Traceback" not in d.log()


@pytest.mark.root
def test_attach_fields_follow_the_cni_rules_and_a_refusal_changes_nothing(
    daemon: DaemonCluster, overlay_topology: Topology, tmp_path: Path
) -> None:
    d = daemon.daemons[0]
    pod = overlay_topology.add_netns("rules")
    base = {"container_id": "c1", "ifname": "eth0", "netns": pod.path, "vni": 100}
    regular = tmp_path / "regular"
    regular.write_text("")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"container_id": "abc\n"}, "container_id"),
        ({"container_id": "a" * 10_000}, "container_id"),
        ({"container_id": "a" * 256}, "container_id"),
        ({"container_id": ""}, "container_id"),
        ({"ifname": ".."}, "ifname"),
        ({"ifname": "."}, "ifname"),
        ({"ifname": "eth0\n"}, "ifname"),
        ({"ifname": "é" * 8}, "ifname"),  # 16 bytes
        ({"ifname": "eth 0"}, "ifname"),
        ({"ifname": ""}, "ifname"),
        ({"name": "n" * 200_000}, "name"),
        ({"labels": {"k": "v" * 2000}}, "labels"),
        ({"labels": {f"k{i}": "v" for i in range(100)}}, "labels"),
        ({"netns": "/proc/self/ns/net"}, "netns"),  # overlayd's own namespace
        ({"netns": f"/proc/{d.proc.pid}/ns/net" if d.proc else ""}, "netns"),
        ({"netns": daemon.node_ns[0].path}, "netns"),  # the node's underlay namespace
        ({"netns": str(regular)}, "netns"),
        ({"netns": str(tmp_path)}, "netns"),
        ({"netns": "relative/path"}, "netns"),
        ({"netns": "/nonexistent/ns"}, "netns"),
    ]
    for change, field in cases:
        with pytest.raises(ApiError) as err:
            d.client.attach({**base, **change})
        e = err.value
        assert e.status == 400 and e.field == field, (change, e.message)
        assert len(e.message) < 1000  # a long value is named, not echoed whole
    assert d.client.attachments() == [] and pod.links() == ["lo"]
    # Within the rules: a 255-character ID, an interface name with '-' and '.'.
    got = d.client.attach({**base, "container_id": "a" * 255, "ifname": "pod-eth0.1"})
    assert got["container_id"] == "a" * 255 and "pod-eth0.1" in pod.links()


@pytest.mark.root
def test_the_node_namespace_through_the_plugin_is_code_4_naming_cni_netns(
    daemon: DaemonCluster,
) -> None:
    d = daemon.daemons[0]
    conf = {"cniVersion": "1.1.0", "name": "blue", "type": "overlay-cni", "vni": 100,
            "socket": d.socket}  # fmt: skip
    # Only the daemon knows the node's underlay namespace: its refusal is still
    # the runtime's variable at fault.
    msg = cni("ADD", conf, cid="c1", netns=daemon.node_ns[0].path).error(INVALID_ENV)
    assert "CNI_NETNS" in msg and "underlay" in msg
    assert d.client.attachments() == []


@pytest.mark.root
def test_state_files_of_a_running_overlayd_are_private(
    overlay_daemons: Callable[..., DaemonCluster], overlay_topology: Topology
) -> None:
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE])
    state_dir = Path(cluster.config(0)["node"]["state_dir"])
    state_dir.mkdir(parents=True, mode=0o755)
    os.chmod(state_dir, 0o755)
    path = state_dir / "attachments.json"
    path.write_text(json.dumps({"format": 1, "attachments": []}))
    path.chmod(0o644)  # as an older release wrote it
    old = os.umask(0o022)
    try:
        cluster.start()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pod = overlay_topology.add_netns("private")
    cluster.daemons[0].client.attach(
        {"container_id": "c1", "ifname": "eth0", "netns": pod.path, "vni": 100}
    )
    assert json.loads(path.read_text())["attachments"][0]["container_id"] == "c1"
    assert {stat.S_IMODE(p.stat().st_mode) for p in state_dir.iterdir()} == {0o600}
