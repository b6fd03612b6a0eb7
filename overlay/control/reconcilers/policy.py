"""Policy: each hosted network enforces its tenant's policies from the store.

Design notes.
- **What it programs.** For every hosted network the node runs, the policy
  set and namespaces of the network's tenant (``overlay.control.policies``,
  checked in ``overlay.control.claims``) and the identity of every pod of
  other nodes (namespace, labels and named ports of its endpoint record, its
  addresses; another node's gateway as a node address), through one call,
  ``Network.update_policy``: one compile, then only the port tables that
  differ are set. A change of one policy sets the tables of the pods it
  selects or that select by it and nothing else; a change that changes no
  table (a label nobody selects, a policy written again as it was) sets
  none.
- **Every network mode.** Identities come from the endpoint records, not
  from the forwarding tables: a routed or underlay network has no remotes
  (its pods are reached through routes or on the segment), yet its policies
  must still know who a source address is.
- **Work proportional to the change.** A batch names the tenants whose
  records changed (their hash tells whether the set really did) and the MACs
  of other nodes' endpoints that changed; only those are given to the
  network. The whole table of identities is given when the network is new to
  this reconciler (just created, or made again) and after a
  resynchronisation.
- **A tenant without policies costs nothing.** Until its tenant has a policy
  or a namespace in the store, a network is left without policy (its ports
  track no connections). Once it had some, an empty set is programmed as
  such (every table "allow everything") and kept active: a pod added later is
  judged at once.
- **What is realised is reported.** ``realised`` holds, per tenant, the
  hash of the set in force on every network of the tenant here and the
  number of ports; the agent publishes it with the store revision it had
  read (``policy-status/<node>``) for ``overlay policy status``.
- **Refusals are retried.** A set the node refuses (a compile error) is
  logged once per reason and tried again at every later apply; the tables in
  force stay as they were.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol, cast

from overlay.control.claims import NetChanges, PolicyChanges, TenantPolicies
from overlay.control.nodeapi import NetworkTables, NodeTables
from overlay.control.reconcilers.base import CheckedState, Update
from overlay.errors import OverlayError
from overlay.gateway import ROLE_GATEWAY, ROLE_LABEL
from overlay.model import NAMESPACE_LABEL, Endpoint
from overlay.policy.engine import DEFAULT_NAMESPACE, Identity, Peer, PolicySet, check_identity

log = logging.getLogger("overlay.agent")


class PolicyNetwork(Protocol):
    """What this reconciler needs of a network (``overlay.node.Network``)."""

    def update_policy(
        self,
        *,
        policies: PolicySet | None = None,
        namespaces: Mapping[str, Mapping[str, str]] | None = None,
        peers: Mapping[str, Peer | None] | None = None,
        peers_full: bool = False,
        audit: bool | None = None,
    ) -> int: ...


def peer_of(ep: Endpoint) -> Peer:
    """An endpoint record as policy sees it: its namespace is its
    ``io.kubernetes.pod.namespace`` label (``default`` without one), its named
    ports the record's ``ports``."""
    ips = tuple(str(ipaddress.ip_interface(a).ip) for a in ep.ips)
    gateway = ep.labels.get(ROLE_LABEL) == ROLE_GATEWAY
    namespace = ep.labels.get(NAMESPACE_LABEL) or DEFAULT_NAMESPACE
    try:
        identity = check_identity(namespace, ep.labels, ep.ports)
    except OverlayError:
        # A record's labels passed the store's checks but not policy's (which
        # follow Kubernetes exactly): it matches no label selector.
        identity = Identity(namespace if namespace.islower() else DEFAULT_NAMESPACE)
    return Peer(ips, identity, gateway)


