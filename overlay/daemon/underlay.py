"""overlayd's uplinks: each underlay network's way onto the physical segment.

Design notes.
- **What is kept equal.** Every network this node hosts whose accepted
  definition says ``mode = "underlay"`` has an uplink (``Network.add_uplink``,
  ``overlay.uplink``) on the node's underlay interface: ``[node] interface``
  when given, else the interface holding ``[node] underlay`` in the node's
  namespace. Every other network has none. ``sync`` does it and is cheap when
  nothing changed; it runs after start-up and in the daemon's periodic loop
  (a network defined or changed by another node, an uplink that failed).
- **No VTEPs, no remotes.** An underlay network reaches other nodes' pods on
  the segment as any station would (ARP, then the wire): the peers reconciler
  programs nothing into it.
- **No gateway.** The node is already a station of the segment; a gateway TAP
  with an address of the segment's range would put it there twice (and give
  the node two connected routes to one prefix). The configuration refuses
  one; pods leave by the segment's router.
- **A failure costs one network**, logged with its reason once and tried again
  at the next sync.
"""

from __future__ import annotations

import asyncio
import logging

from overlay.daemon.parts import Parts
from overlay.errors import OverlayError
from overlay.uplink import interface_of

log = logging.getLogger("overlay.daemon")


class Uplinks:
    """The uplinks of this node's underlay networks."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.errors: dict[int, str] = {}  # vni -> why its uplink is missing
        self._interface: str | None = None
        self._lock = asyncio.Lock()

    def wanted(self) -> set[int]:
        """The hosted networks whose accepted definition is an underlay network."""
        agent = self.parts.agent
        if agent is None:
            return set()
        return {
            vni
            for vni in agent.spec.networks
            if (spec := agent.specs.get(vni)) is not None and spec.mode == "underlay"
        }

    async def interface(self) -> str:
        """The node's underlay interface: ``[node] interface``, or the one holding
        the node's underlay address (looked up once)."""
        node, cfg = self.parts.node, self.parts.config.node
        if cfg.interface:
            return cfg.interface
        if self._interface is None:
            assert node is not None
            self._interface = await asyncio.to_thread(interface_of, str(node.underlay), node.netns)
        return self._interface

    async def sync(self) -> None:
        """Make uplinks match the hosted networks' definitions."""
        node = self.parts.node
        if node is None:
            return
        async with self._lock:
            wanted = self.wanted()
            for vni, net in list(node.networks.items()):
                if net.uplink is not None and vni not in wanted:
                    net.remove_port(net.uplink)
                    log.info("overlayd: vni %d: uplink removed", vni)
            for vni in sorted(wanted):
                hosted = node.networks.get(vni)
                if hosted is None or hosted.uplink is not None:
                    continue
                try:
                    ifname = await self.interface()
                    port = await asyncio.to_thread(hosted.add_uplink, ifname)
                    self.errors.pop(vni, None)
                    log.info("overlayd: vni %d: uplink on %s (%s)", vni, port.ifname, port.mac)
                except (OverlayError, OSError) as exc:
                    if self.errors.get(vni) != str(exc):
                        log.error("overlayd: vni %d: no uplink: %s", vni, exc)
                    self.errors[vni] = str(exc)

    def view(self, vni: int) -> dict[str, object] | None:
        """The uplink of network ``vni`` for views: interface, MAC, counters; or its error."""
        node = self.parts.node
        net = node.networks.get(vni) if node is not None else None
        up = net.uplink if net is not None else None
        if up is None:
            error = self.errors.get(vni)
            return {"error": error} if error else None
        return {"ifname": up.ifname, "mac": up.mac, "counters": up.counters()}
