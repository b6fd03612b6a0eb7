"""The contract between the agent's loop and its reconcilers.

Why this shape (Calico felix's managers: ``OnUpdate`` folds, one apply per
batch). The agent's loop reads the store, checks every record
(``overlay.control.claims``) and, once per batch of store changes, hands the
*checked* updates to every reconciler, then asks each to apply. A reconciler
never sees a raw record: what it programs was accepted first, the same way
on every node, and a bad record costs it nothing. It never reads the store
and never waits: ``on_update`` folds an update into the reconciler's own
pending state, ``apply`` programs what changed since the last apply and
returns. Both run on the agent's event loop, one at a time, in the order of
``RECONCILERS`` (``overlay.control.reconcilers``): a network is created before
its peers are programmed into it.

Contract of a reconciler (each method says what it requires and guarantees):

- ``__init__(node, state, me)``: ``node`` is the node it programs (only
  through ``overlay.control.nodeapi.NodeTables``), ``state`` the checked
  desired state it may read (``CheckedState``), ``me`` this node's name (for
  log lines: ``"agent <me>: ..."``).
- ``on_update(update)``: called for every checked update of a batch, before
  ``apply``. It must not touch the node, must cost O(the update), and must
  not keep a reference it mutates later (an update is shared by every
  reconciler: copy before merging two). An update of a kind it does not
  handle is ignored.
- ``apply(hosted, wanted)``: called once per batch, also when no update came
  (``hosted``: every VNI the node hosts now, sorted; ``wanted``: those that
  must exist on the node now even without an update, e.g. before a pod's port
  is added). It programs only what changed, comparing with what the node has
  (level-triggered: a restarted agent adopts the entries already there), so
  its cost is O(the changes) plus O(hosted networks). It never raises for
  something the node refuses: it logs it (once per cause) and tries again at
  a later apply. What it holds for a network no longer in ``hosted`` it drops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Protocol

from overlay.control.claims import NetChanges, PolicyChanges, Remote, TenantPolicies
from overlay.control.nodeapi import IPAddress, NodeTables
from overlay.model import Endpoint, NetworkSpec

# The checked updates a reconciler folds: what changed in one network's member
# VTEPs and remote endpoints (NetChanges), and which tenant's policies or
# namespaces changed (PolicyChanges). A new kind of record adds its update
# type here, as a union member; a reconciler ignores the kinds it does not
# handle.
Update = NetChanges | PolicyChanges


class CheckedState(Protocol):
    """The desired state after the claims check (``overlay.control.claims.Claims``),
    read-only to reconcilers. Every query is O(its answer)."""

    @property
    def specs(self) -> Mapping[int, NetworkSpec]:
        """Accepted network definitions, by VNI."""
        ...

    def vteps(self, vni: int) -> dict[IPAddress, int | None]:
        """Every member VTEP of vni now (underlay -> UDP port, 0 for the default)."""
        ...

    def remotes(self, vni: int) -> dict[str, Remote | None]:
        """Every remote endpoint of vni as it should be programmed now."""
        ...

    def remote(self, vni: int, mac: str) -> Remote | None:
        """One remote endpoint of vni as it should be programmed now (None: none). O(1)."""
        ...

    @property
    def endpoints(self) -> Mapping[int, Mapping[str, Endpoint]]:
        """Accepted endpoint records per hosted VNI, by MAC (this node's own too)."""
        ...

    def tenant_policies(self, tenant: str) -> TenantPolicies:
        """One tenant's accepted policies and namespaces (cached until they change)."""
        ...


class Reconciler(Protocol):
    """One resource of the node's tables, kept equal to the checked state."""

    @property
    def name(self) -> str:
        """A short name for logs and metrics ("networks", "peers")."""
        ...

    def on_update(self, update: Update) -> None: ...

    def apply(self, hosted: tuple[int, ...], wanted: AbstractSet[int]) -> None: ...


# How the agent makes one: the class itself, given (node, state, me).
ReconcilerFactory = Callable[[NodeTables, CheckedState, str], Reconciler]
