"""IPAM: node subnet leases and pod addresses — on asyncio and uvloop, on every store.

Each test runs its coroutine on a loop it makes itself (``asyncio`` and
``uvloop``) against a fresh ``MemoryStore`` and against a client of the
session's real etcd (``etcd_session``; skipped where there is no etcd). The
race test is a hypothesis property:
many simulated nodes lease subnets and allocate addresses at once, through a
store wrapper that yields to the loop a random number of times around every
call, and nothing may be handed out twice. Nothing is timed: lease expiry is
awaited as a condition, bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay.control import ipam, keys
from overlay.control.ipam import (
    AddressAllocator,
    is_derived,
    lease_subnet,
    mac_of,
    primary_address,
    release_subnet,
)
from overlay.control.store import KeyValue, MemoryStore, Store, Watch
from overlay.errors import CapacityError, ConfigError, ConflictError
from overlay.model import NetworkSpec

T = TypeVar("T")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

# Every network here has a VNI whose decimal form starts with 77: the tests own
# the keys under subnets/77 and addrs/77 (also on the session's shared etcd) and
# clear them before each test.
V4 = NetworkSpec(vni=7742, tenant="blue", cidr="10.244.0.0/16", subnet_prefix=24)
V6 = NetworkSpec(vni=7743, tenant="blue", cidr="fd00:244::/48", subnet_prefix=64)
SMALL = 7707  # the VNI of the small networks made by single tests
RACE = 7709
OURS = (keys.SUBNETS + b"77", keys.ADDRS + b"77")


# ---------------------------------------------------------------- stores


class JitterStore:
    """Delegates to a store, yielding to the loop 0-3 times before and after each call.

    Racing coroutines then interleave at every store call in an order the
    random generator (hypothesis's, so failures replay) chooses.
    """

    def __init__(self, inner: Store, rnd: random.Random) -> None:
        self.inner = inner
        self.rnd = rnd

    async def _jitter(self) -> None:
        for _ in range(self.rnd.randrange(4)):
            await asyncio.sleep(0)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        await self._jitter()
        result = await fn(*args)
        await self._jitter()
        return result

    async def get(self, key: bytes) -> KeyValue | None:
        return await self._call(self.inner.get, key)

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        return await self._call(self.inner.get_prefix, prefix)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return await self._call(self.inner.put, key, value, lease)

    async def cas(self, key: bytes, expect: int, value: bytes, lease: int = 0) -> int | None:
        return await self._call(self.inner.cas, key, expect, value, lease)

    async def delete(self, key: bytes) -> bool:
        return await self._call(self.inner.delete, key)

    def watch(self, prefix: bytes, start_revision: int) -> Watch:
        return self.inner.watch(prefix, start_revision)

    async def lease_grant(self, ttl: float) -> int:
        return await self._call(self.inner.lease_grant, ttl)

    async def lease_keepalive(self, lease: int) -> bool:
        return await self._call(self.inner.lease_keepalive, lease)

    async def lease_revoke(self, lease: int) -> None:
        await self._call(self.inner.lease_revoke, lease)

    async def close(self) -> None:
        await self.inner.close()


Body = Callable[[Store], Awaitable[T]]
NewStore = Callable[[], Store]


def _run(loop_kind: str, new_store: NewStore, body: Body[T]) -> T:
    """Run body(a store of new_store's) on a new loop of loop_kind; the loop is closed after."""

    async def main() -> T:
        store = new_store()
        try:
            for prefix in OURS:  # what an earlier test left on a shared store
                for kv in (await store.get_prefix(prefix))[0]:
                    await store.delete(kv.key)
            return await asyncio.wait_for(body(store), 60)
        finally:
            # a failed gather leaves its other calls running: end them before the loop
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await store.close()

    loop = LOOPS[loop_kind]()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.fixture(params=["memory", "etcd"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store(store_kind: str, request: pytest.FixtureRequest) -> NewStore:
    """Makes a store of this test's kind: a fresh MemoryStore, or a client of the
    session's etcd (skipped where there is no etcd)."""
    if store_kind == "memory":
        return MemoryStore
    pytest.importorskip("aetcd")
    from overlay.control.etcd import EtcdStore

    endpoint = request.getfixturevalue("overlay_etcd_session").endpoint
    return lambda: EtcdStore([endpoint])


@pytest.fixture
def short_ttl(store_kind: str) -> float:
    """A lease TTL that expires soon: etcd's are whole seconds and at least 1.5 s."""
    return 0.3 if store_kind == "memory" else 1.0


@pytest.fixture
def run(loop_kind: str, new_store: NewStore) -> Callable[[Body[Any]], Any]:
    """run(body): await body(fresh store) on this test's loop and store kind."""
    return lambda body: _run(loop_kind, new_store, body)


async def ours(store: Store) -> list[KeyValue]:
    """Every key the tests own, with values and revisions: to check nothing was written."""
    return [kv for prefix in OURS for kv in (await store.get_prefix(prefix))[0]]


async def snapshot(store: Store, vni: int) -> dict[bytes, bytes]:
    """Every subnet and address key of network vni, with its value."""
    out: dict[bytes, bytes] = {}
    for prefix in (keys.subnets(vni), keys.addrs(vni)):
        kvs, _ = await store.get_prefix(prefix)
        out.update((kv.key, kv.value) for kv in kvs)
    return out


async def until_gone(store: Store, key: bytes, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while await store.get(key) is not None:
        if loop.time() > end:
            raise AssertionError(f"{key!r} still there after {timeout} s")
        await asyncio.sleep(0.05)


def mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


# ---------------------------------------------------------------- subnets


@pytest.mark.parametrize("spec", [V4, V6], ids=["v4", "v6"])
def test_subnets_are_distinct_inside_the_cidr_and_of_the_subnet_size(
    run: Callable[[Body[Any]], Any], spec: NetworkSpec
) -> None:
    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        got = [await lease_subnet(store, spec, f"node-{i}", lease) for i in range(8)]
        nets = [ipaddress.ip_network(c) for c in got]
        assert len(set(nets)) == 8
        for n in nets:
            assert n.prefixlen == spec.subnet_prefix
            assert n.subnet_of(spec.network)  # type: ignore[arg-type]
        held = await snapshot(store, spec.vni)
        assert held == {keys.subnet(spec.vni, c): f"node-{i}".encode() for i, c in enumerate(got)}

    run(body)


def test_a_node_gets_its_subnet_back_without_a_write(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        first = await lease_subnet(store, V4, "a", lease)
        before = await ours(store)
        assert await lease_subnet(store, V4, "a", lease) == first
        assert await lease_subnet(store, V4, "a", lease, prefer="10.244.200.0/24") == first
        assert await ours(store) == before

    run(body)


def test_a_node_under_a_new_lease_keeps_its_subnet_and_moves_it(
    run: Callable[[Body[Any]], Any],
) -> None:
    async def body(store: Store) -> None:
        old = await store.lease_grant(60)
        cidr = await lease_subnet(store, V4, "a", old)
        new = await store.lease_grant(60)
        assert await lease_subnet(store, V4, "a", new) == cidr
        await store.lease_revoke(old)
        kv = await store.get(keys.subnet(V4.vni, cidr))
        assert kv is not None and kv.value == b"a" and kv.lease == new

    run(body)


def test_prefer_is_tried_first_and_skipped_when_taken(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        assert await lease_subnet(store, V4, "a", lease, prefer="10.244.7.0/24") == "10.244.7.0/24"
        other = await lease_subnet(store, V4, "b", lease, prefer="10.244.7.0/24")
        assert other != "10.244.7.0/24"

    run(body)


def test_a_returning_node_gets_the_same_subnet_again(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        first = await store.lease_grant(60)
        before = {n: await lease_subnet(store, V4, n, first) for n in ("a", "b", "c")}
        await store.lease_revoke(first)
        again = await store.lease_grant(60)
        after = {n: await lease_subnet(store, V4, n, again) for n in ("c", "b", "a")}
        assert after == before
        # hashed start positions: three nodes did not all start at the lowest subnet
        assert len({ipaddress.ip_network(c).network_address for c in before.values()}) == 3
        assert sorted(before.values()) != ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]

    run(body)


def test_exhaustion_raises_capacity_error_naming_network_and_cidr(
    run: Callable[[Body[Any]], Any],
) -> None:
    spec = NetworkSpec(vni=SMALL, tenant="blue", cidr="10.9.0.0/24", subnet_prefix=26)

    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        got = {await lease_subnet(store, spec, f"n{i}", lease) for i in range(4)}
        assert got == {"10.9.0.0/26", "10.9.0.64/26", "10.9.0.128/26", "10.9.0.192/26"}
        before = await ours(store)
        with pytest.raises(CapacityError, match=r"network 7707 \(10\.9\.0\.0/24\).*all 4 /26"):
            await lease_subnet(store, spec, "n4", lease)
        assert await ours(store) == before

    run(body)


def test_a_single_subnet_network_is_usable(run: Callable[[Body[Any]], Any]) -> None:
    spec = NetworkSpec(vni=SMALL, tenant="blue", cidr="10.9.0.0/24", subnet_prefix=24)

    async def body(store: Store) -> None:
        assert await lease_subnet(store, spec, "a", 0) == "10.9.0.0/24"
        with pytest.raises(CapacityError):
            await lease_subnet(store, spec, "b", 0)

    run(body)


def test_leases_of_another_size_block_the_subnets_they_cover(
    run: Callable[[Body[Any]], Any],
) -> None:
    spec = NetworkSpec(vni=SMALL, tenant="blue", cidr="10.9.0.0/24", subnet_prefix=26)

    async def body(store: Store) -> None:
        # left by an earlier spec with subnet_prefix 25
        await store.put(keys.subnet(SMALL, "10.9.0.0/25"), b"old")
        got = {await lease_subnet(store, spec, f"n{i}", 0) for i in range(2)}
        assert got == {"10.9.0.128/26", "10.9.0.192/26"}
        with pytest.raises(CapacityError):
            await lease_subnet(store, spec, "n2", 0)

    run(body)


def test_release_frees_the_subnet_and_its_addresses(run: Callable[[Body[Any]], Any]) -> None:
    spec = NetworkSpec(vni=SMALL, tenant="blue", cidr="10.9.0.0/24", subnet_prefix=25)

    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        a = await lease_subnet(store, spec, "a", lease)
        b = await lease_subnet(store, spec, "b", lease)
        alloc_a = AddressAllocator(store, spec, "a", a, lease)
        alloc_b = AddressAllocator(store, spec, "b", b, lease)
        await alloc_a.allocate(mac(1))
        kept = await alloc_b.allocate(mac(2))
        assert await release_subnet(store, SMALL, a, "a") is True
        assert await snapshot(store, SMALL) == {
            keys.subnet(SMALL, b): b"b",
            keys.addr(SMALL, kept.split("/")[0]): mac(2).encode(),
        }
        assert await lease_subnet(store, spec, "c", lease) == a
        assert await release_subnet(store, SMALL, a, "a") is False  # c's now: untouched

    run(body)


def test_release_by_another_node_changes_nothing(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        cidr = await lease_subnet(store, V4, "a", 0)
        before = await ours(store)
        assert await release_subnet(store, V4.vni, cidr, "b") is False
        assert await release_subnet(store, V4.vni, "10.244.250.0/24", "a") is False
        assert await ours(store) == before

    run(body)


def test_racing_calls_for_one_node_end_with_one_subnet(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        racing = JitterStore(store, random.Random(1))
        lease = await store.lease_grant(60)
        got = await asyncio.gather(*(lease_subnet(racing, V4, "a", lease) for _ in range(6)))
        assert len(set(got)) == 1
        assert await snapshot(store, V4.vni) == {keys.subnet(V4.vni, got[0]): b"a"}

    run(body)


# ---------------------------------------------------------------- addresses


def test_addresses_skip_network_gateway_and_broadcast_and_carry_the_network_prefix(
    run: Callable[[Body[Any]], Any],
) -> None:
    spec = NetworkSpec(vni=SMALL, tenant="blue", cidr="10.9.0.0/24", subnet_prefix=29)

    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        sub = await lease_subnet(store, spec, "a", lease, prefer="10.9.0.8/29")
        alloc = AddressAllocator(store, spec, "a", sub, lease)
        assert alloc.capacity == 5 and alloc.gateway == "10.9.0.9/24"
        got = [await alloc.allocate(mac(i)) for i in range(5)]
        assert got == [f"10.9.0.{i}/24" for i in range(10, 15)]
        with pytest.raises(CapacityError, match=r"network 7707 .*10\.9\.0\.8/29.*all 5"):
            await alloc.allocate(mac(5))

    run(body)


def test_ipv6_addresses_skip_the_subnet_router_anycast_and_the_gateway(
    run: Callable[[Body[Any]], Any],
) -> None:
    spec = NetworkSpec(vni=SMALL, tenant="blue", cidr="fd00::/120", subnet_prefix=126)

    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        sub = await lease_subnet(store, spec, "a", lease, prefer="fd00::4/126")
        alloc = AddressAllocator(store, spec, "a", sub, lease)
        assert alloc.gateway == "fd00::5/120"
        assert [await alloc.allocate(mac(i)) for i in range(2)] == ["fd00::6/120", "fd00::7/120"]
        with pytest.raises(CapacityError):
            await alloc.allocate(mac(2))
        big = AddressAllocator(store, V6, "a", await lease_subnet(store, V6, "a", lease), lease)
        first = ipaddress.ip_interface(await big.allocate(mac(3)))
        assert first.network.prefixlen == 48
        assert int(first.ip) - int(ipaddress.ip_network(big.subnet).network_address) == 2

    run(body)


def test_allocate_is_idempotent_per_mac(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        lease = await store.lease_grant(60)
        alloc = AddressAllocator(store, V4, "a", await lease_subnet(store, V4, "a", lease), lease)
        first = await alloc.allocate(mac(1))
        other = await alloc.allocate(mac(2))
        assert await alloc.allocate(mac(1).upper()) == first
        assert await alloc.allocate(mac(1), want=first) == first
        assert first != other
        # after a restart under a new lease, the pod keeps its address on the new lease
        new = await store.lease_grant(60)
        await lease_subnet(store, V4, "a", new)
        again = AddressAllocator(store, V4, "a", alloc.subnet.with_prefixlen, new)
        assert await again.allocate(mac(1)) == first
        kv = await store.get(keys.addr(V4.vni, first.split("/")[0]))
        assert kv is not None and kv.lease == new

    run(body)


def test_want_is_honoured_or_refused_clearly(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        sub = await lease_subnet(store, V4, "a", 0, prefer="10.244.3.0/24")
        alloc = AddressAllocator(store, V4, "a", sub, 0)
        assert await alloc.allocate(mac(1), want="10.244.3.77") == "10.244.3.77/16"
        assert await alloc.allocate(mac(2), want="10.244.3.78/16") == "10.244.3.78/16"
        with pytest.raises(
            ConflictError, match=r"10\.244\.3\.77 is taken by MAC 02:00:00:00:00:01"
        ):
            await alloc.allocate(mac(3), want="10.244.3.77")
        with pytest.raises(ConflictError, match=r"already holds 10\.244\.3\.77"):
            await alloc.allocate(mac(1), want="10.244.3.79")
        for bad in ("10.244.3.1", "10.244.3.255", "10.244.3.0", "10.244.4.5", "10.244.3.5/24"):
            with pytest.raises(ConfigError) as err:
                await alloc.allocate(mac(3), want=bad)
            assert err.value.field == "want"

    run(body)


def test_release_frees_an_address_and_repeating_it_is_harmless(
    run: Callable[[Body[Any]], Any],
) -> None:
    async def body(store: Store) -> None:
        alloc = AddressAllocator(store, V4, "a", await lease_subnet(store, V4, "a", 0), 0)
        first = await alloc.allocate(mac(1))
        assert await alloc.release(first) is True
        assert await alloc.release(first.split("/")[0]) is False
        assert await store.get(keys.addr(V4.vni, first.split("/")[0])) is None
        # round robin: the address just released is not the next one handed out
        second = await alloc.allocate(mac(2))
        assert second != first
        assert await alloc.allocate(mac(1), want=first) == first

    run(body)


def test_the_walk_wraps_round_to_freed_addresses(run: Callable[[Body[Any]], Any]) -> None:
    spec = NetworkSpec(vni=SMALL, tenant="blue", cidr="10.9.0.0/24", subnet_prefix=29)

    async def body(store: Store) -> None:
        alloc = AddressAllocator(store, spec, "a", await lease_subnet(store, spec, "a", 0), 0)
        got = [await alloc.allocate(mac(i)) for i in range(5)]
        await alloc.release(got[1])
        assert await alloc.allocate(mac(9)) == got[1]

    run(body)


# ---------------------------------------------------------------- derived MACs


def test_a_mac_is_derived_from_its_address_and_only_from_it() -> None:
    assert mac_of("10.244.3.2/16") == "0a:58:0a:f4:03:02" == mac_of("10.244.3.2")
    assert mac_of(ipaddress.ip_address("10.244.3.3")) == "0a:58:0a:f4:03:03"
    v6 = mac_of("fd00:244::2/48")
    assert v6.startswith("0e:") and v6 == mac_of("fd00:244::2") != mac_of("fd00:244::3")
    assert all(is_derived(m) for m in (mac_of("10.0.0.1"), v6, "0A:58:01:02:03:04"))
    assert not any(is_derived(m) for m in ("02:00:00:00:00:01", "0a:59:00:00:00:01"))
    for m in (mac_of("10.0.0.1"), v6):  # locally administered unicast
        assert int(m[:2], 16) & 0b11 == 0b10
    assert primary_address(["fd00::2/64", "10.1.0.2/16"]) == "10.1.0.2/16"
    assert primary_address(["fd00::2/64"]) == "fd00::2/64" and primary_address([]) is None


@pytest.mark.parametrize("spec", [V4, V6], ids=["v4", "v6"])
def test_without_a_mac_the_address_key_holds_the_mac_its_address_derives(
    run: Callable[[Body[Any]], Any], spec: NetworkSpec
) -> None:
    async def body(store: Store) -> None:
        alloc = AddressAllocator(store, spec, "a", await lease_subnet(store, spec, "a", 0), 0)
        got = [await alloc.allocate() for _ in range(3)]
        assert len(set(got)) == 3
        for address in got:
            kv = await store.get(keys.addr(spec.vni, address.split("/")[0]))
            assert kv is not None and kv.value == mac_of(address).encode()
        # The lowest free address comes back after a release (a new allocator per
        # call, as the agent makes): a restarted pod gets its address and MAC again.
        await alloc.release(got[0])
        again = AddressAllocator(store, spec, "a", alloc.subnet.with_prefixlen, 0)
        assert await again.allocate() == got[0]

    run(body)


def test_a_wanted_address_without_a_mac_is_refused_when_taken(
    run: Callable[[Body[Any]], Any],
) -> None:
    """With a MAC, asking again for the address it holds is the same pod asking
    again; without one there is no such pod, so a taken address is refused."""

    async def body(store: Store) -> None:
        sub = await lease_subnet(store, V4, "a", 0, prefer="10.244.3.0/24")
        alloc = AddressAllocator(store, V4, "a", sub, 0)
        assert await alloc.allocate(want="10.244.3.9") == "10.244.3.9/16"
        with pytest.raises(ConflictError, match=r"10\.244\.3\.9 is taken by MAC 0a:58:0a:f4:03:09"):
            await alloc.allocate(want="10.244.3.9")
        with pytest.raises(ConflictError, match="derives MAC 0a:58:0a:f4:03:0a"):
            await alloc.allocate(want="10.244.3.10", mac_taken=lambda m: m == mac_of("10.244.3.10"))
        assert await alloc.allocate(mac_taken=lambda m: m == mac_of("10.244.3.2")) == (
            "10.244.3.3/16"  # the address whose MAC is in use elsewhere stays free
        )

    run(body)


def test_colliding_derived_macs_never_go_to_two_addresses(
    run: Callable[[Body[Any]], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """IPv6 MACs are hashes. With a hash that collides all the time (four MACs for
    every address), nodes racing through a jittery store end with each MAC held by
    one address; the rest give up after a bounded walk, naming the fix."""
    monkeypatch.setattr(
        ipam, "mac_of", lambda a: f"0e:00:00:00:00:{int(ipaddress.ip_interface(a).ip) % 4:02x}"
    )

    async def body(store: Store) -> None:
        racing = JitterStore(store, random.Random(5))
        allocs = [
            AddressAllocator(racing, V6, n, await lease_subnet(store, V6, n, 0), 0) for n in "abc"
        ]
        got = await asyncio.gather(*(a.allocate() for a in allocs * 2), return_exceptions=True)
        won = [g for g in got if isinstance(g, str)]
        assert len(won) == 4, got
        for g in got:  # the others end, bounded, naming the fix
            assert isinstance(g, str) or (
                isinstance(g, ConflictError) and "ask for a MAC" in str(g)
            )
        kvs, _ = await store.get_prefix(keys.addrs(V6.vni))
        values = [kv.value for kv in kvs]
        assert len(values) == len(set(values)) == 4
        assert sorted(values) == sorted(ipam.mac_of(a).encode() for a in won)

    run(body)


def test_racing_allocations_for_one_mac_end_with_one_address(
    run: Callable[[Body[Any]], Any],
) -> None:
    async def body(store: Store) -> None:
        sub = await lease_subnet(store, V4, "a", 0)
        racing = JitterStore(store, random.Random(2))
        allocs = [AddressAllocator(racing, V4, "a", sub, 0) for _ in range(6)]
        got = await asyncio.gather(*(a.allocate(mac(1)) for a in allocs))
        assert len(set(got)) == 1
        kvs, _ = await store.get_prefix(keys.addrs(V4.vni))
        assert [(kv.key, kv.value) for kv in kvs] == [
            (keys.addr(V4.vni, got[0].split("/")[0]), mac(1).encode())
        ]

    run(body)


def test_allocator_refuses_once_the_node_lost_its_subnet(run: Callable[[Body[Any]], Any]) -> None:
    async def body(store: Store) -> None:
        sub = await lease_subnet(store, V4, "a", 0)
        alloc = AddressAllocator(store, V4, "a", sub, 0)
        await release_subnet(store, V4.vni, sub, "a")
        await lease_subnet(store, V4, "b", 0, prefer=sub)
        with pytest.raises(
            ConflictError, match=r"node 'a' no longer holds subnet .* \(held by 'b'\)"
        ):
            await alloc.allocate(mac(1))
        assert (await store.get_prefix(keys.addrs(V4.vni)))[0] == []

    run(body)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"spec": "10.244.0.0/16"}, "spec"),
        ({"node": ""}, "node"),
        ({"node": "a/b"}, "node"),
        ({"lease": -1}, "lease"),
        ({"lease": True}, "lease"),
        ({"lease": 1.5}, "lease"),
        ({"prefer": "10.244.1.5/24"}, "prefer"),
        ({"prefer": "10.245.0.0/24"}, "prefer"),
        ({"prefer": "10.244.0.0/25"}, "prefer"),
        ({"prefer": "fd00::/64"}, "prefer"),
        ({"prefer": 5}, "prefer"),
    ],
)
def test_lease_subnet_refuses_bad_arguments_and_writes_nothing(
    run: Callable[[Body[Any]], Any], kwargs: dict[str, Any], field: str
) -> None:
    async def body(store: Store) -> None:
        args: dict[str, Any] = {"store": store, "spec": V4, "node": "a", "lease": 0, **kwargs}
        before = await ours(store)
        with pytest.raises(ConfigError) as err:
            await lease_subnet(**args)
        assert err.value.field == field and field in str(err.value)
        assert await ours(store) == before

    run(body)


def test_other_calls_refuse_bad_arguments_and_write_nothing(
    run: Callable[[Body[Any]], Any],
) -> None:
    async def body(store: Store) -> None:
        sub = await lease_subnet(store, V4, "a", 0, prefer="10.244.3.0/24")
        alloc = AddressAllocator(store, V4, "a", sub, 0)
        await alloc.allocate(mac(1), want="10.244.3.2")
        before = await ours(store)
        bad: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (lambda: release_subnet(store, -1, sub, "a"), "vni"),
            (lambda: release_subnet(store, True, sub, "a"), "vni"),
            (lambda: release_subnet(store, V4.vni, "10.244.3.1/24", "a"), "cidr"),
            (lambda: release_subnet(store, V4.vni, sub, ""), "node"),
            (lambda: alloc.allocate("02:00:00:00:00"), "mac"),
            (lambda: alloc.allocate("01:00:00:00:00:01"), "mac"),  # multicast
            (lambda: alloc.allocate(mac(2), want="fd00::2"), "want"),
            (lambda: alloc.release("10.244.3.1"), "ip"),
            (lambda: alloc.release("10.244.4.2"), "ip"),
            (lambda: alloc.release("junk"), "ip"),
        ]
        for call, field in bad:
            with pytest.raises(ConfigError) as err:
                await call()
            assert err.value.field == field
        bad_ctor: list[tuple[tuple[Any, ...], str]] = [
            ((store, V4, "a", "10.244.3.0/25", 0), "subnet"),
            ((store, V4, "a", "10.244.3.0", 0), "subnet"),
            ((store, V4, "a", sub, -2), "lease"),
            ((store, V4, "", sub, 0), "node"),
            ((store, None, "a", sub, 0), "spec"),
        ]
        for args, field in bad_ctor:
            with pytest.raises(ConfigError) as err:
                AddressAllocator(*args)
            assert err.value.field == field
        assert await ours(store) == before

    run(body)


# ---------------------------------------------------------------- leases


def test_lease_expiry_frees_the_nodes_subnet_and_addresses(
    run: Callable[[Body[Any]], Any], short_ttl: float
) -> None:
    async def body(store: Store) -> None:
        short = await store.lease_grant(short_ttl)
        long = await store.lease_grant(60)
        sub_a = await lease_subnet(store, V4, "a", short)
        sub_b = await lease_subnet(store, V4, "b", long)
        addr_a = await AddressAllocator(store, V4, "a", sub_a, short).allocate(mac(1))
        addr_b = await AddressAllocator(store, V4, "b", sub_b, long).allocate(mac(2))
        await until_gone(store, keys.subnet(V4.vni, sub_a))
        assert await snapshot(store, V4.vni) == {
            keys.subnet(V4.vni, sub_b): b"b",
            keys.addr(V4.vni, addr_b.split("/")[0]): mac(2).encode(),
        }
        # a's subnet and address are free for the next node
        assert await lease_subnet(store, V4, "c", long, prefer=sub_a) == sub_a
        alloc = AddressAllocator(store, V4, "c", sub_a, long)
        assert await alloc.allocate(mac(3), want=addr_a) == addr_a

    run(body)


# ---------------------------------------------------------------- the race


# (cidr, subnet_prefix): small networks, so that with up to 30 nodes some runs
# exhaust the subnets too; every subnet has room for 4 pods twice over (racing
# calls for one MAC may each hold an address for a moment).
NETWORKS = [
    ("10.0.0.0/24", 28),  # 16 subnets of 13 pods
    ("10.0.0.0/25", 28),  # 8 subnets of 13 pods
    ("fd00::/120", 124),  # 16 subnets of 14 pods
    ("10.0.0.0/20", 24),  # 16 subnets of 253 pods
]


@dataclasses.dataclass
class Outcome:
    node: str
    subnet: str | None  # None: CapacityError
    addrs: dict[str, str]  # mac -> address


async def agent(
    store: Store, spec: NetworkSpec, node: str, macs: list[str], again: bool
) -> Outcome:
    lease = await store.lease_grant(60)
    calls = 2 if again else 1  # a second, racing call for the same node and MACs
    results = await asyncio.gather(
        *(lease_subnet(store, spec, node, lease) for _ in range(calls)), return_exceptions=True
    )
    subs = {r for r in results if isinstance(r, str)}
    assert all(isinstance(r, (str, CapacityError)) for r in results), results
    if not subs:
        return Outcome(node, None, {})
    assert len(subs) == 1  # racing calls for one node agree
    sub = subs.pop()
    alloc = AddressAllocator(store, spec, node, sub, lease)
    got = await asyncio.gather(*(alloc.allocate(m) for m in macs * calls))
    assert got[: len(macs)] == got[len(macs) :] or not again  # ... and for one MAC
    return Outcome(node, sub, dict(zip(macs, got[: len(macs)], strict=True)))


RACE_STRATEGIES = {
    "per_node": st.integers(1, 4),
    "network": st.sampled_from(NETWORKS),
    "again": st.booleans(),
    "rnd": st.randoms(use_true_random=False),
}
RACE_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(RACE_SETTINGS, max_examples=int(os.environ.get("IPAM_RACE_EXAMPLES", "100")))
@given(nodes=st.integers(2, 30), **RACE_STRATEGIES)
def test_racing_agents_never_get_a_subnet_or_an_address_twice(
    loop_kind: str,
    nodes: int,
    per_node: int,
    network: tuple[str, int],
    again: bool,
    rnd: random.Random,
) -> None:
    _run(loop_kind, MemoryStore, race(nodes, per_node, network, again, rnd))


@settings(RACE_SETTINGS, max_examples=int(os.environ.get("IPAM_RACE_EXAMPLES", "20")))
@given(nodes=st.integers(2, 30), **RACE_STRATEGIES)
def test_racing_agents_on_etcd_never_get_a_subnet_or_an_address_twice(
    loop_kind: str,
    overlay_etcd_session: Any,
    nodes: int,
    per_node: int,
    network: tuple[str, int],
    again: bool,
    rnd: random.Random,
) -> None:
    pytest.importorskip("aetcd")
    from overlay.control.etcd import EtcdStore

    store = lambda: EtcdStore([overlay_etcd_session.endpoint])  # noqa: E731
    _run(loop_kind, store, race(nodes, per_node, network, again, rnd))


def race(
    nodes: int, per_node: int, network: tuple[str, int], again: bool, rnd: random.Random
) -> Body[None]:
    """nodes agents lease subnets of network and per_node addresses each, all at once."""
    spec = NetworkSpec(vni=RACE, tenant="blue", cidr=network[0], subnet_prefix=network[1])
    count = 1 << (network[1] - spec.network.prefixlen)
    names = [f"node-{i}" for i in range(nodes)]
    rnd.shuffle(names)

    async def body(store: Store) -> None:
        racing = JitterStore(store, rnd)
        outcomes = await asyncio.gather(
            *(
                agent(racing, spec, name, [mac(i * 8 + j) for j in range(per_node)], again)
                for i, name in enumerate(names)
            )
        )
        held = await snapshot(store, spec.vni)
        leased = [o for o in outcomes if o.subnet is not None]
        # every subnet went to exactly one node, and exhaustion only when all were taken
        # (a racing call for the same node holds a subnet for a moment before it gives
        # it back, which may make another node see none free)
        assert len(leased) == min(nodes, count) or again and 0 < len(leased) <= count
        assert len({o.subnet for o in leased}) == len(leased)
        want = {keys.subnet(spec.vni, o.subnet): o.node.encode() for o in leased if o.subnet}
        for o in leased:
            sub = ipaddress.ip_network(o.subnet or "")
            assert sub.prefixlen == spec.subnet_prefix
            assert sub.subnet_of(spec.network)  # type: ignore[arg-type]
            for m, a in o.addrs.items():
                iface = ipaddress.ip_interface(a)
                assert iface.network == spec.network
                assert iface.ip in sub
                assert int(iface.ip) - int(sub.network_address) >= 2
                assert iface.ip != sub.broadcast_address or sub.version == 6
                want[keys.addr(spec.vni, str(iface.ip))] = m.encode()
        # no address twice, and the store holds exactly what was handed out
        assert len(want) == len(leased) + sum(len(o.addrs) for o in leased)
        assert held == want

    return body
