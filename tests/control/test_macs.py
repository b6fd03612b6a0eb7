"""Pod MACs as agents choose them: derived from the pod's address unless one is
asked for, unique across the cluster by construction, stable across restarts.

Agents run on MemoryStore with a node fake that takes ports (the recording fake
of ``overlay.testing.fakes`` plus ``add_port``/``remove_port``), on asyncio
and uvloop. The store is real and the agents are real; only the data plane is
left out, since what is checked is what the agents choose and refuse.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.ipam import mac_of
from overlay.control.store import MemoryStore
from overlay.errors import ConfigError, ConflictError
from overlay.model import NetworkSpec, to_json
from overlay.testing.aio import run, until
from overlay.testing.fakes import RecordingNetwork, RecordingNode

VNI = 100
SPEC = NetworkSpec(vni=VNI, tenant="blue", cidr="10.244.0.0/16", subnet_prefix=24)


class FakePort:
    def __init__(self, mac: str, ips: Sequence[str]) -> None:
        self.mac = mac
        self.ips = [ipaddress.ip_interface(ip) for ip in ips]


class PortNetwork(RecordingNetwork):
    """A recording network that also takes this node's pods, refusing a MAC twice
    as the data plane does."""

    def add_port(
        self,
        mac: str,
        ips: Sequence[str] = (),
        *,
        ifname: str | None = None,
        netns: str | None = None,
        port_security: bool = True,
        persist: bool = False,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        named_ports: dict[str, tuple[int, str]] | None = None,
    ) -> FakePort:
        if any(p.mac == mac for p in self.ports):
            raise ConflictError(f"MAC {mac} is in use on this node")
        port = FakePort(mac, ips)
        self.ports.append(port)
        return port

    def remove_port(self, port: FakePort) -> None:
        self.ports.remove(port)


class PortNode(RecordingNode):
    def add_network(self, vni: int, tenant: str, *, learning: bool = False) -> PortNetwork:
        net = PortNetwork(vni, tenant)
        self.networks[vni] = net
        return net


Body = Callable[[list[Agent[Any]], MemoryStore], Awaitable[None]]


def run_agents(loop_kind: str, names: Sequence[str], body: Body) -> None:
    """Agents ``names`` (node i at 198.18.0.i+1) on one MemoryStore that defines
    network 100, synchronised; ``body(agents, store)``; everything stopped after."""

    async def main() -> None:
        store = MemoryStore()
        await store.put(keys.network(VNI), to_json(SPEC))
        agents: list[Agent[Any]] = [
            Agent(PortNode(f"198.18.0.{i + 1}"), store, name, networks=[VNI], ttl=5)
            for i, name in enumerate(names)
        ]
        tasks = [asyncio.create_task(a.run()) for a in agents]
        try:
            await asyncio.wait_for(asyncio.gather(*(a.synced.wait() for a in agents)), 10)
            await asyncio.wait_for(body(agents, store), 30)
        finally:
            for a in agents:
                await a.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run(loop_kind, main)


def test_pods_added_at_once_on_nodes_whose_names_share_a_suffix_get_distinct_macs(
    loop_kind: str,
) -> None:
    """Two nodes whose names end alike add their pods at the same moment (neither
    has seen the other's yet): every MAC is distinct, and each is its address's."""

    async def body(agents: list[Agent[Any]], store: MemoryStore) -> None:
        added = await asyncio.gather(
            *(a.add_endpoint(VNI, name=f"pod{i}") for i in range(3) for a in agents)
        )
        macs = [ep.mac for ep, _ in added]
        assert len(set(macs)) == len(macs) == 6, macs
        for ep, port in added:
            assert ep.mac == port.mac == mac_of(ep.ips[0])

    run_agents(loop_kind, ["a.lab.example.com", "b.lab.example.com"], body)


def test_a_pod_added_again_gets_its_address_and_its_mac_again(loop_kind: str) -> None:
    """What ``podman restart`` does: DEL then ADD. The same address comes back, and
    with it the same MAC, so peers' neighbour caches stay right."""

    async def body(agents: list[Agent[Any]], store: MemoryStore) -> None:
        (agent,) = agents
        ep, _ = await agent.add_endpoint(VNI, name="web")
        await agent.remove_endpoint(VNI, ep.mac)
        again, _ = await agent.add_endpoint(VNI, name="web")
        assert (again.ips, again.mac) == (ep.ips, ep.mac)

    run_agents(loop_kind, ["node-a"], body)


def test_an_asked_mac_wins_and_a_taken_or_reserved_one_is_refused(loop_kind: str) -> None:
    async def body(agents: list[Agent[Any]], store: MemoryStore) -> None:
        a, b = agents
        ep, port = await a.add_endpoint(VNI, mac="02:AA:00:00:00:01", name="asked")
        assert ep.mac == port.mac == "02:aa:00:00:00:01"
        await until(lambda: "02:aa:00:00:00:01" in b.endpoints[VNI])
        with pytest.raises(ConflictError, match="02:aa:00:00:00:01 is in use by endpoint asked"):
            await b.add_endpoint(VNI, mac="02:aa:00:00:00:01")
        with pytest.raises(ConflictError, match="a port of this node"):
            await a.add_endpoint(VNI, mac="02:aa:00:00:00:01")
        derived = mac_of("10.244.99.9")  # an address another pod may be given later
        with pytest.raises(ConfigError) as err:
            await b.add_endpoint(VNI, mac=derived)
        assert err.value.field == "mac" and "derived from addresses" in err.value.expected
        with pytest.raises(ConfigError) as err:
            await b.add_endpoint(VNI, mac="01:00:5e:00:00:01")  # multicast
        assert err.value.field == "mac"
        # Refusals took nothing: the next pod gets the next address, as if none happened.
        other, _ = await b.add_endpoint(VNI)
        assert other.mac == mac_of(other.ips[0])
        kvs, _ = await store.get_prefix(keys.addrs(VNI))
        assert sorted(kv.value for kv in kvs) == sorted([b"02:aa:00:00:00:01", other.mac.encode()])

    run_agents(loop_kind, ["node-a", "node-b"], body)


def test_an_asked_address_is_reserved_in_the_lease_or_refused_naming_ips(
    loop_kind: str,
) -> None:
    async def body(agents: list[Agent[Any]], store: MemoryStore) -> None:
        (agent,) = agents
        first, _ = await agent.add_endpoint(VNI)
        subnet = ipaddress.ip_network(agent.subnets[VNI])
        want = f"{subnet.network_address + 9}"
        ep, _ = await agent.add_endpoint(VNI, ips=[want], reserve=True)
        assert ep.ips == (f"{want}/16",) and ep.mac == mac_of(want)
        kv = await store.get(keys.addr(VNI, want))
        assert kv is not None and kv.value == ep.mac.encode()  # IPAM will not hand it out
        with pytest.raises(ConflictError, match=f"{want} is taken"):
            await agent.add_endpoint(VNI, ips=[want], reserve=True)
        with pytest.raises(ConflictError, match="taken"):  # with a MAC asked for too
            await agent.add_endpoint(VNI, ips=[want], reserve=True, mac="02:00:00:00:00:99")
        outside = "10.245.0.9" if subnet.network_address.packed[2] else "10.244.200.9"
        for bad in (outside, f"{subnet.network_address + 1}", "10.244.0.0"):
            with pytest.raises(ConfigError) as err:
                await agent.add_endpoint(VNI, ips=[bad], reserve=True)
            assert err.value.field == "ips" and str(subnet) in err.value.expected, bad
        with pytest.raises(ConfigError) as err:
            await agent.add_endpoint(VNI, ips=[want, first.ips[0]], reserve=True)
        assert err.value.field == "ips" and "one address" in err.value.expected
        with_mac, _ = await agent.add_endpoint(
            VNI,
            ips=[f"{subnet.network_address + 10}/16"],
            reserve=True,
            mac=mac_of(f"{subnet.network_address + 10}"),
        )  # its own derived MAC may be asked for
        assert with_mac.mac == mac_of(with_mac.ips[0])

    run_agents(loop_kind, ["node-a"], body)


def test_a_delegated_address_derives_the_mac_and_a_clash_is_refused(loop_kind: str) -> None:
    async def body(agents: list[Agent[Any]], store: MemoryStore) -> None:
        (agent,) = agents
        ep, _ = await agent.add_endpoint(VNI, ips=["fd00::5/64", "10.246.0.5/24"])
        assert ep.mac == mac_of("10.246.0.5")  # the IPv4 address, when there is one
        six, _ = await agent.add_endpoint(VNI, ips=["fd00::6/64"])
        assert six.mac == mac_of("fd00::6") and six.mac.startswith("0e:")
        with pytest.raises(ConflictError, match="ask for a MAC"):
            await agent.add_endpoint(VNI, ips=["10.246.0.5/24"])  # a delegate's mistake
        asked, _ = await agent.add_endpoint(VNI, ips=["10.246.0.5/24"], mac="02:00:00:00:00:05")
        assert asked.mac == "02:00:00:00:00:05"
        assert (await store.get_prefix(keys.addrs(VNI)))[0] == []  # not the node's to reserve

    run_agents(loop_kind, ["node-a"], body)
