"""Networks: every hosted network defined in the store exists on the node.

Design notes.
- **Created, never torn down here.** A network is created on the node (with
  the tenant and learning of its accepted definition) when it is hosted,
  defined, and either wanted now (the agent's ``reconcile(vnis)`` before a
  pod's port is added; every hosted network at a batch's end) or touched by an
  update. A network whose definition disappears from the store keeps running
  on its last state (new pods wait for a definition); removing a network is
  the owner's call (overlayd's reload), not the store's.
- **The tenant is not changed under a running network.** A network the node
  already has is left as it is, also when another tenant made it; the peers
  reconciler then refuses to program it (``peers.py``), and the claims check
  refuses a definition that changes under a running network.
- **Made with or without a tunnel, once.** A routed or underlay network is
  made without one (``add_network(tunnel=False)``: full underlay MTU, no
  VTEPs); overlay and auto networks with one (``NetworkSpec.tunnel``). The
  kind is fixed at creation, as the mode of a network with pods is; so is a
  tunnel network's encapsulation (``NetworkSpec.encap``, "": the node's).
- **Runs first.** ``RECONCILERS`` lists it before the reconcilers that
  program into a network, so they find it in the same batch.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet

from overlay.control.claims import NetChanges
from overlay.control.nodeapi import NodeTables
from overlay.control.reconcilers.base import CheckedState, Update
from overlay.errors import OverlayError

log = logging.getLogger("overlay.agent")


class Networks:
    """Creates each hosted, defined network on the node (see the module's notes)."""

    name = "networks"

    def __init__(self, node: NodeTables, state: CheckedState, me: str) -> None:
        self.node = node
        self.state = state
        self.me = me
        self._touched: set[int] = set()  # VNIs with an update since the last apply

    def on_update(self, update: Update) -> None:
        if isinstance(update, NetChanges):
            self._touched.add(update.vni)

    def apply(self, hosted: tuple[int, ...], wanted: AbstractSet[int]) -> None:
        touched, self._touched = self._touched, set()
        for vni in hosted:
            if vni not in wanted and vni not in touched:
                continue
            spec = self.state.specs.get(vni)
            if spec is None or vni in self.node.networks:
                continue
            try:
                if spec.tunnel:
                    # its own encapsulation on its tunnel port ("": the node's)
                    if spec.encap:
                        self.node.add_network(
                            vni, spec.tenant, learning=spec.learning, encap=spec.encap
                        )
                    else:
                        self.node.add_network(vni, spec.tenant, learning=spec.learning)
                else:
                    self.node.add_network(vni, spec.tenant, learning=spec.learning, tunnel=False)
            except OverlayError as exc:
                log.error("agent %s: vni %d: %s", self.me, vni, exc)
