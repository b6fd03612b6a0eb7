"""The control plane's plain data against drift: one ``VNI_MAX`` that every layer
imports and that agrees with the data plane's, and no retired record kind
that anything still reads."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import pathlib
from typing import Any

import pytest

import overlay
from overlay import model, wire
from overlay.cni import plugin
from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.store import MemoryStore
from overlay.daemon import config, health
from overlay.errors import ConfigError
from overlay.model import Endpoint, NetworkSpec, NodeSpec, TooLarge, from_json, to_json
from overlay.testing.aio import run, until
from overlay.testing.fakes import RecordingNode

PACKAGE = pathlib.Path(overlay.__file__).parent


def test_vni_max_agrees_with_the_data_plane_and_the_wire_format() -> None:
    from overlay.bindings import VNI_MAX as DATA_PLANE  # OVL_VNI_MAX, read from overlay.h

    assert model.VNI_MAX == DATA_PLANE == wire.VNI_MAX == 2**24 - 1


def test_vni_max_is_written_once_and_imported_everywhere_else() -> None:
    """The literal 0xFFFFFF appears in model.py alone; every other layer,
    wire.py included, takes model's (pinned to overlay.h just above)."""
    written = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value == 0xFFFFFF
    )
    assert written == ["model.py"]
    for module in (plugin, health, config):
        assert module.VNI_MAX is model.VNI_MAX, module.__name__
    assert health.HEALTH_VNI == model.VNI_MAX


def test_the_retired_tenant_record_is_gone_and_old_stores_are_read_harmlessly(
    loop_kind: str,
) -> None:
    """A store written when tenants had records of their own still works: the
    record is neither read nor refused, and everything else is programmed."""
    assert not hasattr(model, "Tenant") and not hasattr(keys, "TENANTS")
    assert keys.kind(b"/overlay/v1/tenants/blue") == b"/overlay/v1/tenants/"

    async def main() -> None:
        store = MemoryStore()
        await store.put(b"/overlay/v1/tenants/blue", b'{"name": "blue"}')
        await store.put(b"/overlay/v1/tenants/bad", b"{not json")
        await store.put(keys.network(100), to_json(NetworkSpec(vni=100, tenant="blue")))
        b = NodeSpec(name="b", underlay="198.18.0.2", networks=(100,))
        await store.put(keys.node("b"), to_json(b))
        ep = Endpoint(vni=100, mac="02:00:00:00:00:02", ips=("10.244.2.2/16",), node="b")
        await store.put(keys.endpoint(100, "b", ep.mac), to_json(ep))
        node = RecordingNode("198.18.0.1")
        agent = Agent(node, store, "a", networks=(100,), ttl=5)
        # Fed to the claims directly too (as a watch of a wider prefix would).
        kvs, _ = await store.get_prefix(keys.PREFIX)
        agent.claims.load(keys.PREFIX + b"tenants/", [kv for kv in kvs if b"tenants" in kv.key])
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: ep.mac in node.networks.get(100, _NoNet).remotes, 10)
            assert agent.rejections() == []
        finally:
            await agent.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    run(loop_kind, main)


class _NoNet:
    remotes: dict[str, object] = {}


# -- an endpoint's named container ports ------------------------------------------

MAC = "02:00:00:00:00:02"


def test_named_ports_round_trip_normalised() -> None:
    ep = Endpoint(
        vni=100,
        mac=MAC,
        ips=("10.244.2.2/16",),
        node="b",
        ports={"http": [8080, "tcp"], "dns": (53, "UDP"), "a-1": (1, "sctp")},  # type: ignore[dict-item]
    )
    assert ep.ports == {"http": (8080, "TCP"), "dns": (53, "UDP"), "a-1": (1, "SCTP")}
    data = to_json(ep)
    assert json.loads(data)["ports"] == {
        "http": [8080, "TCP"],
        "dns": [53, "UDP"],
        "a-1": [1, "SCTP"],
    }
    back = from_json(Endpoint, data)
    assert back == ep and back.ports["http"] == (8080, "TCP")
    assert to_json(back) == data


