"""Which store records a node may program: every record is a claim, checked and ordered.

Why. Anyone who can write to the store can write any record: a bug, a
misconfigured node, a hostile one. Before this module a single bad record
stopped a whole network (an address already in use raised out of the
reconcile and nothing after it was programmed), and a record could claim
what was not its own (another node's pod MAC, diverting its traffic; this
node's own underlay). Here each record is a *claim* checked against what the
store already proves, and a bad one is skipped on its own: logged once,
counted by reason, and everything else is still programmed.

Design notes.

- **What a record may claim.**
  * An endpoint (``endpoints/<vni>/<node>/<mac>``) belongs to the node in its
    key: the value must name the same node, VNI and MAC. Each of its
    addresses lies in a subnet the store leases to that node
    (``subnets/<vni>/<subnet>`` = node, created by compare-and-swap), or in
    no leased subnet at all: the address of a delegated IPAM, which only has
    to be unique. Its node must be an accepted member of the network.
  * A node (``nodes/<name>``) has an underlay of this node's address family,
    never this node's own underlay, and one no other node claimed first.
  * A network's definition (``networks/<vni>``) does not change while this
    node runs the network: a record rewriting its tenant, CIDR, subnet size
    or learning is refused and the network keeps running as it was defined;
    nothing is torn down and no tenants are merged. Once the node no longer
    has the network (overlayd removes it on a reload), a new one is accepted.
- **First claim wins, in the store's own order.** Claims of one MAC, one
  address or one underlay are ordered by (create revision, key). That order
  is the store's, the same on every node whatever order its watches
  delivered the events in, and the same after an agent restart (a full read
  carries the same create revisions as the watch did). A record rewritten in
  place keeps its create revision, so its place. When the first claimant
  goes away (deleted, its node gone, or itself refused), the next valid
  claim takes over. This node's own ports always win *on this node*: a
  record cannot unplug a pod that is here.
- **Pending is not refused.** An endpoint whose node is not known yet, or
  does not (yet) list the network, waits unprogrammed and uncounted: watches
  of different prefixes deliver in their own order.
- **Refusals.** A refused record is logged once per (key, revision, reason)
  with its key and why, counted by reason (``rejected_total``, never going
  down) and held in ``rejected`` (the records refused now, by key; its size
  is bounded by the live keys, not by history). ``REASONS`` is the list.
- **Cost proportional to the change.** ``apply`` records what a change
  touches (MACs, addresses, underlays, subnets) and ``settle`` re-decides only
  those and the claims that contend with them, through indexes kept as
  records come and go: claims by MAC, by node, by subnet; winners' MACs by
  address; nodes by underlay. One endpoint change costs O(its claims and
  addresses), whatever the size of the table; a node change costs O(its
  endpoints); a new subnet lease O(the claims inside it). Only a new network
  definition, a first read and a resynchronisation re-decide a whole network.
- **Records are refused before they cost memory.** ``overlay.model`` bounds
  each value and field; what is refused keeps only a ``Rejection`` (key,
  revision, reason, a short detail).

Known limits. A key holds one value, so two writers of the *same* key (a
subnet lease, a node's key) overwrite each other and no order is left to
compare: that is what store permissions are for, and this layout lets them
give each node its own key spaces. A create revision changes when a key is
deleted and written again, so a node whose lease expired comes back behind
claims made meanwhile.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

from overlay.control import keys, policies
from overlay.control.store import Event, KeyValue
from overlay.errors import ConfigError
from overlay.model import _NAME_RE, Endpoint, NetworkSpec, NodeSpec, TooLarge, from_json
from overlay.policy.engine import PolicySet
from overlay.policy.model import AdminNetworkPolicy, BaselineAdminNetworkPolicy, NetworkPolicy

log = logging.getLogger("overlay.agent")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Every reason a record is refused, with what it means (the metric's help).
REASONS: dict[str, str] = {
    "bad_key": "the key does not follow the store's layout (overlay.control.keys)",
    "malformed": "the value does not decode, or a field of it is invalid",
    "too_large": "the value or a field of it is over its bound (overlay.model)",
    "key_mismatch": "the value contradicts its key (its name, VNI, node or MAC)",
    "underlay_family": "a node's underlay is not of this node's address family",
    "underlay_self": "a node claims this node's own underlay address",
    "underlay_conflict": "another node claimed the same underlay address first",
    "node_rejected": "an endpoint of a node whose own record is refused",
    "address_not_leased": "an endpoint's address lies in a subnet leased to another node",
    "mac_conflict": "another endpoint claimed the MAC first, or a local port has it",
    "address_conflict": "another endpoint claimed an address first, or a local port has it",
    "network_redefined": "a network's definition changed while this node runs the network",
}

_PENDING = ("", "")  # not programmed, not refused: waiting for its node


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A record refused now: its key, the revision refused, why."""

    key: bytes
    revision: int
    reason: str  # one of REASONS
    detail: str


