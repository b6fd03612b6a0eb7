"""The control plane's plain data against drift: one ``VNI_MAX`` that every layer
imports and that agrees with the data plane's, and no retired record kind
that anything still reads."""

from __future__ import annotations

import ast
import asyncio
import pathlib

import overlay
from overlay import model, wire
from overlay.cni import plugin
from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.store import MemoryStore
from overlay.daemon import config, health
from overlay.model import Endpoint, NetworkSpec, NodeSpec, to_json
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
