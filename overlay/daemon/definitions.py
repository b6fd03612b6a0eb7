"""The store definitions overlayd writes: networks and static peers, from its file.

Design notes.
- **The store is the cluster's truth.** With etcd a network's definition is
  written only where it is absent (compare-and-swap on version 0); a node
  whose file says otherwise logs the difference and runs the store's. With
  the memory store the file is the only truth, so it is written as it is.
- **Static peers.** With ``store.kind = "memory"`` nodes share no store: the
  peers listed in the file are written into the daemon's own store (so the
  agent makes them VTEPs of the networks they share), and those networks
  use flood-and-learn, since no peer can announce its pods (``spec_for``).
- **One subnet assignment without a shared store.** Every static node
  computes the same one (node names in sorted order, each taking its first
  free subnet), so static peers never hand out the same pod address.
- **Under the configuration given.** A reload defines the new file's
  networks before that file is in force (``parts.config`` is replaced only
  when the reload succeeds), so every method takes the configuration to
  apply as an argument.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

from overlay.control import keys
from overlay.control.ipam import lease_subnet
from overlay.daemon.config import DaemonConfig
from overlay.daemon.parts import Parts
from overlay.daemon.rooms import Room
from overlay.errors import ConfigError
from overlay.model import NetworkSpec, NodeSpec, from_json, to_json

log = logging.getLogger("overlay.daemon")


def spec_for(spec: NetworkSpec, cfg: DaemonConfig) -> NetworkSpec:
    """The network as this node runs it under ``cfg``: static peers learn."""
    if cfg.store.kind == "memory" and cfg.store.peers and not spec.learning:
        return dataclasses.replace(spec, learning=True)
    return spec


class Definitions(Room):
    """Networks and static peers written to the store."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def define(
        self,
        cfg: DaemonConfig,
        networks: tuple[NetworkSpec, ...],
        peers: tuple[NodeSpec, ...],
        gone_peers: tuple[str, ...],
    ) -> None:
        """Write network definitions (etcd: only where absent) and static peers, as
        configuration ``cfg`` has them (on a reload: the new one, which is not yet
        ``parts.config``); delete the static peers ``gone_peers``."""
        store = self.parts.store
        assert store is not None
        static = self.parts.static
        for spec in networks:
            spec = spec_for(spec, cfg)
            key = keys.network(spec.vni)
            if static:
                await store.put(key, to_json(spec))
                continue
            have = await store.get(key)
            if have is None:
                if await store.cas(key, 0, to_json(spec)) is not None:
                    continue
                have = await store.get(key)
            if have is not None and have.value != to_json(spec):
                try:
                    theirs = from_json(NetworkSpec, have.value)
                except ConfigError:
                    theirs = have.value
                log.warning(
                    "overlayd: network %d in the store differs from the file (%r); "
                    "the store's definition is used",
                    spec.vni,
                    theirs,
                )
        for peer in peers:
            await store.put(keys.node(peer.name), to_json(peer))
        for name in gone_peers:
            await store.delete(keys.node(name))
        if static:
            names = sorted({cfg.node.name} | {p.name for p in cfg.store.peers})
            for spec in networks:
                # A peer's fixed subnet (``subnets``: a kernel-only node) first, so
                # that no node's first free one is it.
                fixed = {
                    n: sub
                    for n in names
                    for sub in cfg.store.subnets_of(n)
                    if (net := ipaddress.ip_network(sub)).version == spec.network.version
                    and net.subnet_of(spec.network)  # type: ignore[arg-type]
                }
                for name in sorted(fixed) + [n for n in names if n not in fixed]:
                    await lease_subnet(store, spec_for(spec, cfg), name, 0, prefer=fixed.get(name))

    async def define_file(self) -> None:
        """Everything the file in force defines (at start)."""
        cfg = self.parts.config
        await self.define(cfg, cfg.networks, cfg.store.peers, ())

    async def forget_network(self, vni: int) -> None:
        """Remove a network's definition where the file is the only truth (static
        peers); with a shared store other nodes may still use it, so it stays."""
        if self.parts.static:
            assert self.parts.store is not None
            await self.parts.store.delete(keys.network(vni))
