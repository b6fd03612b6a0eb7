"""overlayd's TOML configuration: every error names the key, the value and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overlay.daemon.config import load, parse
from overlay.errors import ConfigError
from overlay.model import NodeSpec

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


def test_a_network_chooses_its_encapsulation() -> None:
    c = parse(GOOD.replace('cidr = "10.245.0.0/16"', 'cidr = "10.245.0.0/16"\nencap = "vxlan"'))
    assert [(n.vni, n.encap) for n in c.networks] == [(100, "geneve"), (200, "vxlan")]
    bad = GOOD.replace('cidr = "10.245.0.0/16"', 'cidr = "10.245.0.0/16"\nencap = "gre"')
    with pytest.raises(ConfigError) as err:
        parse(bad)
    assert "encap" in str(err.value) and "vxlan" in str(err.value)


def test_a_node_record_gives_each_encapsulations_port() -> None:
    both = NodeSpec("n", "198.18.0.1", port=4789, vxlan_port=4789, geneve_port=6081)
    assert (both.tunnel_port("vxlan"), both.tunnel_port("geneve")) == (4789, 6081)
    assert both.tunnel_port("") == 4789  # a network of each node's own encapsulation
    old = NodeSpec("n", "198.18.0.1", port=4790)  # a record with one port: for every network
    assert (old.tunnel_port("vxlan"), old.tunnel_port("geneve")) == (4790, 4790)


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


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("port", 0),
        ("port", 65536),
        ("mtu", 575),
        ("mtu", 65001),
        ("workers", 0),
        ("workers", 17),
    ],
)
def test_the_file_refuses_node_values_as_the_embedding_api_does(key: str, value: int) -> None:
    """One set of bounds (overlay.model) for the file and for Node: a value the file
    refuses, Node refuses, and the file says why in the words of overlay.model."""
    from overlay import model
    from overlay.node import Node

    def node_with(v: int) -> str:
        line = f"{key} = {v}" if key == "workers" else f"workers = 2\n{key} = {v}"
        return GOOD.replace("workers = 2", line)

    with pytest.raises(ConfigError) as in_file:
        parse(node_with(value))
    assert in_file.value.field == f"node.{key}"
    with pytest.raises(ConfigError) as in_api:
        Node("198.18.0.1", **{key: value})  # refused before anything is made
    assert in_api.value.field == key
    words = {
        "port": model.UDP_PORT_EXPECTED,
        "mtu": model.UNDERLAY_MTU_EXPECTED,
        "workers": model.WORKERS_EXPECTED,
    }[key]
    assert in_file.value.expected == words
    assert in_api.value.expected == words
    # The edges themselves are accepted by the file.
    edge = {"port": (1, 65535), "mtu": (576, 65000), "workers": (1, 16)}[key]
    for ok in edge:
        cfg = parse(node_with(ok))
        assert getattr(cfg.node, key) == ok


def test_an_unreadable_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load(str(tmp_path / "missing.toml"))
    p = tmp_path / "overlayd.toml"
    p.write_text(GOOD)
    assert load(str(p)).node.name == "node-a"


def test_the_example_configuration_is_valid() -> None:
    from pathlib import Path

    from overlay.daemon.config import load

    cfg = load(str(Path(__file__).resolve().parents[2] / "examples" / "overlayd.toml"))
    assert cfg.node.name == "node-a" and cfg.store.kind == "etcd"
    assert [n.vni for n in cfg.networks] == [100]


# --------------------------------------------------------------------------
# etcd over TLS, with users: [store] ca_file, cert_file, key_file, username,
# password / password_file. The files are real (made by make_pki).

SECRET = "hunter2-etcd"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("aetcd")
    from overlay.testing.etcd import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


def etcd_file(store: str, endpoints: str = '["https://127.0.0.1:2379"]') -> str:
    return (
        '[node]\nname = "n"\nunderlay = "198.18.0.1"\n\n'
        f'[store]\nkind = "etcd"\nendpoints = {endpoints}\n{store}\n'
    )


def secret_file(directory: Path, text: str = SECRET) -> Path:
    path = directory / "etcd-password"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_tls_and_auth_keys_are_read_and_the_password_never_shown(pki: Any, tmp_path: Path) -> None:
    c = parse(
        etcd_file(
            f'ca_file = "{pki.ca}"\ncert_file = "{pki.client_cert}"\n'
            f'key_file = "{pki.client_key}"\nusername = "node-a"\n'
            f'password_file = "{secret_file(tmp_path)}"'
        )
    )
    s = c.store
    assert (s.ca_file, s.cert_file, s.key_file) == tuple(
        str(p) for p in (pki.ca, pki.client_cert, pki.client_key)
    )
    assert s.username == "node-a" and s.password == SECRET  # the file's line, no newline
    assert SECRET not in repr(c) and SECRET not in repr(s.password)
    # A password in clear is fine to loopback (an etcd or gRPC proxy on this host).
    c = parse(etcd_file(f'username = "u"\npassword = "{SECRET}"', '["http://127.0.0.1:2379"]'))
    assert c.store.password == SECRET


def test_tls_and_auth_errors_name_the_key_and_never_the_password(pki: Any, tmp_path: Path) -> None:
    pw_file = secret_file(tmp_path)
    (tmp_path / "empty").mkdir()
    empty = secret_file(tmp_path / "empty", "")
    cases = [
        (f'cert_file = "{pki.client_cert}"', "store.key_file", "required"),
        (f'key_file = "{pki.client_key}"', "store.cert_file", "required"),
        (f'ca_file = "{tmp_path}/missing.pem"', "store.ca_file", "a readable file"),
        ('ca_file = "ca.pem"', "store.ca_file", "an absolute path"),
        (f'ca_file = "{pki.client_key}"', "store.ca_file", "PEM file of the CA"),
        (
            f'cert_file = "{pki.client_cert}"\nkey_file = "{pki.stranger_key}"',
            "store.key_file",
            "the private key of cert_file",
        ),
        ('username = "u"', "store.password", "required with username"),
        (f'password = "{SECRET}"', "store.username", "required with password"),
        (
            f'username = "u"\npassword = "{SECRET}"\npassword_file = "{pw_file}"',
            "store.password",
            "one of store.password or store.password_file",
        ),
        (f'username = "u"\npassword_file = "{tmp_path}/none"', "store.password_file", "readable"),
        (f'username = "u"\npassword_file = "{empty}"', "store.password_file", "holding"),
        ("username = 7", "store.username", "a string"),
        (f'etcd-cafile = "{pki.ca}"', "store.etcd-cafile", "store.ca_file"),
        ('user = "u"', "store.user", "store.username"),
    ]
    for store, key, hint in cases:
        with pytest.raises(ConfigError) as info:
            parse(etcd_file(store))
        assert info.value.field == key, (store, info.value)
        assert hint in str(info.value), (store, info.value)
        assert SECRET not in str(info.value)
    endpoint_cases = [
        (f'ca_file = "{pki.ca}"', '["http://127.0.0.1:2379"]', "store.ca_file", "https://"),
        (
            "",
            '["https://127.0.0.1:2379", "http://127.0.0.2:2379"]',
            "store.endpoints[1]",
            "a https",
        ),
        ("", '["ftp://127.0.0.1:2379"]', "store.endpoints[0]", "https://127.0.0.1:2379"),
        (
            f'username = "u"\npassword = "{SECRET}"',
            '["http://198.18.0.9:2379"]',
            "store.endpoints[0]",
            "https:// when a password is set",
        ),
        (
            f'username = "u"\npassword_file = "{pw_file}"',
            '["http://198.18.0.9:2379"]',
            "store.endpoints[0]",
            "cross the network in clear",
        ),
    ]
    for store, endpoints, key, hint in endpoint_cases:
        with pytest.raises(ConfigError) as info:
            parse(etcd_file(store, endpoints))
        assert info.value.field == key, (store, info.value)
        assert hint in str(info.value), (store, info.value)
        assert SECRET not in str(info.value)
    memory = f'[node]\nname = "n"\nunderlay = "198.18.0.1"\n[store]\npassword = "{SECRET}"\n'
    with pytest.raises(ConfigError) as info:
        parse(memory)
    assert info.value.field == "store.password" and "memory" in str(info.value)
    assert SECRET not in str(info.value)


def test_a_password_in_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "overlayd.toml"
    path.write_text(
        etcd_file(f'username = "u"\npassword = "{SECRET}"', '["http://127.0.0.1:2379"]')
    )
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.field == "store.password"
    assert f"chmod 600 {path}" in str(info.value) and "store.password_file" in str(info.value)
    assert SECRET not in str(info.value)
    path.chmod(0o600)
    assert load(str(path)).store.password == SECRET


def test_overlayd_check_refuses_bad_tls_settings_with_exit_2(
    pki: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from overlay.daemon.main import main

    path = tmp_path / "overlayd.toml"
    path.write_text(etcd_file(f'ca_file = "{pki.ca}"\ncert_file = "{pki.client_cert}"'))
    assert main(["--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "store.key_file" in err and "required" in err
    # Without --check too: refused before anything starts.
    assert main(["--config", str(path)]) == 2
    assert "store.key_file" in capsys.readouterr().err
    path.write_text(
        etcd_file(
            f'ca_file = "{pki.ca}"\ncert_file = "{pki.client_cert}"\nkey_file = "{pki.client_key}"'
        )
    )
    assert main(["--config", str(path), "--check"]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
