"""overlayd's TOML configuration: every error names the key, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlay.daemon.config import load, parse
from overlay.errors import ConfigError

GOOD = """
[node]
name = "node-a"
underlay = "198.18.0.1"
encap = "geneve"
workers = 2

[store]
kind = "memory"
ttl = 5

[[store.peers]]
name = "node-b"
underlay = "198.18.0.2"
networks = [100]

[api]
socket = "/run/overlay/test.sock"

[metrics]
address = "127.0.0.1:9470"

[log]
level = "debug"

[[networks]]
vni = 100
tenant = "blue"
cidr = "10.244.0.0/16"

[[networks]]
vni = 200
tenant = "red"
cidr = "10.245.0.0/16"
subnet_prefix = 26
"""


def test_a_full_configuration_is_read() -> None:
    c = parse(GOOD)
    assert c.node.name == "node-a" and c.node.encap == "geneve" and c.node.port == 6081
    assert c.node.workers == 2 and c.node.mtu == 1500
    assert c.store.kind == "memory" and c.store.ttl == 5.0
    assert c.store.peers[0].name == "node-b" and c.store.peers[0].networks == (100,)
    assert [(n.vni, n.tenant, n.subnet_prefix) for n in c.networks] == [
        (100, "blue", 24),
        (200, "red", 26),
    ]
    assert all(n.encap == "geneve" for n in c.networks)
    assert c.api_socket == "/run/overlay/test.sock" and c.log_level == "debug"


def test_defaults_for_a_minimal_file() -> None:
    c = parse('[node]\nname = "n"\nunderlay = "198.18.0.1"\n')
    assert c.node.encap == "vxlan" and c.node.port == 4789
    assert c.store.kind == "memory" and c.networks == ()
    assert c.metrics_address == "127.0.0.1:9469" and c.log_level == "info"


def edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize(
    "text,key,hint",
    [
        ("[node\nname=1", "file", "TOML"),
        (edit("[log]", "[logging]"), "logging", "no such key"),
        (edit('name = "node-a"', 'name = "bad name"'), "node.name", "A-Za-z0-9"),
        (edit('name = "node-a"\n', ""), "node.name", "required"),
        (edit('underlay = "198.18.0.1"', 'underlay = "198.18.0.300"'), "node.underlay", "address"),
        (
            edit('underlay = "198.18.0.1"', 'underlay = "198.18.0.1"\ninterface = "eth1"'),
            "node.underlay",
            "exactly one",
        ),
        (edit('encap = "geneve"', 'encap = "gre"'), "node.encap", "vxlan"),
        (edit("workers = 2", "workers = 64"), "node.workers", "1-16"),
        (edit("workers = 2", 'workers = "two"'), "node.workers", "1-16"),
        (edit("workers = 2", "mtu = 100"), "node.mtu", "576"),
        (edit('kind = "memory"', 'kind = "zookeeper"'), "store.kind", "etcd"),
        (edit('kind = "memory"', 'kind = "etcd"'), "store.endpoints", "etcd URL"),
        (edit("ttl = 5", "ttl = 0"), "store.ttl", "1-3600"),
        (edit("ttl = 5", "ttl = true"), "store.ttl", "1-3600"),
        (
            edit('underlay = "198.18.0.2"', 'underlay = "nowhere"'),
            "store.peers[0].underlay",
            "address",
        ),
        (
            edit("networks = [100]", 'networks = [100]\ncolour = "red"'),
            "store.peers[0].colour",
            "no such key",
        ),
        (
            edit('socket = "/run/overlay/test.sock"', 'socket = "relative.sock"'),
            "api.socket",
            "absolute",
        ),
        (
            edit('address = "127.0.0.1:9470"', 'address = "127.0.0.1"'),
            "metrics.address",
            "host:port",
        ),
        (edit('level = "debug"', 'level = "loud"'), "log.level", "info"),
        (edit("vni = 200", "vni = 100"), "networks[1].vni", "not used"),
        (edit("vni = 200", "vni = 99999999"), "networks[1].vni", "0-16777215"),
        (edit('tenant = "red"', 'tenant = ""'), "networks[1].tenant", "A-Za-z0-9"),
        (edit('cidr = "10.245.0.0/16"', 'cidr = "10.245.0.0/33"'), "networks[1].cidr", "network"),
        (edit("subnet_prefix = 26", "subnet_prefix = 8"), "networks[1].subnet_prefix", "16-30"),
    ],
)
def test_every_error_names_the_key_and_the_fix(text: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.field == key, info.value
    assert hint in str(info.value)


def test_an_unreadable_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load(str(tmp_path / "missing.toml"))
    p = tmp_path / "overlayd.toml"
    p.write_text(GOOD)
    assert load(str(p)).node.name == "node-a"


def test_the_example_configuration_is_valid() -> None:
    from pathlib import Path

    from overlay.daemon.config import load

    cfg = load(str(Path(__file__).parent.parent / "examples" / "overlayd.toml"))
    assert cfg.node.name == "node-a" and cfg.store.kind == "etcd"
    assert [n.vni for n in cfg.networks] == [100]