@dataclasses.dataclass(frozen=True)
class Remote:
    """What the node should hold for one remote MAC: its VTEP, addresses and UDP port."""

    vtep: IPAddress
    ips: tuple[IPAddress, ...]
    port: int


@dataclasses.dataclass(frozen=True)
class PolicyChanges:
    """Tenant ``tenant``'s policies or namespaces changed (or are to be compared
    with the node again): the update the policy reconciler folds."""

    tenant: str


@dataclasses.dataclass(frozen=True)
class TenantPolicies:
    """One tenant's accepted policy records, as the policy reconciler reads
    them: the checked ``PolicySet``, the namespaces' labels, the set's hash
    (``overlay.control.policies.set_hash``) and whether there is anything."""

    policies: PolicySet
    namespaces: Mapping[str, Mapping[str, str]]
    hash: str
    empty: bool


@dataclasses.dataclass
class NetChanges:
    """What changed in network ``vni``'s checked records: the update the
    reconcilers fold (``overlay.control.reconcilers``). ``full``: everything
    (``remotes`` and ``vteps`` are the whole desired tables; anything else on the
    node goes). Otherwise only the entries named: a MAC (or VTEP) mapped to None
    is not wanted."""

    vni: int
    full: bool = False
    remotes: dict[str, Remote | None] = dataclasses.field(default_factory=dict)
    vteps: dict[IPAddress, int | None] = dataclasses.field(default_factory=dict)


class _Claim:
    """One endpoint record that decoded and agrees with its key."""

    __slots__ = ("key", "ep", "node", "created", "revision", "ips")

    def __init__(self, key: bytes, ep: Endpoint, node: str, created: int, revision: int) -> None:
        self.key = key
        self.ep = ep
        self.node = node
        self.created = created
        self.revision = revision
        self.ips = tuple(ipaddress.ip_address(ip.partition("/")[0]) for ip in ep.ips)

    @property
    def order(self) -> tuple[int, bytes]:
        return (self.created, self.key)


class _NodeClaim:
    __slots__ = ("key", "spec", "order", "revision", "underlay")

    def __init__(self, key: bytes, spec: NodeSpec, created: int, revision: int) -> None:
        self.key = key
        self.spec = spec
        self.order = (created, key)
        self.revision = revision
        self.underlay = ipaddress.ip_address(spec.underlay)


# A subnet as (IP version, prefix length, the address's top prefix-length bits):
# cheaper to make per lookup than an ip_network.
_Sub = tuple[int, int, int]


def _sub_of(ip: IPAddress, plen: int) -> _Sub:
    return (ip.version, plen, int(ip) >> (ip.max_prefixlen - plen))


def _sub_text(sub: _Sub) -> str:
    version, plen, top = sub
    bits = 32 if version == 4 else 128
    return str(ipaddress.ip_network((top << (bits - plen), plen)))


