"""Reconcilers: one per resource of the node's tables, driven by the agent's loop.

The agent (``overlay.control.agent``) reads and checks the store; each
reconciler here folds the checked updates into its own pending state
(``on_update``) and programs what changed once per batch (``apply``). The
contract, with what each call requires and guarantees, is in ``base.py``; the
node is reached only through ``overlay.control.nodeapi``.

Rooms, today and next:

- ``networks.py``: each hosted, defined network exists on the node.
- ``peers.py``: member VTEPs and remote endpoints (FDB, neighbours).
- ``policy.py``: each network enforces its tenant's policies, knowing every
  pod of other nodes by its endpoint record (compiled per-port rule tables,
  only those that differ set).
- next: ``routes.py`` (pod subnets of routed networks: the node's kernel
  routes and the ``direct`` transport's next hops), ``gateways.py`` (the node's
  own IP stack as a port of each network: host routes, masquerade, Services),

Adding one is a new file with a class that fits ``base.Reconciler`` (its
constructor takes ``(node, state, me)``) plus one line in ``RECONCILERS``
below. When it reads a kind of record nobody reads yet, that record gets its
check in ``overlay.control.claims`` (one handler, one line in its dispatch
table) and its update type in ``base.Update``: every record is checked before
anything is programmed from it.
"""

from __future__ import annotations

from overlay.control.reconcilers.base import (
    CheckedState,
    Reconciler,
    ReconcilerFactory,
    Update,
)
from overlay.control.reconcilers.networks import Networks
from overlay.control.reconcilers.peers import Peers
from overlay.control.reconcilers.policy import Policies

# In the order they apply: a network exists before anything is programmed into it.
RECONCILERS: tuple[ReconcilerFactory, ...] = (
    Networks,
    Peers,
    Policies,
)

__all__ = [
    "RECONCILERS",
    "CheckedState",
    "Networks",
    "Peers",
    "Policies",
    "Reconciler",
    "Update",
]
