"""overlayd's BGP speaker: this node's subnets of routed networks announced to the
routers of ``[bgp]``, the other nodes' learned from them (``overlay.bgp``).

Design notes.
- **One BIRD per node, a child of overlayd.** It starts with the daemon once
  the gateways and routes are in place, and stops with it (by its PID). When
  overlayd stops, the routers drop the session and withdraw this node's
  subnets: pods on this node are unreachable from behind the routers until
  the daemon is back (and the kernel routes BIRD wrote go with it, so this
  node no longer reaches the others' pods through the routers either).
  Graceful restart, which would let a restarting daemon keep its routes
  announced, is a later refinement. BIRD dying on its own is noticed at the
  next sync and it is started again with backoff (``BirdSpeaker.supervise``).
- **What is kept equal.** The speaker's configuration follows the routed
  networks this node hosts and the subnets it leases for them (the routing
  room's ``announced``: a network's subnet is announced once its gateway
  holds it, since BIRD reads the gateways' connected routes): ``sync`` renders
  it and applies it when it changed (``birdc configure``: sessions are kept).
  It runs after the gateways and routes, at start-up and every two seconds.
- **Views from memory.** ``birdc`` is a subprocess; the status the API and
  the metrics show is the one read at the last sync, never a call made while
  answering.
- **A failure is reported, not fatal.** A speaker that cannot start (BIRD
  missing, a configuration BIRD refuses) is logged and shown in the status
  with its reason, and tried again at the next sync; the data plane does not
  depend on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Any

from overlay.bgp import BirdError, BirdSpeaker, RoutedRange, SpeakerConfig
from overlay.daemon.parts import Parts
from overlay.daemon.rooms import Room
from overlay.errors import OverlayError

log = logging.getLogger("overlay.daemon")


class Bgp(Room):
    """The node's BGP speaker, when ``[bgp]`` is configured."""

    def __init__(self, parts: Parts, announced: Callable[[], dict[int, str]]) -> None:
        self.parts = parts
        self.announced = announced  # VNI -> this node's subnet of a routed network
        self.speaker: BirdSpeaker | None = None
        self.error: str | None = None  # why the speaker is not as configured
        self._status: dict[str, Any] | None = None  # the speaker's, at the last sync
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.parts.config.bgp is not None

    def wanted(self) -> SpeakerConfig | None:
        """The speaker's configuration now (None without ``[bgp]`` or a node)."""
        p = self.parts
        bgp, agent, node = p.config.bgp, p.agent, p.node
        if bgp is None or agent is None or node is None:
            return None
        router_id = bgp.router_id or str(node.underlay)
        ranges, subnets = [], []
        for vni, subnet in self.announced().items():
            spec = agent.specs.get(vni)
            if spec is None or ipaddress.ip_network(spec.cidr).version != 4:
                continue  # IPv6 routed ranges are not announced (IPv4 sessions only)
            ranges.append(RoutedRange(spec.cidr, spec.subnet_prefix))
            subnets.append(subnet)
        return SpeakerConfig(router_id, bgp.asn, bgp.peers, tuple(ranges), tuple(subnets))

    async def sync(self) -> None:
        """Start, reconfigure or restart the speaker as needed; read its status."""
        if not self.enabled:
            return
        async with self._lock:
            try:
                cfg = self.wanted()
                if cfg is None:
                    return
                if self.speaker is None:
                    state_dir = os.path.join(self.parts.config.node.state_dir, "bgp")
                    self.speaker = BirdSpeaker(state_dir, self.parts.config.node.netns or None)
                status = await asyncio.to_thread(self._sync, self.speaker, cfg)
                self._status = status
                if self.error is not None:
                    log.info("overlayd: bgp: speaker running again")
                self.error = None
            except (BirdError, OverlayError, OSError) as exc:
                if str(exc) != self.error:
                    log.error("overlayd: bgp: %s", exc)
                self.error = str(exc)
                if self.speaker is not None:
                    self._status = await asyncio.to_thread(self.speaker.status)

    @staticmethod
    def _sync(speaker: BirdSpeaker, cfg: SpeakerConfig) -> dict[str, Any]:
        if speaker.config is not None and not speaker.running:  # it died
            if not speaker.supervise():
                return speaker.status()  # waiting out the backoff
            log.warning(
                "overlayd: bgp: BIRD had stopped (status %s); started again", speaker.last_exit
            )
        if speaker.apply(cfg):  # (starts it the first time)
            log.info(
                "overlayd: bgp: as %d, router id %s, announcing %s to %s",
                cfg.asn,
                cfg.router_id,
                ", ".join(cfg.local_subnets) or "nothing",
                ", ".join(f"{p.address} (as {p.asn})" for p in cfg.peers),
            )
        return speaker.status()

    async def stop(self) -> None:
        """Stop the speaker (the routers withdraw this node's subnets)."""
        async with self._lock:
            if self.speaker is not None:
                await asyncio.to_thread(self.speaker.stop)
                self._status = None

    def view(self) -> dict[str, Any] | None:
        """What ``overlay status`` shows under ``bgp`` (None without ``[bgp]``)."""
        bgp = self.parts.config.bgp
        if bgp is None:
            return None
        status = dict(self._status or {})
        out: dict[str, Any] = {
            "asn": bgp.asn,
            "router_id": status.get("router_id"),
            "running": bool(status.get("running")),
            "pid": status.get("pid"),
            "restarts": status.get("restarts", 0),
            "error": self.error or status.get("error"),
            "announced": status.get("announced", []),
            "learned": status.get("learned", []),
            "peers": status.get("peers")
            or [
                {"address": p.address, "asn": p.asn, "state": "down", "up": False}
                for p in bgp.peers
            ],
        }
        return out