class Policies:
    """Programs each hosted network's policy from the store (see the module's notes)."""

    name = "policy"

    def __init__(self, node: NodeTables, state: CheckedState, me: str) -> None:
        self.node = node
        self.state = state
        self.me = me
        self._tenants: set[str] = set()  # tenants whose records changed since the last apply
        self._macs: dict[int, set[str]] = {}  # VNI -> MACs of endpoints that changed
        self._full: set[int] = set()  # VNIs to give every identity again
        # VNI -> (the node's network object programmed, the tenant hash in force)
        self._applied: dict[int, tuple[NetworkTables, str]] = {}
        self._failed: dict[int, str] = {}
        self.realised: dict[
            str, tuple[str, int, tuple[int, ...]]
        ] = {}  # tenant -> hash, ports, VNIs
        self.swaps = 0  # port tables set since start
        self.applies = 0  # network updates (compiles) since start
        self.last_apply_s = 0.0  # seconds the last batch's compiles took
        self.changed_at = 0.0  # time.time() when realised last changed

    def on_update(self, update: Update) -> None:
        if isinstance(update, PolicyChanges):
            self._tenants.add(update.tenant)
        elif isinstance(update, NetChanges):
            if update.full:
                self._full.add(update.vni)
            elif update.remotes:
                self._macs.setdefault(update.vni, set()).update(update.remotes)

    def apply(self, hosted: tuple[int, ...], wanted: AbstractSet[int]) -> None:
        tenants, self._tenants = self._tenants, set()
        macs, self._macs = self._macs, {}
        full, self._full = self._full, set()
        began = time.monotonic()
        realised: dict[str, tuple[str, int, list[int]]] = {}
        for vni in list(self._applied):
            if vni not in hosted or self.node.networks.get(vni) is not self._applied[vni][0]:
                del self._applied[vni]
        for vni in hosted:
            net = self.node.networks.get(vni)
            spec = self.state.specs.get(vni)
            update = getattr(net, "update_policy", None)
            if net is None or spec is None or net.tenant != spec.tenant or update is None:
                continue
            tp = self._tenant(net.tenant)
            prev = self._applied.get(vni)
            if prev is None and tp.empty and vni not in self._failed:
                continue  # never had policies: ports stay without (see the notes)
            every = prev is None or vni in full or vni in self._failed
            changed = macs.get(vni, set())
            new_set = every or prev is None or prev[1] != tp.hash or net.tenant in tenants
            if not (every or changed or new_set):
                if prev is not None:
                    self._count(realised, net.tenant, prev[1], net, vni)
                continue
            peers = self._peers(vni) if every else {m: self._peer(vni, m) for m in changed}
            kwargs: dict[str, Any] = {}
            if new_set:
                kwargs = {"policies": tp.policies, "namespaces": tp.namespaces}
            try:
                self.swaps += cast(PolicyNetwork, net).update_policy(
                    peers=peers, peers_full=every, **kwargs
                )
                self.applies += 1
            except OverlayError as exc:
                why = str(exc)
                if self._failed.get(vni) != why:
                    log.error(
                        "agent %s: vni %d: policies of tenant %s not applied: %s",
                        self.me,
                        vni,
                        net.tenant,
                        why,
                    )
                self._failed[vni] = why
                self._applied.pop(vni, None)
                continue
            self._failed.pop(vni, None)
            self._applied[vni] = (net, tp.hash)
            self._count(realised, net.tenant, tp.hash, net, vni)
        if self._applied or realised:
            self.last_apply_s = time.monotonic() - began
        now = {t: (h, n, tuple(sorted(v))) for t, (h, n, v) in realised.items()}
        if now != self.realised:
            self.realised = now
            self.changed_at = time.time()

    def _count(
        self,
        realised: dict[str, tuple[str, int, list[int]]],
        tenant: str,
        digest: str,
        net: NetworkTables,
        vni: int,
    ) -> None:
        """Fold one network into its tenant's realised set (one hash per tenant:
        a network that differs makes it "mixed", never in sync)."""
        ports = sum(1 for p in net.ports if not (getattr(p, "gateway", False)))
        have = realised.get(tenant)
        if have is None:
            realised[tenant] = (digest, ports, [vni])
        else:
            h = have[0] if have[0] == digest else "mixed"
            realised[tenant] = (h, have[1] + ports, [*have[2], vni])

    def _tenant(self, tenant: str) -> TenantPolicies:
        return self.state.tenant_policies(tenant)

    def _endpoints(self, vni: int) -> Mapping[str, Endpoint]:
        return self.state.endpoints.get(vni, {})

    def _peer(self, vni: int, mac: str) -> Peer | None:
        ep = self._endpoints(vni).get(mac)
        if ep is None or ep.node == self.me:
            return None
        return peer_of(ep)

    def _peers(self, vni: int) -> dict[str, Peer | None]:
        return {mac: peer_of(ep) for mac, ep in self._endpoints(vni).items() if ep.node != self.me}
