"""The ``overlay`` CLI against a real overlayd: tables, --json, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from overlay.testing.netns import Topology
from overlay.testing.traffic import ping

pytestmark = [pytest.mark.root]


def overlay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlay.cli", *args], capture_output=True, text=True, check=False
    )


def test_every_subcommand_as_table_and_json(
    overlay_topology: Topology, overlay_daemons: Any
) -> None:
    cl = overlay_daemons(extra={"metrics": {"address": "127.0.0.1:0"}})
    cl.start()
    pa, pb = overlay_topology.add_netns("pa"), overlay_topology.add_netns("pb")
    c0, c1 = cl.daemons[0].client, cl.daemons[1].client
    a = c0.attach({"container_id": "ca", "ifname": "eth0", "netns": pa.path, "vni": 100})
    b = c1.attach({"container_id": "cb", "ifname": "eth0", "netns": pb.path, "vni": 100})
    assert ping(pa, b["ips"][0].split("/")[0], count=2).received == 2
    sock = ["--socket", cl.daemons[0].socket]
    deadline = time.monotonic() + 10
    while not all(p["reachable"] for p in c0.peers()):
        assert time.monotonic() < deadline, "peer never reachable"
        time.sleep(0.1)

    out = overlay(*sock, "status")
    assert out.returncode == 0, out.stderr
    assert "node0" in out.stdout and "ready       yes" in out.stdout
    assert "1 reachable" in out.stdout

    out = overlay(*sock, "networks")
    assert out.stdout.splitlines()[0].split()[:3] == ["VNI", "TENANT", "CIDR"]
    assert "blue" in out.stdout and "198.18.0.2" in out.stdout

    out = overlay(*sock, "endpoints", "--vni", "100")
    assert a["mac"] in out.stdout and "ca" in out.stdout

    out = overlay(*sock, "peers")
    row = [ln for ln in out.stdout.splitlines() if ln.startswith("node1")]
    assert row and "198.18.0.2" in row[0] and "yes" in row[0]

    out = overlay(*sock, "fdb")
    assert a["mac"] in out.stdout and "local" in out.stdout

    out = overlay(*sock, "counters")
    assert "tap_rx_frames" in out.stdout and "drops:" in out.stdout

    out = overlay(*sock, "health")
    assert out.stdout.startswith("ready: yes") and "node1" in out.stdout

    for cmd in ("status", "networks", "endpoints", "peers", "fdb", "counters", "health"):
        out = overlay(*sock, "--json", cmd)
        assert out.returncode == 0, (cmd, out.stderr)
        json.loads(out.stdout)
    data = json.loads(overlay(*sock, "--json", "peers").stdout)
    assert data[0]["name"] == "node1" and data[0]["reachable"] is True

    # reload, through the client's reload(): the file unchanged, nothing changes.
    out = overlay(*sock, "reload")
    assert out.returncode == 0, out.stderr
    assert "networks_added: -" in out.stdout and "peers_removed: -" in out.stdout
    assert json.loads(overlay(*sock, "--json", "reload").stdout)["networks_changed"] == []
    assert c0.status()["reloads"] == 2 and c0.reload()["networks_removed"] == []

    # The daemon's metrics: drops by reason, per-network traffic, peers, store state.
    status = c0.status()
    assert status["ready"]
    log = cl.daemons[0].log()
    addr = _metrics_address(log)
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'overlay_peer_up{peer="node1",underlay="198.18.0.2"} 1.0' in text
    assert 'overlay_store_connected{kind="memory"} 1.0' in text
    assert "overlay_drops_total{" in text and "overlay_network_packets_total{" in text
    assert 'overlay_endpoints{location="local",vni="100"} 1.0' in text
    assert "overlay_reconcile_seconds_bucket" in text


def _metrics_address(log: str) -> str:
    for line in log.splitlines():
        if "metrics on http://" in line:
            return line.split("metrics on http://", 1)[1].split("/", 1)[0]
    raise AssertionError(f"no metrics address in the log:\n{log[-2000:]}")


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    out = overlay("--socket", str(tmp_path / "none.sock"), "status")
    assert out.returncode == 1
    assert "overlayd is not running" in out.stderr and "--socket" in out.stderr
    stale = tmp_path / "stale.sock"
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    out = overlay("--socket", str(stale), "peers")
    assert out.returncode == 1 and "refuses connections" in out.stderr


def test_bad_arguments_exit_2() -> None:
    out = overlay("endpoints", "--vni", "blue")
    assert out.returncode == 2 and "--vni" in out.stderr
    out = overlay("frobnicate")
    assert out.returncode == 2


def test_pip_install_gives_the_three_commands() -> None:
    """The console scripts an install makes (in CI: the .venv's bin)."""
    import os
    import shutil

    bindir = os.path.dirname(sys.executable)
    found = {c: shutil.which(c, path=bindir) for c in ("overlay", "overlayd", "overlay-cni")}
    if not all(found.values()):
        pytest.skip(f"overlay is not installed next to {sys.executable} (a source tree run)")
    example = Path(__file__).resolve().parents[2] / "examples" / "overlayd.toml"
    done = subprocess.run(
        [str(found["overlayd"]), "--config", str(example), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "ok" in done.stdout
    done = subprocess.run(
        [str(found["overlay-cni"])],
        input="",
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0 and "1.1.0" in json.loads(done.stdout)["supportedVersions"]
    done = subprocess.run([str(found["overlay"]), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "status" in done.stdout


@pytest.mark.parametrize(
    "answer, says",
    [
        (b"", "no HTTP answer"),
        (b"garbage\r\n\r\n{}", "no HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", "cut its answer short"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!", "non-JSON"),
    ],
)
def test_a_broken_answer_on_the_socket_is_a_clear_error(
    tmp_path: Path, answer: bytes, says: str
) -> None:
    """Something that is not overlayd (or a daemon dying mid-answer) on the socket."""
    import socket
    import threading

    from overlay.daemon.client import Client, DaemonUnavailable

    path = str(tmp_path / "odd.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(answer)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        with pytest.raises(DaemonUnavailable, match=says):
            Client(path, timeout=5).status()
    finally:
        t.join(5)
        srv.close()
