"""Address management: node subnet leases and pod addresses, by compare-and-swap.

Design notes. A network's CIDR (``NetworkSpec.cidr``) is cut into subnets of
``spec.subnet_prefix`` bits; each node leases one of them, as flannel does,
and hands its pods addresses from it. Two levels, because they change at very
different rates: a subnet is taken once per node and network, an address
once per pod. Per-node subnets keep pod creation local (a node's allocations
only ever contend with that node's own) and let a peer find a pod's node
from its address alone.

Every grant is a create by compare-and-swap, ``store.cas(key, 0, owner,
lease)``, which succeeds for exactly one caller however many race for the
same key: nothing is handed out twice, with no lock and no leader, whether
the racers are coroutines of one agent or agents on a hundred hosts. A
caller that loses a race moves on to the next candidate. Grants live under
the node's store lease, so a node that dies (stops its keepalives) gives its
subnet and its pods' addresses back within the lease's TTL, without anyone
cleaning up after it.

Key layout (``overlay.control.keys``)::

    subnets/<vni>/<subnet>   node name   e.g. subnets/42/10.244.3.0_24 = b"node-a"
    addrs/<vni>/<ip>         pod MAC     e.g. addrs/42/10.244.3.2 = b"02:00:00:00:00:07"

Addresses are keyed per network, not per subnet, so an address is unique in
its network even if a subnet changed hands while its old owner was still
allocating from it.

Decisions:

* Candidate order. ``prefer`` (a subnet the node held before, say) is tried
  first; then subnets in order, starting at a position hashed from the node's
  name and wrapping round. Racing nodes thus start at different places instead
  of all fighting over the lowest free subnet, and a node whose lease expired
  usually gets the same subnet back when it returns.
* Every subnet is handed out, the first and the last too. flannel skips the
  first by default (``SubnetMin``); here the addresses that matter to the whole
  network (its network address, its IPv4 broadcast) are the first subnet's
  network address and the last subnet's broadcast, which the address
  allocator never hands out anyway, and a network of a single subnet stays
  usable.
* In a subnet, the allocator skips the subnet's network address (for IPv6 the
  subnet-router anycast address), the first host (``.1``, kept for a gateway
  on the node) and, for IPv4, the broadcast address.
* A pod's address carries the *network's* prefix length (10.244.3.2/16, not
  /24): the overlay is one L2 segment per network, so pods on other nodes are
  on-link and are reached by ARP/ND, not through a router. In a ``routed``
  network it carries the *subnet's* (10.244.3.2/24), the gateway's too: pods
  on other nodes are then off-link, reached through the node's gateway and
  the node's kernel routes, without encapsulation (``pod_prefix``). An
  ``auto`` network keeps the network's: its tunnel peers' pods must stay
  on-link, since the gateway port may not forward a packet whose source is one
  of the network's own endpoints (the engine's anti-spoofing), and its direct
  peers' pods are reached through the gateway, which answers ARP for them
  (proxy ARP, ``overlay.daemon.routing``).
* At most one grant per owner: a node that already holds a subnet gets it
  back, a MAC that already holds an address in the subnet gets that back.
  When the holder's key is under another lease (the agent restarted with a new
  lease), it is moved to the caller's lease by a compare-and-swap that keeps
  the value. If two calls for the same owner race and both create, the grant
  with the lower create revision wins for both and the other is deleted.
* Every loop is bounded: a walk visits each candidate at most once and ends
  with ``CapacityError`` when all are taken (``ConflictError`` after
  ``_MAC_COLLISIONS`` free addresses in a row whose derived MAC is held); a
  snapshot that goes stale under contention is re-read at most ``_ROUNDS``
  times before ``ConflictError``.
* Arguments are checked before anything is read or written (``ConfigError``
  naming the argument), and a call that raises ``CapacityError`` or
  ``ConflictError`` has written nothing that stays. A call cut short by the
  store (``StoreUnavailable``) may have made its grant; calling again returns
  it, since grants are per owner.
* ``CapacityError`` means every candidate was held in a snapshot read during
  the call; a grant that a racing call for the same owner gives back a moment
  later can be counted as held.

Pod MACs follow addresses. A pod that asks for no MAC gets one derived from
its address (``mac_of``), as OVN-Kubernetes does: ``0a:58:`` and the four
bytes of an IPv4 address; for IPv6 ``0e:`` and five bytes of the address's
SHA-256. The MAC is then stable for the address with no state anywhere (a
container restarted with the same address comes back with the same MAC, and
its peers' neighbour caches stay right), and unique in the network by
construction for IPv4, because the address is. A hash can collide, so for
IPv6 the allocator makes it unique: the address keys of an IPv6 network are
read whole (see ``_addr_scan_prefix``), a candidate whose MAC another address
already holds is skipped, and after a create the earliest key (create
revision) holding the MAC keeps it while a later one is deleted and the walk
goes on; two nodes racing for two colliding addresses thus end with one of
them, as with everything else here. The two prefixes are reserved for derived
MACs (``is_derived``): a MAC someone asks for must lie outside them, unless it
is the one its own address derives, so an asked-for MAC never takes the MAC of
an address handed out later.

Known limit: the protocol's ``delete`` is unconditional, so a release reads
the key, checks its owner and then deletes it. Were the owner's lease to
expire and another node take the key between those two calls, the release
would delete the newcomer's key. A delete conditioned on the mod revision
(one etcd transaction) would close that window.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from typing import TypeAlias

from overlay.control import keys
from overlay.control.store import KeyValue, Store
from overlay.errors import CapacityError, ConfigError, ConflictError
from overlay.model import VNI_MAX, NetworkSpec, _mac, _name

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# Derived MACs (see the module notes): both are locally administered unicast.
DERIVED_V4 = (0x0A, 0x58)  # 0a:58: + the IPv4 address
DERIVED_V6 = 0x0E  # 0e: + the first 5 bytes of sha256(the 16 bytes of the IPv6 address)

# How many free addresses in a row a walk skips because their derived MAC is held
# (the walk's bound when hashes collide; with 40 bits of hash it is never reached).
_MAC_COLLISIONS = 64

# How many times a call re-reads its snapshot when the store changes under it
# (a holder's key moved, a requested address created concurrently).
_ROUNDS = 16


# ---------------------------------------------------------------- arguments


def _check_spec(spec: object) -> NetworkSpec:
    if not isinstance(spec, NetworkSpec):
        raise ConfigError("spec", spec, "a NetworkSpec")
    return spec


def _check_vni(vni: object) -> int:
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= VNI_MAX:
        raise ConfigError("vni", vni, f"an integer 0-{VNI_MAX}")
    return vni


def _check_lease(lease: object) -> int:
    if isinstance(lease, bool) or not isinstance(lease, int) or lease < 0:
        raise ConfigError("lease", lease, "a lease id from store.lease_grant(), or 0 for none")
    return lease


def _subnet_arg(spec: NetworkSpec, value: object, field: str) -> IPNetwork:
    """value as one of spec's subnets, or ConfigError naming field."""
    subnets = _Subnets(spec)
    expected = f"a /{spec.subnet_prefix} subnet of {spec.cidr}, like {subnets.at(0)}"
    sub = _parse_network(value)
    if sub is None or not subnets.contains(sub):
        raise ConfigError(field, value, expected)
    return sub