class _Net:
    """The claims of one hosted network and the indexes over them.

    Memory matters at 100,000 endpoints: where nearly every entry has one
    member, ``claims`` holds the claim itself and ``holders`` the MAC itself,
    and only a conflict makes a dict (a set) of them.
    """

    def __init__(self, vni: int) -> None:
        self.vni = vni
        # MAC -> another node's claim, or {key: claim} when several claim it
        self.claims: dict[str, _Claim | dict[bytes, _Claim]] = {}
        self.by_key: dict[bytes, _Claim] = {}  # every claim, ours too
        self.by_node: dict[str, set[bytes]] = {}  # node -> keys of its claims
        self.own_macs: Counter[str] = Counter()  # this node's claims
        self.own_addrs: Counter[IPAddress] = Counter()
        self.port_macs: set[str] = set()  # this node's ports, as the agent last saw them
        self.port_addrs: set[IPAddress] = set()
        self.leases: dict[_Sub, str] = {}  # subnet -> the node the store leases it to
        self.lease_keys: dict[bytes, _Sub] = {}
        self.lease_revs: dict[bytes, int] = {}
        self.lens: Counter[tuple[int, int]] = Counter()  # (version, prefix length) of leases
        self.in_sub: dict[_Sub, set[bytes]] = {}  # subnet -> claims with an address in it
        self.winner: dict[str, _Claim] = {}  # MAC -> its first valid claim
        # address -> the MAC (or MACs) whose winner claims it
        self.holders: dict[IPAddress, str | set[str]] = {}
        self.accepted: dict[str, _Claim] = {}  # MAC -> the claim programmed
        self.dirty: set[str] = set()  # MACs to decide again
        self.dirty_ips: set[IPAddress] = set()  # addresses whose holders to decide again
        self.dirty_vteps: set[IPAddress] = set()
        self.full = True  # decide and program everything at the next settle

    def group(self, mac: str) -> tuple[_Claim, ...]:
        """The claims of mac (other nodes')."""
        g = self.claims.get(mac)
        if g is None:
            return ()
        return (g,) if isinstance(g, _Claim) else tuple(g.values())

    def add_claim(self, c: _Claim) -> None:
        mac = c.ep.mac
        g = self.claims.get(mac)
        if g is None:
            self.claims[mac] = c
        elif isinstance(g, _Claim):
            self.claims[mac] = {g.key: g, c.key: c}
        else:
            g[c.key] = c

    def remove_claim(self, c: _Claim) -> None:
        mac = c.ep.mac
        g = self.claims[mac]
        if isinstance(g, _Claim):
            del self.claims[mac]
            return
        del g[c.key]
        if len(g) == 1:
            self.claims[mac] = next(iter(g.values()))

    def holding(self, ip: IPAddress) -> tuple[str, ...] | set[str]:
        """The MACs whose winners claim ip."""
        h = self.holders.get(ip)
        if h is None:
            return ()
        return (h,) if isinstance(h, str) else h

    def hold(self, ip: IPAddress, mac: str) -> None:
        h = self.holders.get(ip)
        if h is None:
            self.holders[ip] = mac
        elif isinstance(h, str):
            if h != mac:
                self.holders[ip] = {h, mac}
        else:
            h.add(mac)

    def release(self, ip: IPAddress, mac: str) -> None:
        h = self.holders.get(ip)
        if isinstance(h, str):
            if h == mac:
                del self.holders[ip]
        elif h is not None:
            h.discard(mac)
            if len(h) == 1:
                self.holders[ip] = next(iter(h))

    def local_mac(self, mac: str) -> bool:
        return mac in self.port_macs or self.own_macs[mac] > 0

    def local_addr(self, ip: IPAddress) -> bool:
        return ip in self.port_addrs or self.own_addrs[ip] > 0

    def index(self, c: _Claim, add: bool) -> None:
        """Add c to (or remove it from) the subnet index, for every lease size present."""
        for version, plen in self.lens:
            for ip in c.ips:
                if ip.version != version:
                    continue
                sub = _sub_of(ip, plen)
                if add:
                    self.in_sub.setdefault(sub, set()).add(c.key)
                else:
                    group = self.in_sub.get(sub)
                    if group is not None:
                        group.discard(c.key)
                        if not group:
                            del self.in_sub[sub]


