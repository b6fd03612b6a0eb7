"""Reload: the configuration file applied again, as a difference (SIGHUP, POST /v1/reload).

Design notes.
- **A bad file changes nothing.** The new file is parsed in full first; a key
  that needs a restart (``RESTART_KEYS``: the node, the store's connection,
  the API socket, metrics, health) or a network in use refuses the reload,
  naming it, before anything is touched.
- **A difference, not a restart.** Unchanged networks are not touched, so
  their traffic never stops; added ones are defined and hosted, removed ones
  go. A network with pods attached cannot be removed or redefined: the pods
  would lose their network under them.
- **"Changed" is as the node runs it.** A network's line may be unchanged
  while the way this node runs it is not: the first static peer added (or
  the last removed) turns flood-and-learn on (off), so specs are compared
  after ``definitions.spec_for``.
- **Answer when it is done.** The reload answers once the agent has read
  the new definitions and the node hosts the new networks, so a pod may be
  attached to a new network as soon as the reload returns.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from overlay.daemon import config as cfgmod
from overlay.daemon.attach import Attachments
from overlay.daemon.config import DaemonConfig
from overlay.daemon.definitions import Definitions, spec_for
from overlay.daemon.gateways import Gateways
from overlay.daemon.parts import Parts
from overlay.daemon.rooms import Room, handles
from overlay.errors import ConfigError, ConflictError

log = logging.getLogger("overlay.daemon")

# Keys of the file that only a restart applies (dotted paths into DaemonConfig).
RESTART_KEYS = (
    "node",
    "store.kind",
    "store.endpoints",
    "store.ttl",
    "store.ca_file",
    "store.cert_file",
    "store.key_file",
    "store.username",
    "store.password",
    "api_socket",
    "metrics_address",
    "health",
)


class Reloader(Room):
    """Applies the configuration file again."""

    def __init__(
        self,
        parts: Parts,
        definitions: Definitions,
        attachments: Attachments,
        gateways: Gateways,
    ) -> None:
        self.parts = parts
        self.definitions = definitions
        self.attachments = attachments
        self.gateways = gateways

    @handles("reload")
    async def reload(self, new: DaemonConfig | None = None) -> dict[str, Any]:
        """Apply the file again (or ``new``): networks and static peers as a difference;
        a bad file, a key that needs a restart or a network in use refuses it,
        changing nothing. Returns what changed."""
        parts = self.parts
        if new is None:
            if parts.config_path is None:
                raise ConfigError("--config", None, "a file to reload from")
            new = cfgmod.load(parts.config_path)
        old = parts.config
        for key in RESTART_KEYS:
            a, b = old, new
            for part in key.split("."):
                a, b = getattr(a, part), getattr(b, part)
            if a != b:
                raise ConfigError(
                    key.replace("_", "."), b, f"unchanged ({a!r}): restart overlayd to change it"
                )
        parts.check_ready()
        agent, node = parts.agent, parts.node
        assert agent is not None and node is not None
        async with parts.lock:
            before = {n.vni: n for n in old.networks}
            after = {n.vni: n for n in new.networks}
            in_use = self.attachments.in_use()
            gone = [v for v in before if v not in after]
            changed = [
                v
                for v in before
                if v in after and spec_for(before[v], old) != spec_for(after[v], new)
            ]
            for vni in gone + changed:
                if vni in in_use:
                    what = "removed" if vni in gone else "changed"
                    raise ConflictError(
                        f"networks: vni {vni} would be {what} but pods are attached to it; "
                        "detach them first"
                    )
            added = [after[v] for v in after if v not in before]
            old_peers = {p.name: p for p in old.store.peers}
            new_peers = {p.name: p for p in new.store.peers}
            put_peers = tuple(p for n, p in new_peers.items() if old_peers.get(n) != p)
            gone_peers = tuple(n for n in old_peers if n not in new_peers)
            await agent.set_networks(after)  # stop reconciling removed networks first
            for vni in gone + changed:
                await self.gateways.remove(vni)  # its endpoint withdrawn, its TAP deleted
                if vni in node.networks:
                    node.remove_network(vni)
                await self.definitions.forget_network(vni)
            await self.definitions.define(
                new, tuple(added) + tuple(after[v] for v in changed), put_peers, gone_peers
            )
            want = {a.vni for a in added} | set(changed)
            for _ in range(100):
                if all(v in agent.specs and v in node.networks for v in want):
                    break
                await asyncio.sleep(0.05)
            if old.log_level != new.log_level:
                logging.getLogger("overlay").setLevel(new.log_level.upper())
            parts.config = new
            parts.reloads += 1
            await self.gateways.sync()
            summary = {
                "networks_added": sorted(a.vni for a in added),
                "networks_removed": sorted(gone),
                "networks_changed": sorted(changed),
                "peers_added_or_changed": sorted(p.name for p in put_peers),
                "peers_removed": sorted(gone_peers),
            }
            log.info("overlayd: reloaded: %s", summary)
            return summary