def _parse_network(value: object) -> IPNetwork | None:
    """value as a network ("10.244.3.0/24", host bits clear), or None."""
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        return None


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# ---------------------------------------------------------------- MACs


def mac_of(address: str | IPAddress) -> str:
    """The MAC a pod with ``address`` gets when it asks for none ("10.244.3.2",
    "10.244.3.2/16" or an address object): ``0a:58:0a:f4:03:02`` for that IPv4
    address, ``0e:`` and five bytes of its SHA-256 for an IPv6 address."""
    ip = address if not isinstance(address, str) else ipaddress.ip_interface(address).ip
    if ip.version == 4:
        raw = bytes(DERIVED_V4) + ip.packed
    else:
        raw = bytes([DERIVED_V6]) + hashlib.sha256(ip.packed).digest()[:5]
    return ":".join(f"{b:02x}" for b in raw)


def is_derived(mac: str) -> bool:
    """``mac`` lies in a range reserved for MACs derived from addresses."""
    head = mac.lower()
    return head.startswith(f"{DERIVED_V4[0]:02x}:{DERIVED_V4[1]:02x}:") or head.startswith(
        f"{DERIVED_V6:02x}:"
    )


def primary_address(ips: Iterable[str]) -> str | None:
    """The address a pod's MAC is derived from: its first IPv4 one, else its first."""
    ips = list(ips)
    v4 = [ip for ip in ips if ipaddress.ip_interface(ip).version == 4]
    first = v4 or ips
    return first[0] if first else None