class Claims:
    """The desired state of one node, from store records that may be wrong or hostile.

    ``me`` and ``underlay``: this node's name and underlay address. ``hosted``:
    the VNIs whose endpoints are read. ``programmed(vni)``: the tenant of the
    network as the node runs it now, or None when the node does not have it.

    Feed it with ``apply(event)`` / ``load(prefix, kvs)``; ``settle()`` then
    returns what to program per network. ``nodes``, ``specs`` and
    ``endpoints`` are the accepted views (``endpoints`` holds this node's own
    endpoints too); ``rejected`` the records refused now.
    """

    def __init__(
        self,
        me: str,
        underlay: IPAddress,
        hosted: Iterable[int],
        *,
        programmed: Callable[[int], str | None],
    ) -> None:
        self.me = me
        self.underlay = underlay
        self.programmed = programmed
        self.nodes: dict[str, NodeSpec] = {}  # accepted members (never this node)
        self.specs: dict[int, NetworkSpec] = {}  # accepted network definitions
        self.endpoints: dict[int, dict[str, Endpoint]] = {}  # per hosted VNI: MAC -> endpoint
        self.rejected: dict[bytes, Rejection] = {}
        self.rejected_total: Counter[str] = Counter()  # refusals ever, by reason
        self.rejected_now: Counter[str] = Counter()  # len(rejected), by reason
        self._node_claims: dict[str, _NodeClaim] = {}
        self._by_underlay: dict[IPAddress, set[str]] = {}  # underlay -> names claiming it
        self._member: dict[IPAddress, str] = {}  # underlay -> the accepted node
        self._dirty_nodes: set[str] = set()
        self._pinned: dict[int, NetworkSpec] = {}  # last accepted definition per VNI
        self.nets: dict[int, _Net] = {}
        # Policies and namespaces, per tenant: key -> (value, checked object, revision).
        self.policy_records: dict[str, dict[bytes, tuple[bytes, policies.Object, int]]] = {}
        self._dirty_tenants: set[str] = set()
        self._tenant_views: dict[str, TenantPolicies] = {}
        # The dispatch table: the kind of a record (its key's top-level prefix,
        # ``keys.kind``) -> the check that folds it. A new kind of record is one
        # check and one line here, and its prefix in the agent's watches.
        self._checks: dict[bytes, Callable[[Event], None]] = {
            keys.NODES: self._node_event,
            keys.NETWORKS: self._network_event,
            keys.SUBNETS: self._subnet_event,
            keys.ENDPOINTS: self._endpoint_event,
            keys.POLICIES: self._policy_event,
            keys.NAMESPACES: self._policy_event,
        }
        self.set_hosted(hosted)

    # -- what is hosted --------------------------------------------------------

    def set_hosted(self, vnis: Iterable[int]) -> None:
        """Read endpoints of exactly ``vnis`` from now on (new ones start empty)."""
        want = set(vnis)
        for vni in list(self.nets):
            if vni not in want:
                net = self.nets.pop(vni)
                for key in list(net.by_key) + list(net.lease_keys):
                    self._clear(key)
                for key in [k for k in self.rejected if _in_network(k, vni)]:
                    self._clear(key)
                del self.endpoints[vni]
        for vni in want:
            if vni not in self.nets:
                self.nets[vni] = _Net(vni)
                self.endpoints[vni] = {}

    def mark_full(self) -> None:
        """Decide and program every hosted network in full at the next settle."""
        for net in self.nets.values():
            net.full = True
        self._dirty_tenants.update(self.policy_records)

    # -- records in ------------------------------------------------------------

    def load(self, prefix: bytes, kvs: Iterable[KeyValue]) -> None:
        """A full read of prefix: what is gone from it is deleted, what changed is put."""
        fresh = {kv.key: kv for kv in kvs}
        for key, revision in list(self._known(prefix)):
            kv = fresh.get(key)
            if kv is None:
                self.apply(Event("delete", key, b"", 0))
            elif kv.mod_revision == revision:
                del fresh[key]  # unchanged
        for kv in fresh.values():
            self.apply(Event("put", kv.key, kv.value, kv.mod_revision, kv.create_revision))

    def _known(self, prefix: bytes) -> Iterator[tuple[bytes, int]]:
        """Every key under prefix this holds (accepted, pending or refused), with its revision."""
        for key, r in self.rejected.items():
            if key.startswith(prefix):
                yield key, r.revision
        if prefix == keys.NODES:
            for nc in self._node_claims.values():
                if nc.key not in self.rejected:
                    yield nc.key, nc.revision
        elif prefix in (keys.POLICIES, keys.NAMESPACES):
            for recs in self.policy_records.values():
                for key, (_, _, revision) in recs.items():
                    if key.startswith(prefix) and key not in self.rejected:
                        yield key, revision
        elif prefix == keys.NETWORKS:
            for vni in self.specs:
                key = keys.network(vni)
                if key not in self.rejected:
                    yield key, -1  # always re-read: a definition is small
        else:
            for net in self.nets.values():
                if prefix.startswith(keys.endpoints(net.vni)):
                    for key, c in net.by_key.items():
                        if key not in self.rejected:
                            yield key, c.revision
                elif prefix.startswith(keys.subnets(net.vni)):
                    for key in net.lease_keys:
                        if key not in self.rejected:
                            yield key, net.lease_revs[key]

    def apply(self, ev: Event) -> None:
        """Fold one store change in; ``settle`` decides what it changes. A key of a
        kind with no check is ignored (a retired kind such as ``tenants/``)."""
        check = self._checks.get(keys.kind(ev.key))
        if check is not None:
            check(ev)

    def _decode(self, cls: type, ev: Event) -> object | None:
        try:
            return from_json(cls, ev.value)
        except TooLarge as exc:
            self._reject(ev.key, ev.mod_revision, "too_large", str(exc))
        except ConfigError as exc:
            self._reject(ev.key, ev.mod_revision, "malformed", str(exc))
        return None

    def _node_event(self, ev: Event) -> None:
        name = ev.key[len(keys.NODES) :].decode(errors="replace")
        if not _NAME_RE.fullmatch(name):
            self._bad_key(ev, "nodes/<name>")
            return
        if name == self.me:
            return  # our own record: we wrote it
        self._drop_node(name)
        if ev.kind == "delete":
            self._clear(ev.key)
            return
        spec = self._decode(NodeSpec, ev)
        if not isinstance(spec, NodeSpec):
            return
        if spec.name != name:
            self._reject(ev.key, ev.mod_revision, "key_mismatch", f"names node {spec.name!r}")
            return
        c = _NodeClaim(ev.key, spec, ev.create_revision, ev.mod_revision)
        self._node_claims[name] = c
        self._by_underlay.setdefault(c.underlay, set()).add(name)

    def _drop_node(self, name: str) -> None:
        old = self._node_claims.pop(name, None)
        self._dirty_nodes.add(name)
        if old is not None:
            group = self._by_underlay[old.underlay]
            group.discard(name)
            if not group:
                del self._by_underlay[old.underlay]
            self._dirty_underlay(old.underlay)

    def _dirty_underlay(self, underlay: IPAddress) -> None:
        """Every claimant of underlay is decided again (one leaving lets the next in)."""
        self._dirty_nodes.update(self._by_underlay.get(underlay, ()))
        member = self._member.get(underlay)
        if member is not None:
            self._dirty_nodes.add(member)

    def _network_event(self, ev: Event) -> None:
        text = ev.key[len(keys.NETWORKS) :]
        if not (text.isdigit() and len(text) <= 8):
            self._bad_key(ev, "networks/<vni>")
            return
        vni = int(text)
        if ev.kind == "delete":
            self._clear(ev.key)
            self.specs.pop(vni, None)  # the node keeps what it has; new pods wait
            return
        spec = self._decode(NetworkSpec, ev)
        if not isinstance(spec, NetworkSpec):
            return
        if spec.vni != vni:
            self._reject(ev.key, ev.mod_revision, "key_mismatch", f"defines vni {spec.vni}")
            return
        running = self.programmed(vni)
        pinned = self._pinned.get(vni)
        if running is not None and (
            (pinned is not None and spec != pinned) or (pinned is None and spec.tenant != running)
        ):
            was = pinned if pinned is not None else f"tenant {running!r}"
            self._reject(
                ev.key,
                ev.mod_revision,
                "network_redefined",
                f"vni {vni} runs here as {was}; it keeps running so (remove the network "
                "from the node to redefine it)",
            )
            return
        self._accept(ev.key)
        if self.specs.get(vni) != spec and vni in self.nets:
            self.nets[vni].full = True
        self.specs[vni] = self._pinned[vni] = spec

    def _endpoint_event(self, ev: Event) -> None:
        parsed = keys.parse_endpoint(ev.key)
        if parsed is None:
            if keys.vni_of(ev.key, keys.ENDPOINTS) in self.nets:
                self._bad_key(ev, "endpoints/<vni>/<node>/<mac>")
            return
        vni, key_node, mac = parsed
        net = self.nets.get(vni)
        if net is None:
            return  # a network we do not host
        self._drop_claim(net, ev.key)
        if ev.kind == "delete":
            self._clear(ev.key)
            return
        ep = self._decode(Endpoint, ev)
        if not isinstance(ep, Endpoint):
            return
        if ep.vni != vni or ep.mac != mac or (key_node is not None and ep.node != key_node):
            self._reject(
                ev.key,
                ev.mod_revision,
                "key_mismatch",
                f"says vni {ep.vni}, node {ep.node!r}, mac {ep.mac}",
            )
            return
        mac = ep.mac  # the value's string (equal): the key's is not kept
        c = _Claim(ev.key, ep, ep.node, ev.create_revision, ev.mod_revision)
        net.by_key[c.key] = c
        net.dirty.add(mac)
        net.dirty_ips.update(c.ips)
        if c.node == self.me:
            # Ours: a local endpoint. It is not programmed as a remote; it makes
            # its MAC and addresses local, which win over others' claims here.
            self._accept(c.key)
            net.own_macs[mac] += 1
            net.own_addrs.update(c.ips)
            self.endpoints[vni][mac] = ep
            return
        net.add_claim(c)
        net.by_node.setdefault(c.node, set()).add(c.key)
        net.index(c, True)

    def _drop_claim(self, net: _Net, key: bytes) -> None:
        c = net.by_key.pop(key, None)
        if c is None:
            return
        mac = c.ep.mac
        net.dirty.add(mac)
        net.dirty_ips.update(c.ips)
        if c.node == self.me:
            net.own_macs[mac] -= 1
            net.own_addrs.subtract(c.ips)
            for ip in c.ips:
                if net.own_addrs[ip] <= 0:
                    del net.own_addrs[ip]
            if net.own_macs[mac] <= 0:
                del net.own_macs[mac]
                if mac not in net.accepted:
                    self.endpoints[net.vni].pop(mac, None)
            else:  # another record of ours (the earlier key layout) still has it
                self.endpoints[net.vni][mac] = next(
                    o.ep for o in net.by_key.values() if o.node == self.me and o.ep.mac == mac
                )
            return
        net.remove_claim(c)
        mine = net.by_node[c.node]
        mine.discard(key)
        if not mine:
            del net.by_node[c.node]
        net.index(c, False)

    def _policy_event(self, ev: Event) -> None:
        """A policy or a namespace of a tenant (``overlay.control.policies``):
        checked as ``policy apply`` checks a manifest; a bad record is refused
        and the rest of the tenant's set still applies."""
        prefix = keys.kind(ev.key)
        tenant = keys.tenant_of(ev.key, prefix)
        if tenant is None or not _NAME_RE.fullmatch(tenant):
            what = (
                "policies/<tenant>/<kind>/<name>"
                if prefix == keys.POLICIES
                else ("namespaces/<tenant>/<name>")
            )
            self._bad_key(ev, what)
            return
        recs = self.policy_records.setdefault(tenant, {})
        self._dirty_tenants.add(tenant)
        recs.pop(ev.key, None)
        if ev.kind == "delete":
            self._clear(ev.key)
            if not recs:
                del self.policy_records[tenant]
            return
        try:
            obj = policies.decode(tenant, ev.key, ev.value)
        except ConfigError as exc:
            reason = "key_mismatch" if exc.field == "key" else "malformed"
            if "bytes" in str(exc.expected) and exc.field == "value":
                reason = "too_large"
            self._reject(ev.key, ev.mod_revision, reason, str(exc))
            return
        self._accept(ev.key)
        recs[ev.key] = (ev.value, obj, ev.mod_revision)

    def settle_policies(self) -> list[PolicyChanges]:
        """The tenants whose policies or namespaces changed since the last call
        (every tenant after ``mark_full``)."""
        dirty, self._dirty_tenants = self._dirty_tenants, set()
        for t in dirty:
            self._tenant_views.pop(t, None)
        return [PolicyChanges(t) for t in sorted(dirty)]

    def tenant_policies(self, tenant: str) -> TenantPolicies:
        """Tenant's accepted policy set (cached until it changes)."""
        got = self._tenant_views.get(tenant)
        if got is not None:
            return got
        recs = self.policy_records.get(tenant, {})
        # In key order, whatever order the records arrived in: the compiled tables
        # (the isolating policy they name) are then the same on every node.
        ordered = [recs[k] for k in sorted(recs)]
        nps = tuple(o for _, o, _ in ordered if isinstance(o, NetworkPolicy))
        anps = tuple(o for _, o, _ in ordered if isinstance(o, AdminNetworkPolicy))
        banp = next(
            (o for _, o, _ in recs.values() if isinstance(o, BaselineAdminNetworkPolicy)), None
        )
        nss = {
            o.name: dict(o.labels) for _, o, _ in recs.values() if isinstance(o, policies.Namespace)
        }
        got = TenantPolicies(
            PolicySet(nps, anps, banp),
            nss,
            policies.set_hash({k: v for k, (v, _, _) in recs.items()}, tenant),
            not recs,
        )
        self._tenant_views[tenant] = got
        return got

    def _subnet_event(self, ev: Event) -> None:
        vni = keys.vni_of(ev.key, keys.SUBNETS)
        net = self.nets.get(vni) if vni is not None else None
        if net is None:
            return
        old = net.lease_keys.pop(ev.key, None)
        net.lease_revs.pop(ev.key, None)
        if old is not None:
            self._unlease(net, old)
        if ev.kind == "delete":
            self._clear(ev.key)
            return
        try:
            sub = ipaddress.ip_network(keys.last(ev.key).replace("_", "/"))
        except ValueError:
            self._bad_key(ev, "subnets/<vni>/<subnet with '_' for '/'>")
            return
        owner = ev.value.decode(errors="replace")
        if not _NAME_RE.fullmatch(owner):
            self._reject(ev.key, ev.mod_revision, "malformed", "the value is not a node name")
            return
        self._accept(ev.key)
        s = _sub_of(sub.network_address, sub.prefixlen)
        net.lease_keys[ev.key] = s
        net.lease_revs[ev.key] = ev.mod_revision
        net.leases[s] = owner
        size = (s[0], s[1])
        net.lens[size] += 1
        if net.lens[size] == 1:  # a lease size not indexed yet: index every claim for it
            for c in net.by_key.values():
                if c.node != self.me:
                    for ip in c.ips:
                        if ip.version == s[0]:
                            net.in_sub.setdefault(_sub_of(ip, s[1]), set()).add(c.key)
        self._dirty_sub(net, s)

    def _unlease(self, net: _Net, s: _Sub) -> None:
        if s not in net.lease_keys.values():
            net.leases.pop(s, None)
        self._dirty_sub(net, s)
        size = (s[0], s[1])
        net.lens[size] -= 1
        if net.lens[size] <= 0:
            del net.lens[size]
            for sub in [x for x in net.in_sub if (x[0], x[1]) == size]:
                del net.in_sub[sub]

    @staticmethod
    def _dirty_sub(net: _Net, s: _Sub) -> None:
        for key in net.in_sub.get(s, ()):
            net.dirty.add(net.by_key[key].ep.mac)

    def set_ports(self, vni: int, macs: set[str], addrs: set[IPAddress]) -> None:
        """This node's ports in network vni (what is local wins over others' claims)."""
        net = self.nets.get(vni)
        if net is None or (macs == net.port_macs and addrs == net.port_addrs):
            return
        net.dirty.update(macs ^ net.port_macs)
        net.dirty_ips.update(addrs ^ net.port_addrs)
        net.port_macs, net.port_addrs = set(macs), set(addrs)

    # -- deciding ----------------------------------------------------------------

    def settle(self) -> dict[int, NetChanges]:
        """Decide what changed since the last call; returns what to program, per VNI."""
        self._settle_nodes()
        out: dict[int, NetChanges] = {}
        for vni, net in self.nets.items():
            if net.full or net.dirty or net.dirty_ips or net.dirty_vteps:
                out[vni] = self._settle_net(net)
        return out

    def _settle_nodes(self) -> None:
        names, self._dirty_nodes = self._dirty_nodes, set()
        underlays = {self._node_claims[n].underlay for n in names if n in self._node_claims}
        for u in underlays:  # let every claimant of a touched underlay compete again
            names |= self._by_underlay.get(u, set())
        for u in underlays:
            first = True
            for name in sorted(self._by_underlay.get(u, ()), key=self._node_order):
                c = self._node_claims[name]
                if c.underlay.version != self.underlay.version:
                    self._reject(
                        c.key,
                        c.revision,
                        "underlay_family",
                        f"underlay {c.underlay} is IPv{c.underlay.version}; this node's "
                        f"{self.underlay} is IPv{self.underlay.version}",
                    )
                elif c.underlay == self.underlay:
                    self._reject(
                        c.key, c.revision, "underlay_self", f"{c.underlay} is {self.me!r}'s own"
                    )
                elif not first:
                    self._reject(
                        c.key,
                        c.revision,
                        "underlay_conflict",
                        f"{c.underlay} is claimed first by node {self._member.get(u)!r}",
                    )
                else:
                    first = False
                    self._accept(c.key)
                    self._member[u] = name
            if first:
                self._member.pop(u, None)
        for name in names:
            nc = self._node_claims.get(name)
            new = nc.spec if nc is not None and self._member.get(nc.underlay) == name else None
            old = self.nodes.get(name)
            if (
                old is not None
                and (new is None or new.underlay != old.underlay)
                and self._member.get(ipaddress.ip_address(old.underlay)) == name
            ):
                self._member.pop(ipaddress.ip_address(old.underlay))
            if new is None:
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = new
            # Its endpoints are decided again: it came, went, changed or was refused.
            for net in self.nets.values():
                for key in net.by_node.get(name, ()):
                    net.dirty.add(net.by_key[key].ep.mac)
                if old is not None and old != new:
                    net.dirty_vteps.add(ipaddress.ip_address(old.underlay))
                if nc is not None and new is not None and old != new:
                    net.dirty_vteps.add(nc.underlay)

    def _node_order(self, name: str) -> tuple[int, bytes]:
        return self._node_claims[name].order

    def _settle_net(self, net: _Net) -> NetChanges:
        out = NetChanges(net.vni, full=net.full)
        view = self.endpoints[net.vni]
        if net.full:
            net.full = False
            net.winner.clear()
            net.holders.clear()
            net.accepted.clear()
            for mac in [m for m in view if net.own_macs[m] <= 0]:
                del view[mac]  # decided again below
            net.dirty.update(net.claims)
            net.dirty_vteps.clear()
            out.vteps = self.vteps(net.vni)
        macs, net.dirty = net.dirty, set()
        ips, net.dirty_ips = net.dirty_ips, set()
        for u in net.dirty_vteps:
            out.vteps[u] = self._vtep(net.vni, u)
        net.dirty_vteps.clear()
        # 1. The first valid claim of each MAC touched.
        for mac in macs:
            old = net.winner.get(mac)
            new = self._mac_winner(net, mac)
            if new is old:
                continue
            if old is not None:
                for ip in old.ips:
                    net.release(ip, mac)
                ips.update(old.ips)
            if new is None:
                del net.winner[mac]
            else:
                net.winner[mac] = new
                for ip in new.ips:
                    net.hold(ip, mac)
                ips.update(new.ips)
        # 2. Each winner keeps its MAC only if it is also first for every address.
        recheck = set(macs)
        for ip in ips:
            recheck.update(net.holding(ip))
        for mac in recheck:
            w = net.winner.get(mac)
            want: _Claim | None = None
            if w is not None:
                lost = self._lost_address(net, w)
                if lost is None:
                    want = w
                    self._accept(w.key)
                else:
                    self._reject(w.key, w.revision, "address_conflict", lost)
            if want is None:
                if net.accepted.pop(mac, None) is not None and net.own_macs[mac] <= 0:
                    view.pop(mac, None)
                if not out.full:
                    out.remotes[mac] = None
                continue
            net.accepted[mac] = want
            view[mac] = want.ep
            out.remotes[mac] = self._remote(want)
        if out.full:
            out.remotes = {m: r for m, r in out.remotes.items() if r is not None}
        return out

    def _mac_winner(self, net: _Net, mac: str) -> _Claim | None:
        """The first claim of mac that may be programmed; the others are refused
        (or pending). None when a local port or endpoint has the MAC."""
        group = net.group(mac)
        if not group:
            return None
        local = net.local_mac(mac)
        best: _Claim | None = None
        for c in sorted(group, key=_by_order) if len(group) > 1 else group:
            why = self._ineligible(net, c)
            if why is _PENDING:
                self._clear(c.key)
            elif why is not None:
                self._reject(c.key, c.revision, *why)
            elif local:
                self._reject(c.key, c.revision, "mac_conflict", f"{mac} is a local port's here")
            elif best is None:
                best = c
            else:
                self._reject(
                    c.key, c.revision, "mac_conflict", f"{mac} is claimed first by {best.key!r}"
                )
        return best

    def _ineligible(self, net: _Net, c: _Claim) -> tuple[str, str] | None:
        """None when c may compete for its MAC, _PENDING while its node is not a
        member (yet), else (reason, detail)."""
        spec = self.nodes.get(c.node)
        if spec is None:
            refused = self.rejected.get(keys.node(c.node))
            if refused is not None:
                return "node_rejected", f"node {c.node!r} is refused ({refused.reason})"
            return _PENDING
        if net.vni not in spec.networks:
            return _PENDING
        for ip in c.ips:
            for version, plen in net.lens:
                if version != ip.version:
                    continue
                sub = _sub_of(ip, plen)
                owner = net.leases.get(sub)
                if owner is not None and owner != c.node:
                    return (
                        "address_not_leased",
                        f"{ip} lies in {_sub_text(sub)}, leased to node {owner!r}",
                    )
        return None

    def _lost_address(self, net: _Net, w: _Claim) -> str | None:
        """Why w does not hold all its addresses (None when it does)."""
        for ip in w.ips:
            if net.local_addr(ip):
                return f"{ip} is a local port's here"
            first = min((net.winner[m] for m in net.holding(ip)), key=_by_order)
            if first is not w:
                return f"{ip} is claimed first by {first.key!r}"
        return None

    def _encap(self, vni: int) -> str:
        """vni's encapsulation ("" when undefined: each node's own): which of a
        node's tunnel ports its datagrams go to (``NodeSpec.tunnel_port``)."""
        spec = self.specs.get(vni)
        return spec.encap if spec is not None else ""

    def _remote(self, c: _Claim) -> Remote:
        spec = self.nodes[c.node]
        port = spec.tunnel_port(self._encap(c.ep.vni))
        return Remote(self._node_claims[c.node].underlay, c.ips, port)

    def _vtep(self, vni: int, underlay: IPAddress) -> int | None:
        name = self._member.get(underlay)
        spec = self.nodes.get(name) if name is not None else None
        if spec is None or vni not in spec.networks:
            return None
        return spec.tunnel_port(self._encap(vni))

    def vteps(self, vni: int) -> dict[IPAddress, int | None]:
        """Every member VTEP of vni (underlay -> UDP port, 0 for the default)."""
        encap = self._encap(vni)
        return {
            u: self.nodes[name].tunnel_port(encap)
            for u, name in self._member.items()
            if name in self.nodes and vni in self.nodes[name].networks
        }

    def remotes(self, vni: int) -> dict[str, Remote | None]:
        """Every remote endpoint of vni as it should be programmed now."""
        net = self.nets.get(vni)
        return {} if net is None else {m: self._remote(c) for m, c in net.accepted.items()}

    def remote(self, vni: int, mac: str) -> Remote | None:
        """What the node should hold for mac in vni now (None: no entry). O(1)."""
        net = self.nets.get(vni)
        c = net.accepted.get(mac) if net is not None else None
        return None if c is None else self._remote(c)

    def own(self, vni: int) -> list[tuple[bytes, Endpoint]]:
        """This node's endpoint records in vni (key, endpoint)."""
        net = self.nets.get(vni)
        if net is None:
            return []
        return [(key, c.ep) for key, c in net.by_key.items() if c.node == self.me]

    # -- refusals --------------------------------------------------------------

    def _bad_key(self, ev: Event, layout: str) -> None:
        if ev.kind == "delete":
            self._clear(ev.key)
        else:
            self._reject(ev.key, ev.mod_revision, "bad_key", f"keys here look like {layout}")

    def _reject(self, key: bytes, revision: int, reason: str, detail: str) -> None:
        old = self.rejected.get(key)
        if old is not None and old.revision == revision and old.reason == reason:
            return
        if old is not None:
            self.rejected_now[old.reason] -= 1
        self.rejected[key] = Rejection(key, revision, reason, detail)
        self.rejected_now[reason] += 1
        self.rejected_total[reason] += 1
        log.warning(
            "agent %s: skipping %r (revision %d): %s: %s", self.me, key, revision, reason, detail
        )

    def _accept(self, key: bytes) -> None:
        old = self.rejected.pop(key, None)
        if old is not None:
            self.rejected_now[old.reason] -= 1
            log.info("agent %s: %r is accepted now (was %s)", self.me, key, old.reason)

    def _clear(self, key: bytes) -> None:
        old = self.rejected.pop(key, None)
        if old is not None:
            self.rejected_now[old.reason] -= 1


def _by_order(c: _Claim) -> tuple[int, bytes]:
    return c.order


def _in_network(key: bytes, vni: int) -> bool:
    return key.startswith(keys.endpoints(vni)) or key.startswith(keys.subnets(vni))