def test_a_record_without_named_ports_is_the_previous_releases_byte_for_byte() -> None:
    """Agents of the release before ``ports`` refuse unknown fields: the record of
    a pod without named ports leaves the field out, exactly as they wrote it."""
    ep = Endpoint(
        vni=100, mac=MAC, ips=("10.244.2.2/16",), node="b", name="x/b", labels={"pod": "b"}
    )
    assert to_json(ep) == (
        b'{"ips":["10.244.2.2/16"],"labels":{"pod":"b"},"mac":"02:00:00:00:00:02",'
        b'"name":"x/b","node":"b","vni":100}'
    )

    # The previous release's decoder: the same class without the field.
    @dataclasses.dataclass(frozen=True)
    class Previous:
        vni: int
        mac: str
        ips: tuple[str, ...]
        node: str
        name: str = ""
        labels: dict[str, str] = dataclasses.field(default_factory=dict)

    assert from_json(Previous, to_json(ep)).labels == {"pod": "b"}
    with pytest.raises(ConfigError, match="only fields"):
        from_json(Previous, to_json(dataclasses.replace(ep, ports={"http": (80, "TCP")})))
    # And this release reads the previous release's records.
    assert from_json(Endpoint, to_json(ep)).ports == {}


@pytest.mark.parametrize(
    "ports, field, says",
    [
        ({"HTTP": (80, "TCP")}, "endpoint.ports['HTTP']", "a port name"),
        ({"a--b": (80, "TCP")}, "endpoint.ports['a--b']", "a port name"),
        ({"-ab": (80, "TCP")}, "endpoint.ports['-ab']", "a port name"),
        ({"ab-": (80, "TCP")}, "endpoint.ports['ab-']", "a port name"),
        ({"8080": (80, "TCP")}, "endpoint.ports['8080']", "at least one letter"),
        ({"a" * 16: (80, "TCP")}, "endpoint.ports['" + "a" * 16 + "']", "1-15"),
        ({"": (80, "TCP")}, "endpoint.ports['']", "a port name"),
        ({"http": (0, "TCP")}, "endpoint.ports['http'][0]", "1-65535"),
        ({"http": (65536, "TCP")}, "endpoint.ports['http'][0]", "1-65535"),
        ({"http": (True, "TCP")}, "endpoint.ports['http'][0]", "1-65535"),
        ({"http": ("80", "TCP")}, "endpoint.ports['http'][0]", "1-65535"),
        ({"http": (80, "ICMP")}, "endpoint.ports['http'][1]", "TCP, UDP or SCTP"),
        ({"http": (80, 6)}, "endpoint.ports['http'][1]", "TCP, UDP or SCTP"),
        ({"http": (80,)}, "endpoint.ports['http']", "a (number, protocol) pair"),
        ({"http": 80}, "endpoint.ports['http']", "a (number, protocol) pair"),
        ([["http", 80, "TCP"]], "endpoint.ports", "a mapping of port names"),
    ],
)
def test_bad_named_ports_are_refused_naming_the_port(ports: Any, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        Endpoint(vni=100, mac=MAC, ips=(), node="b", ports=ports)
    assert err.value.field == field and says in err.value.expected, err.value
    # The same from the store: refused at decoding, the value kept short.
    raw = {"vni": 100, "mac": MAC, "ips": [], "node": "b", "ports": ports}
    with pytest.raises(ConfigError) as err:
        from_json(Endpoint, json.dumps(raw).encode())
    assert err.value.field == field


def test_more_than_64_named_ports_are_too_large() -> None:
    ports = {f"p{i}": (1000 + i, "TCP") for i in range(65)}
    with pytest.raises(TooLarge) as err:
        Endpoint(vni=100, mac=MAC, ips=(), node="b", ports=ports)
    assert err.value.field == "endpoint.ports" and "at most 64" in err.value.expected
    del ports["p64"]
    assert len(Endpoint(vni=100, mac=MAC, ips=(), node="b", ports=ports).ports) == 64