# ---------------------------------------------------------------- arithmetic


class _Subnets:
    """The subnets of spec.subnet_prefix bits in spec.cidr, numbered from 0."""

    def __init__(self, spec: NetworkSpec) -> None:
        self.net = spec.network
        self.prefix = spec.subnet_prefix
        self.size = 1 << (self.net.max_prefixlen - self.prefix)  # addresses per subnet
        self.count = 1 << (self.prefix - self.net.prefixlen)
        self.base = int(self.net.network_address)

    def at(self, index: int) -> IPNetwork:
        return type(self.net)((self.base + index * self.size, self.prefix))

    def index(self, sub: IPNetwork) -> int:
        return (int(sub.network_address) - self.base) // self.size

    def contains(self, sub: IPNetwork) -> bool:
        """sub is exactly one of these subnets."""
        return (
            sub.version == self.net.version
            and sub.prefixlen == self.prefix
            and (self.base <= int(sub.network_address) <= int(self.net.broadcast_address))
        )

    def overlaps(self, sub: IPNetwork) -> bool:
        return _overlap(self.net, sub)

    def order(self, node: str, prefer: IPNetwork | None) -> Iterator[int]:
        """prefer's index, then every index once from a start hashed from node."""
        if prefer is not None:
            yield self.index(prefer)
        start = int.from_bytes(hashlib.sha256(node.encode()).digest(), "big") % self.count
        for step in range(self.count):
            yield (start + step) % self.count


def pod_prefix(spec: NetworkSpec) -> int:
    """The prefix length of a pod's (and the gateway's) address in ``spec``'s
    network: the subnet's for a routed network, else the network's (module notes)."""
    return spec.subnet_prefix if spec.mode == "routed" else spec.network.prefixlen


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and (
        int(a.network_address) <= int(b.broadcast_address)
        and int(b.network_address) <= int(a.broadcast_address)
    )


def _subnet_of_key(key: bytes) -> IPNetwork | None:
    return _parse_network(keys.last(key).replace("_", "/"))


def _addr_scan_prefix(vni: int, sub: IPNetwork) -> bytes:
    """A key prefix under which every address key of sub lies (and maybe others).

    For IPv4 it is the subnet's whole leading octets ("10.244.3."); IPv6 text
    is compressed, so its keys share no reliable prefix and the whole network
    is read.
    """
    whole = sub.prefixlen // 8 if sub.version == 4 else 0
    head = ".".join(str(sub.network_address).split(".")[:whole])
    return keys.addrs(vni) + (head + "." if head else "").encode()


async def _settle(
    store: Store, prefix: bytes, owner: bytes, mine: bytes, scope: Callable[[bytes], bool]
) -> bytes:
    """After creating key mine for owner: the key owner keeps under prefix.

    If racing calls for the same owner each created a key, the earliest (lowest
    create revision) wins for all of them: any call that created later also
    reads later, so it sees the winner. A loser deletes its own key.
    """
    kvs, _ = await store.get_prefix(prefix)
    held = [kv for kv in kvs if kv.value == owner and scope(kv.key)]
    if not held:  # ours already gone again (lease ended): report what we made
        return mine
    winner = min(held, key=lambda kv: (kv.create_revision, kv.key))
    if winner.key != mine:
        await store.delete(mine)
    return winner.key


