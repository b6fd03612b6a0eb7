"""overlayd's ``[bgp]``: the daemon runs BIRD in its node's namespace, announces the
node's subnet of a routed network to a real BIRD 2 router, shows the session
in ``overlay status`` and the metrics, and takes BIRD down with it.

The bed: node namespace n1 (underlay 198.18.1.1/24) and a router namespace r
(198.18.1.254, AS 65000) on one link; overlayd on n1 (AS 65001) with routed
network 100 (10.244.0.0/16, /24 per node).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from overlay.daemon.config import parse
from overlay.errors import ConfigError
from overlay.testing.bird import BirdRouter
from overlay.testing.daemon import Overlayd, to_toml
from overlay.testing.netns import Topology
from overlay.testing.traffic import wait_for

ROUTER = "198.18.1.254"


def _config(tmp_path: Path, netns: str, metrics: str) -> dict:
    return {
        "node": {
            "name": "node1",
            "underlay": "198.18.1.1",
            "netns": netns,
            "state_dir": str(tmp_path / "s"),
        },
        "store": {"kind": "memory", "ttl": 3},
        "api": {"socket": str(tmp_path / "overlayd.sock")},
        "metrics": {"address": metrics},
        "log": {"level": "debug"},
        "health": {"enabled": False},
        "bgp": {"asn": 65001, "peers": [{"address": ROUTER, "asn": 65000}]},
        "networks": [{"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16", "mode": "routed"}],
    }


def test_the_bgp_section_is_checked_by_name(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "", "")
    assert parse(to_toml(cfg)).bgp is not None
    for bgp, field in (
        ({"asn": "65001", "peers": [{"address": ROUTER, "asn": 65000}]}, "bgp.asn"),
        ({"asn": 65001}, "bgp.peers"),
        ({"asn": 65001, "peers": []}, "bgp.peers"),
        ({"asn": 65001, "peers": [{"address": "router", "asn": 65000}]}, "bgp.peers[0].address"),
        ({"asn": 65001, "peers": [{"address": ROUTER, "asn": 0}]}, "bgp.peers[0].asn"),
        ({"asn": 65001, "peers": [{"address": ROUTER}]}, "bgp.peers[0].asn"),
        (
            {"asn": 65001, "router_id": "::1", "peers": [{"address": ROUTER, "asn": 1}]},
            "bgp.router_id",
        ),
    ):
        bad = dict(cfg, bgp=bgp)
        with pytest.raises(ConfigError) as err:
            parse(to_toml(bad))
        assert err.value.field == field


@pytest.mark.root
def test_overlayd_announces_its_subnet_shows_the_session_and_stops_bird_with_it(
    overlay_topology: Topology, tmp_path: Path
) -> None:
    t = overlay_topology
    n1, r = t.add_netns("n1"), t.add_netns("r")
    t.veth(n1, r, "198.18.1.1/24", f"{ROUTER}/24", name_a="ul0", name_b="ul1")
    router = BirdRouter(
        r, tmp_path / "r", asn=65000, router_id=ROUTER, neighbors=[("198.18.1.1", 65001)]
    )
    d = Overlayd(tmp_path / "n1", _config(tmp_path / "n1", n1.path, "127.0.0.1:0"))
    with router:
        d.start()
        try:
            assert wait_for(lambda: router.established("198.18.1.1"), 30)
            subnet = d.client.networks()[0]["subnet"]
            # The node's subnet of the routed network, announced and learned by the router.
            assert wait_for(lambda: router.learned().get(subnet) == "198.18.1.1", 30)

            def bgp() -> dict:
                return d.client.status()["bgp"]

            assert wait_for(lambda: bgp()["peers"][0]["up"], 30)
            b = bgp()
            assert b["asn"] == 65001 and b["router_id"] == "198.18.1.1" and b["running"]
            assert b["announced"] == [subnet] and b["error"] is None
            (p,) = b["peers"]
            assert p["address"] == ROUTER and p["state"] == "Established"
            assert p["routes_announced"] == 1
            # The CLI's status, and the metrics.
            text = subprocess.run(
                [sys.executable, "-m", "overlay.cli", "--socket", d.socket, "status"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            assert f"announcing {subnet}" in text
            assert f"router    {ROUTER} as 65000: Established" in text
            host, port = _metrics_address(d)
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
            assert f'overlay_bgp_session_up{{peer="{ROUTER}"}} 1.0' in metrics
            assert f'overlay_bgp_routes{{direction="announced",peer="{ROUTER}"}} 1.0' in metrics
            pid = b["pid"]
        finally:
            d.stop()
        # BIRD went with overlayd: the router lost the session and the subnet.
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
        assert wait_for(lambda: not router.established("198.18.1.1"), 30)
        assert subnet not in router.learned()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _metrics_address(d: Overlayd) -> tuple[str, int]:
    for line in d.log().splitlines():
        if "metrics on http://" in line:
            hostport = line.split("http://", 1)[1].split("/", 1)[0]
            host, _, port = hostport.rpartition(":")
            return host, int(port)
    raise AssertionError("overlayd logged no metrics address:\n" + d.log()[-2000:])
