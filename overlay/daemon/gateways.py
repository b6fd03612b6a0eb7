"""overlayd's gateways: each hosted network's way in and out of this node.

Design notes.
- **What is kept equal.** Every network this node hosts whose definition says
  ``gateway`` has its gateway here (``Agent.add_gateway``: a TAP ``ovg<vni>`` in
  the node's namespace with the first address of the node's subnet, announced
  like an endpoint); every other has none; and the node's nftables table
  (``overlay.gateway.NodeRules``) says exactly what those gateways need:
  isolation between them, the Services' hairpin, and masquerading per
  network (``masquerade``). ``sync`` does all of it and is cheap when nothing
  changed, so it runs after start-up, after a reload and whenever the agent's
  definitions may have changed.
- **Restarts leave no gap.** The gateway's TAP is persistent and the table
  stays in the kernel when overlayd stops (as pods' TAPs do): conntrack keeps
  the translations of connections through it, and a restarted daemon takes
  the TAP back and replaces the table with the same rules in one
  transaction.
- **Removal.** A network removed by a reload loses its gateway first (the
  endpoint withdrawn, the TAP deleted), then the table is applied without it.
- **The definition in the store is the truth** (with etcd, another node may
  have defined the network first): cidr, gateway and masquerade are read from
  the agent's accepted definitions, not from this node's file.
- **Isolated gateways** (``gateway = "isolated"``, for a tenant whose
  addresses overlap another's): the TAP lives in a router namespace of its own
  (``overlay.gateway.make_router``: a veth with a link-local /30 to the node),
  which masquerades its pods to its end of the pair; the node treats that veth
  like a gateway (isolated from every other, masqueraded on the way out, no
  Services hairpin). Egress only: the node does not reach those pods.
- **A failure costs one network.** A gateway that cannot be made (a
  namespace problem, an address conflict) is logged with its reason and tried
  again at the next sync; the others are kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from overlay.daemon.parts import Parts
from overlay.daemon.rooms import Room
from overlay.errors import OverlayError
from overlay.gateway import (
    UPLINK_PREFIX,
    GatewayRule,
    NodeRules,
    apply_router,
    make_router,
    remove_router,
    transit,
)

log = logging.getLogger("overlay.daemon")


class Gateways(Room):
    """The gateways of this node's networks and the node's rules for them."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.errors: dict[int, str] = {}  # vni -> why its gateway is missing
        self._lock = asyncio.Lock()

    def wanted(self) -> dict[int, Any]:
        """VNI -> accepted definition, for every hosted network that has a gateway."""
        agent = self.parts.agent
        if agent is None:
            return {}
        out = {}
        for vni in agent.spec.networks:
            spec = agent.specs.get(vni)
            if spec is not None and spec.gateway != "none":
                out[vni] = spec
        return out

    async def sync(self) -> None:
        """Make gateways and rules match the hosted networks' definitions."""
        agent, node = self.parts.agent, self.parts.node
        if agent is None or node is None:
            return
        async with self._lock:
            wanted = self.wanted()
            for vni, net in list(node.networks.items()):
                if net.gateway is not None and vni not in wanted:
                    await self.remove(vni)
            for vni in wanted:
                have = node.networks.get(vni)
                if have is not None and have.gateway is not None:
                    continue
                try:
                    netns = None
                    if wanted[vni].gateway == "isolated":
                        netns = await asyncio.to_thread(make_router, node.netns, vni)
                    _, port = await agent.add_gateway(vni, netns=netns)
                    if netns is not None:
                        await asyncio.to_thread(
                            apply_router, netns, port.ifname, f"{UPLINK_PREFIX}{vni}"
                        )
                    self.errors.pop(vni, None)
                    log.info("overlayd: vni %d: gateway %s %s", vni, port.ifname, port.ips[0])
                except (TimeoutError, OverlayError, OSError) as exc:
                    if self.errors.get(vni) != str(exc):
                        log.error("overlayd: vni %d: no gateway: %s", vni, exc)
                    self.errors[vni] = str(exc)
            await self.apply_rules()

    def rules(self) -> list[GatewayRule]:
        """The node's rules for the gateways it has now."""
        node = self.parts.node
        wanted = self.wanted()
        out = []
        for vni, spec in sorted(wanted.items()):
            net = node.networks.get(vni) if node is not None else None
            if net is None or net.gateway is None:
                continue
            if spec.gateway == "isolated":  # the node sees the router's end of the veth
                node_end, _ = transit(vni)
                out.append(
                    GatewayRule(f"{UPLINK_PREFIX}{vni}", (str(node_end.network),), hairpin=False)
                )
            else:
                out.append(GatewayRule(net.gateway.ifname, (spec.cidr,), spec.masquerade))
        return out

    async def apply_rules(self) -> None:
        node = self.parts.node
        if node is None:
            return
        try:
            await asyncio.to_thread(NodeRules(node.netns).apply, self.rules())
            self.errors.pop(-1, None)
        except OverlayError as exc:
            log.error("overlayd: the node's gateway rules were refused: %s", exc)
            self.errors[-1] = str(exc)

    async def remove(self, vni: int) -> None:
        """Remove the network's gateway (before the network goes)."""
        agent, node = self.parts.agent, self.parts.node
        net = node.networks.get(vni) if node is not None else None
        isolated = net is not None and net.gateway is not None and net.gateway.netns is not None
        if agent is not None:
            await agent.remove_gateway(vni)
        if isolated and node is not None:
            await asyncio.to_thread(remove_router, node.netns, vni)
        self.errors.pop(vni, None)

    def view(self, vni: int) -> dict[str, Any] | None:
        """The gateway of network ``vni`` for ``overlay networks`` and the API."""
        node = self.parts.node
        net = node.networks.get(vni) if node is not None else None
        gw = net.gateway if net is not None else None
        if gw is None:
            error = self.errors.get(vni)
            return {"error": error} if error else None
        spec = self.wanted().get(vni)
        return {
            "ifname": gw.ifname,
            "address": str(gw.ips[0]) if gw.ips else None,
            "mac": gw.mac,
            "masquerade": bool(spec.masquerade) if spec is not None else None,
            "placement": spec.gateway if spec is not None else None,
            "netns": gw.netns,
            "counters": gw.counters(),
        }