async def _reattach(store: Store, kv: KeyValue, lease: int) -> bool:
    """Put kv under lease, keeping its value; False if it changed meanwhile."""
    if kv.lease == lease:
        return True
    return await store.cas(kv.key, kv.mod_revision, kv.value, lease) is not None


# ---------------------------------------------------------------- subnets


async def lease_subnet(
    store: Store, spec: NetworkSpec, node: str, lease: int, *, prefer: str | None = None
) -> str:
    """The CIDR of the subnet of spec.cidr that node holds, leasing one if needed.

    Requires: lease is a live lease of store (or 0: the subnet stays until
    released); prefer, if given, is a subnet of spec.cidr of spec.subnet_prefix
    bits. Guarantees: on return, ``keys.subnet(spec.vni, cidr)`` holds node's
    name under lease, and no other node holds that subnet. A subnet node
    already held is returned (moved under lease if it was under another);
    otherwise prefer is tried first, then the free subnets (see the module
    notes). Raises CapacityError when every subnet is leased, ConfigError for a
    bad argument, ConflictError if the store kept changing under the call; the
    store's own errors pass through (``LeaseNotFound`` for a lease that is
    gone, ``StoreUnavailable``).
    """
    spec = _check_spec(spec)
    node = _name(node, "node")
    lease = _check_lease(lease)
    subnets = _Subnets(spec)
    preferred = None if prefer is None else _subnet_arg(spec, prefer, "prefer")
    prefix = keys.subnets(spec.vni)
    owner = node.encode()

    def scope(key: bytes) -> bool:
        sub = _subnet_of_key(key)
        return sub is not None and subnets.contains(sub)

    for _ in range(_ROUNDS):
        kvs, _rev = await store.get_prefix(prefix)
        taken: set[int] = set()
        odd: list[IPNetwork] = []  # leases of another size (an older spec): block what they cover
        held: list[tuple[KeyValue, IPNetwork]] = []
        for kv in kvs:
            sub = _subnet_of_key(kv.key)
            if sub is None or not subnets.overlaps(sub):
                continue
            if not subnets.contains(sub):
                odd.append(sub)
                continue
            taken.add(subnets.index(sub))
            if kv.value == owner:
                held.append((kv, sub))
        if held:
            kv, sub = min(held, key=lambda h: (h[0].create_revision, h[0].key))
            if await _reattach(store, kv, lease):
                return str(sub)
            continue  # it changed (expired, released) since the snapshot: look again
        lost = False  # a create failed: the snapshot went stale
        for index in subnets.order(node, preferred) if len(taken) < subnets.count else ():
            if index in taken:
                continue
            sub = subnets.at(index)
            if any(_overlap(sub, o) for o in odd):
                continue
            key = keys.subnet(spec.vni, str(sub))
            if await store.cas(key, 0, owner, lease) is None:
                taken.add(index)  # another node was quicker
                lost = True
                continue
            won = await _settle(store, prefix, owner, key, scope)
            won_sub = _subnet_of_key(won)
            assert won_sub is not None  # scope() parsed it
            return str(won_sub)
        if lost:  # all taken meanwhile, maybe one by a racing call for this node: look again
            continue
        raise CapacityError(
            f"network {spec.vni} ({spec.cidr}): all {subnets.count} /{spec.subnet_prefix} "
            f"subnets are leased, none left for node {node!r}; give the network a wider cidr "
            "or a longer subnet_prefix, or release the subnets of nodes that are gone"
        )
    raise ConflictError(
        f"network {spec.vni}: node {node!r}'s subnet lease changed under every one of "
        f"{_ROUNDS} attempts; try again"
    )


