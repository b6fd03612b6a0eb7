"""The agent's loop: registers a node in the store, reads and checks what the
store holds, and has the reconcilers program it into the node.

Where each part lives. This module is the loop: the node's registration
under a lease, its own keys (its endpoints, subnet and addresses), the
watches, batches of changes, store outages and resynchronisation. Every
record read is checked in ``overlay.control.claims`` (bad data is skipped
there); the checked updates go to one reconciler per resource of the node's
tables in ``overlay.control.reconcilers`` (networks, peers; routes, gateways
and policy will join), which program only what changed. The agent reaches
the node through ``overlay.control.nodeapi``'s protocols only.

Design notes.
- **Level-triggered.** The agent keeps the desired state it read from the
  store (nodes, networks, endpoints of the networks it hosts) and, after
  every batch of changes, the reconcilers make the node's tables equal to it,
  comparing with what the node *has*: a restarted agent adopts the entries
  already programmed and removes what is stale (``reconcilers/peers.py``).
- **One apply per batch.** Every batch of events already waiting is folded
  (into the claims, then into each reconciler's ``on_update``) before one
  ``apply`` per reconciler; also when a failure, or a change of watched
  prefixes, is among them: its revision is recorded as seen, so it must not be
  dropped.
- **Tenant-scoped.** The agent reads endpoints only of the networks its node
  hosts (one watch per network); nodes and network definitions are global and
  small.
- **Liveness by lease.** The node's key, its subnet leases, addresses and
  endpoints live under one lease kept alive every ttl/3. A node that stops
  renewing disappears from the store with everything it published, and every
  peer removes its VTEP and endpoints within the TTL.
- **The store may go away.** The data plane keeps forwarding on its last
  state. The agent retries with exponential backoff, says so once (not per
  attempt), and when the store is back it resynchronises from the revision it
  last saw (a full read when that revision is compacted), re-publishing its
  own keys if its lease expired meanwhile. After a (re)connection every
  network is compared with the node once.
- **Bad data is skipped, one record at a time.** Every record is a claim that
  ``overlay.control.claims`` checks against what the store already proves
  (an endpoint's node, its subnet lease, the first claim of a MAC, an address
  or an underlay, a network's definition) before anything is programmed. A
  record refused is logged once with its key and reason and counted
  (``rejected_counts()``); everything else is still programmed, in the same
  batch.
- **Work proportional to the change.** The claims say which MACs and VTEPs a
  batch changed, and only those reach the reconcilers: one more endpoint
  costs the same with 10 or 100,000 in the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic

from overlay.control import keys, policies
from overlay.control.claims import REASONS, Claims, Rejection
from overlay.control.ipam import (
    AddressAllocator,
    is_derived,
    lease_subnet,
    mac_of,
    primary_address,
)
from overlay.control.nodeapi import HostNode, P
from overlay.control.policies import Realised
from overlay.control.reconcilers import RECONCILERS, Policies, Reconciler, ReconcilerFactory
from overlay.control.reconcilers.base import Update
from overlay.control.store import (
    Compacted,
    Event,
    KeyValue,
    LeaseNotFound,
    Store,
    StoreUnavailable,
)
from overlay.errors import ConfigError, ConflictError, OverlayError
from overlay.gateway import ROLE_GATEWAY, ROLE_LABEL
from overlay.model import NAMESPACE_LABEL, Endpoint, NodeSpec, _mac, check_named_ports, to_json
from overlay.nsenter import delete_link, link_addresses

log = logging.getLogger("overlay.agent")

# A batch of store changes that touches policies waits this long for more before
# it is programmed (and at most POLICY_SETTLE_MAX_S in all): a set written record
# by record (``overlay policy apply`` of 1,000 policies is 1,000 writes) is then
# compiled a few times, not once per record. Other batches are programmed at once.
POLICY_SETTLE_S = 0.02
POLICY_SETTLE_MAX_S = 0.25

# Stands in for a MAC not chosen yet when a new endpoint's name and labels are checked.
_ANY_MAC = "02:00:00:00:00:00"


class _Resync(Exception):
    """Internal: the set of watched prefixes changed; start watching again."""


class Agent(Generic[P]):
    """Program ``node`` from ``store`` as node ``name``, hosting ``networks`` (VNIs).

    ``node`` is an ``overlay.Node`` or anything that fits
    ``overlay.control.nodeapi.HostNode`` with ports of type P (the recording
    fake of ``overlay.testing.fakes`` fits ``NodeTables``: everything but the
    endpoint API). ``reconcilers``: the reconcilers to run, in the order they
    apply (default ``overlay.control.reconcilers.RECONCILERS``).
    """

    def __init__(
        self,
        node: HostNode[P],
        store: Store,
        name: str,
        *,
        networks: Iterable[int] = (),
        ttl: float = 10.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        reconcilers: Sequence[ReconcilerFactory] = RECONCILERS,
    ) -> None:
        hosted = tuple(sorted(set(networks) | set(getattr(node, "networks", {}))))
        # The node's port of each encapsulation, so that peers send each network
        # to the port of its own (a node without them announces its one port).
        ports = getattr(node, "tunnel_ports", {})
        self.spec = NodeSpec(
            name=name,
            underlay=str(node.underlay),
            networks=hosted,
            port=int(node.port or 0),
            vxlan_port=int(ports.get("vxlan", 0)),
            geneve_port=int(ports.get("geneve", 0)),
        )
        if not 1.0 <= ttl <= 3600:
            raise ConfigError("ttl", ttl, "1-3600 seconds")
        self.node = node
        self.store = store
        self.name = name
        self.ttl = ttl
        self.backoff = backoff
        self.lease = 0
        # The desired state, checked record by record; nodes, specs and endpoints
        # are its accepted views (endpoints: per hosted VNI, MAC -> endpoint,
        # this node's own too).
        self.claims = Claims(
            name,
            ipaddress.ip_address(str(node.underlay)),
            hosted,
            programmed=self._running_tenant,
        )
        self.nodes = self.claims.nodes
        self.specs = self.claims.specs
        self.endpoints = self.claims.endpoints
        # One per resource, in the order they apply (networks before peers).
        self.reconcilers: tuple[Reconciler, ...] = tuple(
            make(node, self.claims, name) for make in reconcilers
        )
        self.published: dict[bytes, bytes] = {}  # our own keys under the lease
        self.revisions: dict[bytes, int] = {}  # watched prefix -> last revision seen
        self.reconciles = 0
        self.synced = asyncio.Event()
        self._down = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.subnets: dict[int, str] = {}  # vni -> the subnet this node leases
        self.local: dict[tuple[int, str], Endpoint] = {}  # our endpoints (vni, mac)
        self._delegated: set[tuple[int, str]] = set()  # endpoints whose IPs we did not lease
        self._queue: asyncio.Queue[list[Event] | BaseException] | None = None
        # Called with the seconds from a batch of store changes arriving to the
        # node being programmed (overlayd's reconcile-latency metric).
        self.on_reconcile: Callable[[float], None] | None = None
        # What this node has in force per tenant, and its verification probe's
        # findings: published by report_policy.
        self.policy_report: dict[str, Realised] = {}
        self.policy_verify: dict[str, Any] = {}

    @property
    def connected(self) -> bool:
        """True while the store answers (and the agent has synchronised once)."""
        return self.synced.is_set() and not self._down

    async def set_networks(self, networks: Iterable[int]) -> None:
        """Host exactly ``networks`` from now on: re-announce the node and read the
        endpoints of new networks; networks dropped are no longer reconciled (their
        tables stay on the node until the caller removes the network)."""
        hosted = tuple(sorted(set(networks)))
        if hosted == self.spec.networks:
            return
        self.spec = dataclasses.replace(self.spec, networks=hosted)
        for vni in list(self.endpoints):
            if vni not in hosted:
                self.revisions.pop(keys.endpoints(vni), None)
                self.revisions.pop(keys.subnets(vni), None)
        self.claims.set_hosted(hosted)
        if self.lease:
            with contextlib.suppress(StoreUnavailable, LeaseNotFound):
                await self.store.put(keys.node(self.name), to_json(self.spec), self.lease)
        if self._queue is not None:
            self._queue.put_nowait(_Resync())  # watch the new set of prefixes

    # -- life cycle -----------------------------------------------------------

    async def run(self) -> None:
        """Register, keep the lease alive and reconcile until ``stop()``."""
        self._stopping = False
        keepalive = asyncio.create_task(self._keepalive(), name=f"agent-{self.name}-keepalive")
        self._tasks.append(keepalive)
        try:
            await self._sync_forever()
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop reconciling; with ``deregister``, revoke the lease (peers forget us now)."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if deregister and self.lease:
            with contextlib.suppress(OverlayError, OSError):
                await self.store.lease_revoke(self.lease)
            self.lease = 0

    # -- publishing our own keys ---------------------------------------------

    async def _register(self) -> None:
        self.lease = await self.store.lease_grant(self.ttl)
        await self.store.put(keys.node(self.name), to_json(self.spec), self.lease)
        # After a lease loss our subnets and addresses are free again: take them
        # back (the same ones where nobody took them meanwhile).
        for vni, cidr in list(self.subnets.items()):
            spec = self.specs.get(vni)
            if spec is not None:
                self.subnets[vni] = await lease_subnet(
                    self.store, spec, self.name, self.lease, prefer=cidr
                )
        for (vni, mac), ep in self.local.items():
            spec = self.specs.get(vni)
            if spec is not None and vni in self.subnets and ep.ips:
                got = await self._allocator(vni).allocate(mac, want=ep.ips[0])
                if got != ep.ips[0]:
                    log.error(
                        "agent %s: %s lost its address %s (now %s)", self.name, mac, ep.ips[0], got
                    )
        for key, value in self.published.items():
            await self.store.put(key, value, self.lease)

    async def publish(self, key: bytes, value: bytes) -> None:
        """Write one of our keys under the node's lease; re-published after a lease loss."""
        self.published[key] = value
        if self.lease:
            try:
                await self.store.put(key, value, self.lease)
            except LeaseNotFound:
                await self._register()  # writes every published key again

    async def unpublish(self, key: bytes) -> None:
        self.published.pop(key, None)
        await self.store.delete(key)

    async def publish_endpoint(self, ep: Endpoint) -> None:
        """Announce a local endpoint (a port of this node) to the cluster."""
        if ep.node != self.name:
            raise ConfigError("endpoint.node", ep.node, f"this agent's node, {self.name!r}")
        await self.publish(keys.endpoint(ep.vni, self.name, ep.mac), to_json(ep))

    async def withdraw_endpoint(self, vni: int, mac: str) -> None:
        await self.unpublish(keys.endpoint(vni, self.name, mac.lower()))

    async def _adopt(self) -> None:
        """On the first sync, take over the endpoints the store says are ours: a
        restarted agent keeps its pods (and their subnet and addresses) under its
        new lease; an endpoint whose port is gone from the node is withdrawn (and
        a record of the earlier key layout is written again in the current one)."""
        for vni in list(self.endpoints):
            for found, ep in self.claims.own(vni):
                mac = ep.mac
                key = keys.endpoint(vni, self.name, mac)
                if found != key:
                    await self.store.delete(found)  # the earlier layout
                if (vni, mac) in self.local or key in self.published:
                    continue
                net = self.node.networks.get(vni)
                if net is None or not any(p.mac == mac for p in net.ports):
                    log.info(
                        "agent %s: withdrawing %s of vni %d: no port here", self.name, mac, vni
                    )
                    await self.store.delete(key)
                    continue
                self.local[(vni, mac)] = ep
                await self.publish(key, to_json(ep))
                if vni in self.specs:
                    if vni not in self.subnets:
                        self.subnets[vni] = await lease_subnet(
                            self.store, self.specs[vni], self.name, self.lease
                        )
                    for ip in ep.ips:
                        await self._allocator(vni).allocate(mac, want=ip)

    def _allocator(self, vni: int) -> AddressAllocator:
        return AddressAllocator(
            self.store, self.specs[vni], self.name, self.subnets[vni], self.lease
        )

    async def add_endpoint(
        self,
        vni: int,
        *,
        mac: str | None = None,
        name: str = "",
        labels: dict[str, str] | None = None,
        named_ports: Mapping[str, tuple[int, str]] | None = None,
        ifname: str | None = None,
        port_security: bool = True,
        ips: Sequence[str] | None = None,
        reserve: bool = False,
        persist: bool = False,
        netns: str | None = None,
    ) -> tuple[Endpoint, P]:
        """A new pod on this node: its address, a port (TAP, ``persist`` to outlive
        the process) on the node (born in the pod's namespace ``netns`` when given:
        see ``Network.add_port``), and the endpoint announced to the cluster.
        Returns (endpoint, port).

        The address comes first, then the MAC. Addresses: one from the node's
        subnet lease of the network (leased on first use); or ``ips`` given by the
        caller, which a delegated IPAM owns; or, with ``reserve``, the one address
        in ``ips`` asked of the node's subnet lease, reserved there as if the node
        had picked it (ConfigError naming ``ips`` outside the lease, ConflictError
        when it is taken). The MAC is ``mac`` when given (ConflictError when the
        network has it already; ConfigError when it lies in a range kept for
        derived MACs and is not its own address's), otherwise the one the pod's
        address derives (``overlay.control.ipam.mac_of``): the same for the same
        address after any restart, and unique in the network.

        ``labels`` (its namespace is ``io.kubernetes.pod.namespace``) and
        ``named_ports`` (the pod's named container ports, ``{"http": (8080,
        "TCP")}``) are the pod's identity for policy, here and, through its
        record, on every node."""
        await self._hosted_and_defined(vni)
        if mac is not None:
            mac = _mac(mac, "mac")
        # The record is checked before anything is taken: a bad name, label or
        # named port (overlay.model's bounds) is refused here, not after the
        # port exists.
        ports = check_named_ports(
            dict(named_ports) if isinstance(named_ports, Mapping) else named_ports or {},
            "named_ports",
        )
        Endpoint(
            vni=vni,
            mac=mac or _ANY_MAC,
            ips=(),
            node=self.name,
            name=name,
            labels=dict(labels or {}),
            ports=ports,
        )
        given = None if ips is None else [str(ip) for ip in ips]
        if reserve and (given is None or len(given) != 1):
            raise ConfigError(
                "ips", given, "one address: the node's subnet lease gives a pod one address"
            )
        if mac is not None:
            self._check_mac(vni, mac, given)
        if given is not None and not reserve:  # a delegated IPAM's addresses
            addrs = given
            if mac is None:
                primary = primary_address(addrs)
                assert primary is not None  # at least one address (checked by the caller)
                mac = mac_of(primary)
                holder = self._mac_holder(vni, mac)
                if holder:
                    raise ConflictError(
                        f"network {vni}: address {primary} derives MAC {mac}, which {holder} "
                        "has; ask for a MAC for this pod"
                    )
            self._delegated.add((vni, mac))
        else:
            if vni not in self.subnets:
                self.subnets[vni] = await lease_subnet(
                    self.store, self.specs[vni], self.name, self.lease
                )
            want = given[0] if given is not None else None
            try:
                addr = await self._allocator(vni).allocate(
                    mac, want=want, mac_taken=lambda m: bool(self._mac_holder(vni, m))
                )
            except ConfigError as exc:
                if exc.field == "want":  # the caller's name for it
                    raise ConfigError("ips", want, exc.expected) from None
                raise
            mac = mac or mac_of(addr)
            addrs = [addr]
        try:
            self.reconcile([vni])  # the network exists on the node before its port
            # The pod's identity for policy: its namespace is its
            # io.kubernetes.pod.namespace label. When its tenant has policies,
            # the port is judged by them from its first packet: the network
            # has them in force already (reconciled above).
            port = self.node.network(vni).add_port(
                mac,
                addrs,
                ifname=ifname,
                netns=netns,
                port_security=port_security,
                persist=persist,
                namespace=(labels or {}).get(NAMESPACE_LABEL) or None,
                labels=dict(labels or {}),
                named_ports=dict(ports),
            )
        except Exception:
            await self._release(vni, mac, addrs)
            raise
        ep = Endpoint(
            vni=vni,
            mac=mac,
            ips=tuple(str(p) for p in port.ips),
            node=self.name,
            name=name,
            labels=dict(labels or {}),
            ports=ports,
        )
        self.local[(vni, ep.mac)] = ep
        await self.publish_endpoint(ep)
        return ep, port

    async def _hosted_and_defined(self, vni: int) -> None:
        """Wait for the first sync; ConfigError naming ``vni`` unless this node hosts
        it and the store defines it."""
        if vni not in self.spec.networks:
            raise ConfigError(
                "vni", vni, f"one of the networks this node hosts: {self.spec.networks}"
            )
        await asyncio.wait_for(self.synced.wait(), self.ttl * 3)
        if vni not in self.specs:
            raise ConfigError("vni", vni, "a network defined in the store (networks/<vni>)")

    async def add_gateway(
        self, vni: int, *, persist: bool = True, netns: str | None = None
    ) -> tuple[Endpoint, P]:
        """The network's gateway on this node (``Network.add_gateway``): the first
        address of the node's subnet lease with the network's prefix length, the MAC
        that address derives, a TAP ``ovg<vni>`` in the node's namespace, announced
        like an endpoint (named "gateway") so every node's ARP/ND suppression
        answers for it. A TAP of that name left by an earlier run is taken back
        when it holds the same address (no gap for connections through it), and
        made again when it does not. ``netns``: where the TAP lives when not in the
        node's namespace (an isolated gateway's router namespace). Returns
        (endpoint, port)."""
        await self._hosted_and_defined(vni)
        ifname = f"ovg{vni}"
        where = netns or self.node.netns
        found = await asyncio.to_thread(link_addresses, where, ifname)
        if vni not in self.subnets:
            size = self.specs[vni].subnet_prefix
            prefer = str(ipaddress.ip_interface(f"{found[0].ip}/{size}").network) if found else None
            self.subnets[vni] = await lease_subnet(
                self.store, self.specs[vni], self.name, self.lease, prefer=prefer
            )
        addr = self._allocator(vni).gateway
        attach = found is not None and ipaddress.ip_interface(addr) in found
        if found is not None and not attach:
            await asyncio.to_thread(delete_link, where, ifname)
        mac = mac_of(addr)
        self.reconcile([vni])
        net = self.node.network(vni)
        port = await asyncio.to_thread(
            net.add_gateway,
            mac,
            [addr],
            ifname=ifname,
            persist=persist,
            attach=attach,
            netns=netns,
        )
        ep = Endpoint(
            vni=vni,
            mac=mac,
            ips=(addr,),
            node=self.name,
            name="gateway",
            labels={ROLE_LABEL: ROLE_GATEWAY},
        )
        self.local[(vni, mac)] = ep
        await self.publish_endpoint(ep)
        return ep, port

    async def remove_gateway(self, vni: int) -> None:
        """Withdraw the network's gateway on this node and delete its TAP."""
        net = self.node.networks.get(vni)
        gw = net.gateway if net is not None else None
        if gw is None:
            return
        self.local.pop((vni, gw.mac), None)
        await self.withdraw_endpoint(vni, gw.mac)
        if net is not None:
            net.remove_port(gw)

    def _mac_holder(self, vni: int, mac: str) -> str:
        """Who has ``mac`` in network ``vni`` as far as this node knows ("" when
        nobody): a port of this node, one of its endpoints, another node's endpoint
        (the store's, as checked) or a remote the node was given."""
        net = self.node.networks.get(vni)
        if net is not None and any(p.mac == mac for p in net.ports):
            return "a port of this node"
        ep = self.local.get((vni, mac)) or self.endpoints.get(vni, {}).get(mac)
        if ep is not None:
            return f"endpoint {ep.name or '(unnamed)'} on node {ep.node}"
        if net is not None and mac in net.remotes:
            return "a remote endpoint of this node's table"
        return ""

    def _check_mac(self, vni: int, mac: str, ips: Sequence[str] | None) -> None:
        """A MAC asked for: free in the network, and outside the derived ranges
        unless it is the one its own address derives (see ``overlay.control.ipam``)."""
        if is_derived(mac):
            primary = primary_address(ips or ())
            if primary is None or mac != mac_of(primary):
                raise ConfigError(
                    "mac",
                    mac,
                    "a unicast MAC outside 0a:58:00:00:00:00/16 and 0e:00:00:00:00:00/8, "
                    "which overlay keeps for MACs derived from addresses; or no MAC, to get "
                    "the one derived from the pod's address",
                )
        holder = self._mac_holder(vni, mac)
        if holder:
            raise ConflictError(
                f"network {vni}: MAC {mac} is in use by {holder}; ask for another MAC, or for "
                "none to get the one derived from the pod's address"
            )

    async def register_endpoint(self, ep: Endpoint, *, delegated: bool = False) -> None:
        """Announce an endpoint whose port the node already has (a restarted daemon
        re-attached it): its address is taken again from the node's subnet lease
        unless a delegated IPAM owns it."""
        await asyncio.wait_for(self.synced.wait(), self.ttl * 3)
        if delegated:
            self._delegated.add((ep.vni, ep.mac))
        elif ep.vni in self.specs:
            if ep.vni not in self.subnets:
                size = self.specs[ep.vni].subnet_prefix
                prefer = (
                    str(
                        ipaddress.ip_interface(
                            f"{ipaddress.ip_interface(ep.ips[0]).ip}/{size}"
                        ).network
                    )
                    if ep.ips
                    else None
                )
                self.subnets[ep.vni] = await lease_subnet(
                    self.store, self.specs[ep.vni], self.name, self.lease, prefer=prefer
                )
            for ip in ep.ips:
                await self._allocator(ep.vni).allocate(ep.mac, want=ip)
        self.local[(ep.vni, ep.mac)] = ep
        await self.publish_endpoint(ep)

    async def _release(self, vni: int, mac: str, ips: Iterable[str]) -> None:
        if (vni, mac) in self._delegated:
            self._delegated.discard((vni, mac))
            return  # the delegated IPAM owns these addresses
        if vni in self.subnets and vni in self.specs:
            for ip in ips:
                await self._allocator(vni).release(ip)

    async def remove_endpoint(self, vni: int, mac: str) -> None:
        """Withdraw a pod of this node: endpoint, port and address."""
        mac = mac.lower()
        ep = self.local.pop((vni, mac), None)
        await self.withdraw_endpoint(vni, mac)
        net = self.node.networks.get(vni)
        for p in list(net.ports) if net is not None else []:
            if p.mac == mac and net is not None:
                net.remove_port(p)
        if ep:
            await self._release(vni, mac, ep.ips)

    async def _keepalive(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.ttl / 3)
            if not self.lease:
                continue
            try:
                alive = await self.store.lease_keepalive(self.lease)
                if not alive:
                    log.warning("agent %s: lease expired; registering again", self.name)
                    await self._register()
            except LeaseNotFound:
                await self._register()
            except StoreUnavailable:
                self._went_down()
            except Exception:  # keep renewing whatever happens
                log.exception("agent %s: keepalive failed", self.name)

    # -- reading desired state -------------------------------------------------

    def _prefixes(self) -> list[bytes]:
        """Nodes, networks, policies and namespaces (global, small: every tenant's
        policies are read, those of tenants without a network here are never
        compiled); per hosted network its subnet leases (what an endpoint's
        addresses are checked against) and its endpoints."""
        per_network = [(keys.subnets(v), keys.endpoints(v)) for v in self.spec.networks]
        return [keys.NODES, keys.NETWORKS, keys.POLICIES, keys.NAMESPACES] + [
            p for pair in per_network for p in pair
        ]

    def _went_down(self) -> None:
        if not self._down:
            log.warning(
                "agent %s: store unavailable; forwarding on last state, retrying", self.name
            )
            self._down = True

    async def _sync_forever(self) -> None:
        delay = self.backoff[0]
        while not self._stopping:
            try:
                if not self.lease:
                    await self._register()
                await self._sync_once()
            except StoreUnavailable:
                self._went_down()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.backoff[1])
                continue
            except Compacted as exc:
                log.info("agent %s: %s; reading everything again", self.name, exc)
                self.revisions.clear()
                continue
            except _Resync:
                continue
            except asyncio.CancelledError:
                raise
            delay = self.backoff[0]

    async def _sync_once(self) -> None:
        """Read (or resume) every prefix, then watch them all until something fails."""
        queue: asyncio.Queue[list[Event] | BaseException] = asyncio.Queue()
        self._queue = queue
        watchers: list[asyncio.Task[None]] = []
        try:
            if self._down:
                await self.store.get(keys.VERSION_KEY)  # raises while it is still down
            for prefix in self._prefixes():
                start = self.revisions.get(prefix)
                if start is None:
                    kvs, rev = await self.store.get_prefix(prefix)
                    self._load(prefix, kvs)
                    self.revisions[prefix] = rev
                    start = rev
                watchers.append(asyncio.create_task(self._watch(prefix, start + 1, queue)))
            if self._down:
                log.warning("agent %s: store back; resynchronised", self.name)
                self._down = False
            if not self.synced.is_set():
                await self._adopt()
            # (Re)connected: compare every network with the node once.
            self.claims.mark_full()
            self.reconcile()
            await self.report_policy()
            self.synced.set()
            while True:
                item = await queue.get()
                began = time.monotonic()
                # Every batch already waiting is applied, also when a failure (or
                # a change of watched prefixes) is among them: its revision is
                # recorded as seen, so it must not be dropped.
                failure: BaseException | None = None
                policy = False
                settle_until = began + POLICY_SETTLE_MAX_S
                while True:
                    if isinstance(item, BaseException):
                        failure = failure or item
                    else:
                        self._apply(item)
                        policy = policy or _touches_policy(item)
                    if queue.empty():
                        # A policy set written record by record arrives in many
                        # batches; each would compile the whole set again. Wait
                        # a moment for the rest (see POLICY_SETTLE_S).
                        if not policy or failure is not None or time.monotonic() > settle_until:
                            break
                        try:
                            item = await asyncio.wait_for(queue.get(), POLICY_SETTLE_S)
                        except TimeoutError:
                            break
                        continue
                    item = queue.get_nowait()
                self.reconcile()
                if failure is not None:
                    raise failure
                await self.report_policy()
                if self.on_reconcile is not None:
                    self.on_reconcile(time.monotonic() - began)
        finally:
            self._queue = None
            for w in watchers:
                w.cancel()
            for w in watchers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w

    async def _watch(
        self, prefix: bytes, start: int, queue: asyncio.Queue[list[Event] | BaseException]
    ) -> None:
        watch = self.store.watch(prefix, start)
        try:
            async for events in watch:
                if events:
                    self.revisions[prefix] = max(e.mod_revision for e in events)
                queue.put_nowait(events)
            queue.put_nowait(StoreUnavailable(f"watch of {prefix!r} ended"))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)
        finally:
            with contextlib.suppress(Exception):
                await watch.aclose()

    def _load(self, prefix: bytes, kvs: list[KeyValue]) -> None:
        """Replace what is known under prefix with a full read."""
        self.claims.load(prefix, kvs)

    def _apply(self, events: list[Event]) -> None:
        """Fold events into the desired state (``reconcile`` programs what changed)."""
        for ev in events:
            self.claims.apply(ev)

    def _running_tenant(self, vni: int) -> str | None:
        net = self.node.networks.get(vni)
        return None if net is None else str(net.tenant)

    # -- what was refused -------------------------------------------------------

    def rejections(self) -> list[Rejection]:
        """The store records refused now (key, revision, reason, detail), by key."""
        return sorted(self.claims.rejected.values(), key=lambda r: r.key)

    def rejected_counts(self) -> dict[str, dict[str, int]]:
        """Refusals by reason: ``total`` since start (only grows) and ``current``
        (records refused now); every reason of ``claims.REASONS`` is present."""
        return {
            "total": {r: self.claims.rejected_total[r] for r in REASONS},
            "current": {r: self.claims.rejected_now[r] for r in REASONS},
        }

    # -- programming the node --------------------------------------------------

    def reconcile(self, vnis: Iterable[int] | None = None) -> None:
        """Program what changed in the desired state since the last call, and make
        sure each of ``vnis`` (default: all hosted) exists on the node once it is
        defined in the store. Costs O(the changes), not O(the tables)."""
        hosted = self.spec.networks
        for vni in hosted:
            net = self.node.networks.get(vni)
            if net is not None:  # what is local wins over others' claims
                self.claims.set_ports(
                    vni,
                    {p.mac for p in net.ports},
                    {getattr(ip, "ip", ip) for p in net.ports for ip in p.ips},
                )
        # The checked updates of the batch, to every reconciler (each takes the
        # kinds it handles), then one apply each, in order.
        updates: list[Update] = [*self.claims.settle().values(), *self.claims.settle_policies()]
        for update in updates:
            for r in self.reconcilers:
                r.on_update(update)
        wanted = set(hosted if vnis is None else vnis)
        # Policy tables are compiled once per network at the batch's end, not
        # once per remote programmed (``Node.policy_batch``).
        batch = getattr(self.node, "policy_batch", None)
        with batch() if batch is not None else contextlib.nullcontext():
            for r in self.reconcilers:
                r.apply(hosted, wanted)
        self.reconciles += 1
        self._note_realised()

    # -- what policy is in force here -------------------------------------------

    def _note_realised(self) -> None:
        """Fold the policy reconciler's realised sets into this node's report:
        a tenant whose set in force changed gets the store revision read now."""
        pol = next((r for r in self.reconcilers if isinstance(r, Policies)), None)
        if pol is None:
            return
        revision = max(self.revisions.get(keys.POLICIES, 0), self.revisions.get(keys.NAMESPACES, 0))
        report: dict[str, Realised] = {}
        for tenant, (digest, ports, vnis) in pol.realised.items():
            have = self.policy_report.get(tenant)
            if have is not None and (have.hash, have.ports, have.networks) == (
                digest,
                ports,
                vnis,
            ):
                report[tenant] = have
            else:
                report[tenant] = Realised(digest, revision, time.time(), vnis, ports)
        self.policy_report = report

    async def report_policy(self, verify: Mapping[str, Any] | None = None) -> None:
        """Publish what this node has in force (``policy-status/<node>``, under
        the node's lease) when it changed; ``verify``: the verification probe's
        findings per tenant, kept until given again."""
        if verify is not None:
            self.policy_verify = dict(verify)
        if not self.policy_report and not self.policy_verify:
            return
        value = policies.status_value(self.policy_report, self.policy_verify)
        key = keys.policy_status(self.name)
        if self.published.get(key) != value:
            await self.publish(key, value)


def _touches_policy(events: list[Event]) -> bool:
    return any(e.key.startswith((keys.POLICIES, keys.NAMESPACES)) for e in events)