async def release_subnet(store: Store, vni: int, cidr: str, node: str) -> bool:
    """Give back node's subnet cidr of network vni, and every address in it.

    Returns True when node held it (it is free now), False when node does not
    hold it (nothing is changed: another node's lease is never touched). The
    addresses go first, so the subnet is never free while its addresses are
    still taken; a release cut short is completed by calling again.
    """
    vni = _check_vni(vni)
    node = _name(node, "node")
    sub = _parse_network(cidr)
    if sub is None:
        raise ConfigError("cidr", cidr, "a subnet like 10.244.3.0/24 (host bits clear)")
    key = keys.subnet(vni, str(sub))
    kv = await store.get(key)
    if kv is None or kv.value != node.encode():
        return False
    kvs, _ = await store.get_prefix(_addr_scan_prefix(vni, sub))
    for a in kvs:
        ip = _parse_address(keys.last(a.key))
        if ip is not None and ip in sub:
            await store.delete(a.key)
    return await store.delete(key)


# ---------------------------------------------------------------- addresses


class AddressAllocator:
    """Pod addresses of one network from the subnet one node holds.

    ``allocate`` and ``release`` are safe to call concurrently, also from
    several processes and for the same MAC. The allocator keeps only a hint
    (where the next walk starts); the store is the truth.
    """

    def __init__(self, store: Store, spec: NetworkSpec, node: str, subnet: str, lease: int) -> None:
        """Requires: node holds subnet (from lease_subnet) under lease."""
        self.spec = _check_spec(spec)
        self.node = _name(node, "node")
        self.subnet: IPNetwork = _subnet_arg(self.spec, subnet, "subnet")
        self.lease = _check_lease(lease)
        self._store = store
        self._base = int(self.subnet.network_address)
        # Offsets in the subnet that are handed out: not the network address,
        # not the gateway (+1), not the IPv4 broadcast (the last one).
        self._first = 2
        self._last = self.subnet.num_addresses - (2 if self.subnet.version == 4 else 1)
        self._cursor = self._first  # where the next walk starts (just after the last grant)
        self._prefix = _addr_scan_prefix(self.spec.vni, self.subnet)

    @property
    def capacity(self) -> int:
        """How many pod addresses the subnet has."""
        return self._last - self._first + 1

    @property
    def gateway(self) -> str:
        """The reserved first host of the subnet, with the pods' prefix length."""
        return self._interface(self.subnet.network_address + 1)

    def _interface(self, ip: IPAddress) -> str:
        return f"{ip}/{pod_prefix(self.spec)}"

    def _address_arg(self, value: object, field: str) -> IPAddress:
        """value ("a.b.c.d" or "a.b.c.d/<network prefix>") as an address of the subnet."""
        expected = (
            f"a pod address of subnet {self.subnet} (not its first two or, for IPv4, its "
            f"last), bare or with /{pod_prefix(self.spec)}"
        )
        if not isinstance(value, str):
            raise ConfigError(field, value, expected)
        text, slash, length = value.partition("/")
        ip = _parse_address(text)
        if (
            ip is None
            or (slash and length != str(pod_prefix(self.spec)))
            or ip.version != self.subnet.version
            or not self._first <= int(ip) - self._base <= self._last
        ):
            raise ConfigError(field, value, expected)
        return ip

    def _in_subnet(self, key: bytes) -> bool:
        ip = _parse_address(keys.last(key))
        return ip is not None and ip in self.subnet

    async def _check_holder(self) -> None:
        kv = await self._store.get(keys.subnet(self.spec.vni, str(self.subnet)))
        if kv is None or kv.value != self.node.encode():
            holder = "nobody" if kv is None else repr(kv.value.decode(errors="replace"))
            raise ConflictError(
                f"network {self.spec.vni}: node {self.node!r} no longer holds subnet "
                f"{self.subnet} (held by {holder}); lease a subnet again with lease_subnet()"
            )

    async def allocate(
        self,
        mac: str | None = None,
        *,
        want: str | None = None,
        mac_taken: Callable[[str], bool] | None = None,
    ) -> str:
        """The address ("10.244.3.2/16") of mac, reserving one if mac holds none.

        Requires: mac a unicast MAC, or None: the pod's MAC is the one its
        address derives (``mac_of``); want, if given, a pod address of the
        subnet. Guarantees: on return ``keys.addr(vni, ip)`` holds the MAC
        (mac, or ``mac_of(ip)``) under the allocator's lease and no other MAC
        holds ip; with mac None, no other address of the network holds that
        MAC either, and ``mac_taken`` (a MAC the caller knows is in use: a port,
        another node's endpoint) said no to it. A MAC that already holds an
        address of the subnet gets it back (it is the same pod asking again);
        without mac there is no such pod, so a taken want is refused. Without
        want, addresses are taken round-robin from just after the last one
        granted, so a released address is not reused at once.
        Two calls for the same MAC at once end with one address for both.
        Raises ConfigError for a bad argument, ConflictError when want is
        taken (or, without mac, its MAC is) or mac holds another address, or
        when the node no longer holds the subnet, CapacityError when the
        subnet is full.
        """
        if mac is None:
            return await self._allocate_derived(want, mac_taken or (lambda _mac: False))
        mac = _mac(mac, "mac")
        wanted = None if want is None else self._address_arg(want, "want")
        owner = mac.encode()
        vni = self.spec.vni
        await self._check_holder()
        for _ in range(_ROUNDS):
            kvs, _rev = await self._store.get_prefix(self._prefix)
            taken: dict[int, bytes] = {}
            held: list[tuple[KeyValue, IPAddress]] = []
            for kv in kvs:
                ip = _parse_address(keys.last(kv.key))
                if ip is None or ip not in self.subnet:
                    continue
                taken[int(ip) - self._base] = kv.value
                if kv.value == owner:
                    held.append((kv, ip))
            if held:
                kv, ip = min(held, key=lambda h: (h[0].create_revision, h[0].key))
                if wanted is not None and ip != wanted:
                    raise ConflictError(
                        f"network {vni}: MAC {mac} already holds {ip}; release it before "
                        f"asking for {want}"
                    )
                if await _reattach(self._store, kv, self.lease):
                    return self._interface(ip)
                continue
            if wanted is not None:
                holder = taken.get(int(wanted) - self._base)
                if holder is not None:
                    raise ConflictError(
                        f"network {vni}: address {wanted} is taken by MAC "
                        f"{holder.decode(errors='replace')}"
                    )
                key = keys.addr(vni, str(wanted))
                if await self._store.cas(key, 0, owner, self.lease) is None:
                    continue  # taken meanwhile: the next snapshot says by whom
                return await self._granted(key, owner)
            lost = False  # a create failed: the snapshot went stale
            for offset in self._order() if len(taken) < self.capacity else ():
                if offset in taken:
                    continue
                key = keys.addr(vni, str(self.subnet.network_address + offset))
                if await self._store.cas(key, 0, owner, self.lease) is None:
                    taken[offset] = b"?"  # another allocation was quicker
                    lost = True
                    continue
                self._cursor = offset + 1 if offset < self._last else self._first
                return await self._granted(key, owner)
            if lost:  # all taken meanwhile, maybe one by a racing call for this MAC: look again
                continue
            raise self._full()
        raise ConflictError(
            f"network {vni}: the addresses of MAC {mac} changed under every one of {_ROUNDS} "
            "attempts; try again"
        )

    async def _allocate_derived(self, want: str | None, mac_taken: Callable[[str], bool]) -> str:
        """``allocate`` for a pod whose MAC is derived from its address (see there)."""
        wanted = None if want is None else self._address_arg(want, "want")
        vni = self.spec.vni
        await self._check_holder()
        for _ in range(_ROUNDS):
            kvs, _rev = await self._store.get_prefix(self._prefix)
            taken: dict[int, bytes] = {}
            macs: dict[bytes, IPAddress] = {}  # MACs held by addresses (the whole network for IPv6)
            for kv in kvs:
                ip = _parse_address(keys.last(kv.key))
                if ip is None:
                    continue
                macs.setdefault(kv.value, ip)
                if ip in self.subnet:
                    taken[int(ip) - self._base] = kv.value
            if wanted is not None:
                owner = mac_of(wanted).encode()
                holder = taken.get(int(wanted) - self._base)
                if holder is not None:
                    raise ConflictError(
                        f"network {vni}: address {wanted} is taken by MAC "
                        f"{holder.decode(errors='replace')}"
                    )
                if owner in macs or mac_taken(owner.decode()):
                    raise ConflictError(
                        f"network {vni}: address {wanted} derives MAC {owner.decode()}, which "
                        "another pod holds; ask for another address, or for a MAC as well"
                    )
                key = keys.addr(vni, str(wanted))
                if await self._store.cas(key, 0, owner, self.lease) is None:
                    continue  # taken meanwhile: the next snapshot says by whom
                if await self._keeps_mac(key, owner):
                    return self._interface(wanted)
                raise ConflictError(
                    f"network {vni}: address {wanted} derives MAC {owner.decode()}, which "
                    "another pod took at the same moment; ask for another address"
                )
            lost = False  # a create failed, or a MAC was lost: the snapshot went stale
            collisions = 0
            for offset in self._order() if len(taken) < self.capacity else ():
                if offset in taken:
                    continue
                ip = self.subnet.network_address + offset
                owner = mac_of(ip).encode()
                if owner in macs or mac_taken(owner.decode()):
                    collisions += 1  # an IPv6 hash collision: this address stays free
                    if collisions > _MAC_COLLISIONS:
                        raise ConflictError(
                            f"network {vni}: {collisions} free addresses of subnet "
                            f"{self.subnet} in a row derive MACs that other pods hold; ask "
                            "for a MAC for this pod"
                        )
                    continue
                key = keys.addr(vni, str(ip))
                if await self._store.cas(key, 0, owner, self.lease) is None:
                    taken[offset] = b"?"  # another allocation was quicker
                    lost = True
                    continue
                if not await self._keeps_mac(key, owner):
                    macs[owner] = ip  # another address was quicker to the MAC
                    lost = True
                    continue
                self._cursor = offset + 1 if offset < self._last else self._first
                return self._interface(ip)
            if lost:
                continue
            raise self._full()
        raise ConflictError(
            f"network {vni}: the addresses of subnet {self.subnet} changed under every one of "
            f"{_ROUNDS} attempts; try again"
        )

    async def _keeps_mac(self, key: bytes, owner: bytes) -> bool:
        """After creating ``key`` for the derived MAC ``owner``: whether it keeps the
        MAC. The earliest key (create revision) holding a MAC keeps it; a later one
        is deleted again (two colliding IPv6 hashes created at once)."""
        kvs, _ = await self._store.get_prefix(self._prefix)
        held = [kv for kv in kvs if kv.value == owner and _parse_address(keys.last(kv.key))]
        if not held:  # ours already gone again (lease ended): report what we made
            return True
        if min(held, key=lambda kv: (kv.create_revision, kv.key)).key == key:
            return True
        await self._store.delete(key)
        return False

    def _full(self) -> CapacityError:
        return CapacityError(
            f"network {self.spec.vni} ({self.spec.cidr}): subnet {self.subnet} of node "
            f"{self.node!r} has no free address left (all {self.capacity} are taken); release "
            "addresses of pods that are gone, or give the network a shorter subnet_prefix"
        )

    def _order(self) -> Iterator[int]:
        """Every offset once, from the cursor round to just before it."""
        for step in range(self.capacity):
            yield self._first + (self._cursor - self._first + step) % self.capacity

    async def _granted(self, key: bytes, owner: bytes) -> str:
        won = await _settle(self._store, self._prefix, owner, key, self._in_subnet)
        ip = _parse_address(keys.last(won))
        assert ip is not None  # _in_subnet() parsed it
        return self._interface(ip)

    async def release(self, ip: str) -> bool:
        """Free ip ("a.b.c.d", or with the network's prefix length).

        Returns True when it was taken, False when it was free already (so a
        repeated release, as CNI DEL repeats, is harmless).
        """
        address = self._address_arg(ip, "ip")
        return await self._store.delete(keys.addr(self.spec.vni, str(address)))
