"""Peers: member VTEPs and remote endpoints (FDB and neighbours) of each network.

Design notes.
- **Level-triggered.** The desired tables are the checked state's (the
  claims check decided which records win); this reconciler makes the node's
  tables equal to them: member VTEPs (flood list and accepted sources), remote
  endpoints (FDB) and their addresses (neighbours, for ARP/ND suppression).
  It compares against what the node *has*, not what it remembers doing, so a
  restarted agent adopts the entries already programmed (nothing is removed
  and re-added: traffic between existing pods keeps flowing) and anything
  stale is removed.
- **Work proportional to the change.** Updates name the MACs and VTEPs that
  changed; only those are programmed, each compared with what the node has,
  so nothing right is touched: one more endpoint costs the same with 10 or
  100,000 in the network. A whole network is compared with the node only
  when the update says so (a first read, a resynchronisation, a new
  definition) and when the node's network is one this reconciler has not
  compared yet (just created, or made again by its owner).
- **Refusals are retried, not fatal.** An entry the node refuses (an
  address a local port has meanwhile, a full table) is logged once per
  reason and programmed again, from the state as it is then, at every later
  apply until it succeeds or is no longer wanted.
- **Routed and auto networks tunnel only to tunnel peers.** A peer whose
  path (``overlay.control.paths``) is direct or BGP is reached through the
  node's kernel routes, not the engine: it is not a member VTEP (no flood to
  it, none of its packets accepted) and its pods are not remotes (the engine
  would otherwise also hold their addresses, and its gateway port could not
  forward routed packets from them: ``encap.c``'s ``gateway_forwards``). A
  routed network therefore has no VTEP and no remote at all; an auto network
  those of the peers behind a router. The filter is applied to each update,
  so its cost stays that of the update.
- **Another tenant's network is not touched.** When the node runs a VNI for
  another tenant than the store defines (made by someone else), nothing is
  programmed into it; that is logged once per network.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

from overlay.control.claims import NetChanges, Remote
from overlay.control.nodeapi import NetworkTables, NodeTables
from overlay.control.paths import ROUTED_MODES, IPNetwork, is_member_vtep, underlay_network
from overlay.control.reconcilers.base import CheckedState, Update
from overlay.errors import OverlayError

log = logging.getLogger("overlay.agent")


class Peers:
    """Programs member VTEPs and remote endpoints (see the module's notes)."""

    name = "peers"

    def __init__(self, node: NodeTables, state: CheckedState, me: str) -> None:
        self.node = node
        self.state = state
        self.me = me
        self._pending: dict[int, NetChanges] = {}  # VNI -> what changed since the last apply
        self._merged: set[int] = set()  # pending entries that are our own copies
        # VNI -> the node's network object compared in full with the desired
        # tables (a network made again is a new object: compared again).
        self._compared: dict[int, NetworkTables] = {}
        self._foreign: dict[int, NetworkTables] = {}  # another tenant's, logged once
        self._failed: dict[tuple[int, str], str] = {}  # (VNI, MAC) not programmed -> why
        self._hosted: tuple[int, ...] = ()
        self._underlay: tuple[IPNetwork | None] | None = None  # the node's underlay subnet, once

    def on_update(self, update: Update) -> None:
        if not isinstance(update, NetChanges):
            return
        vni = update.vni
        have = self._pending.get(vni)
        if have is None or update.full:
            self._pending[vni] = update
            self._merged.discard(vni)
            return
        if vni not in self._merged:  # updates are shared: merge into a copy
            have = dataclasses.replace(have, remotes=dict(have.remotes), vteps=dict(have.vteps))
            self._pending[vni] = have
            self._merged.add(vni)
        if have.full:  # a whole table: what is no longer wanted leaves it
            for mac, r in update.remotes.items():
                if r is None:
                    have.remotes.pop(mac, None)
                else:
                    have.remotes[mac] = r
            for addr, port in update.vteps.items():
                if port is None:
                    have.vteps.pop(addr, None)
                else:
                    have.vteps[addr] = port
        else:
            have.remotes.update(update.remotes)
            have.vteps.update(update.vteps)

    def apply(self, hosted: tuple[int, ...], wanted: AbstractSet[int]) -> None:
        pending, self._pending = self._pending, {}
        self._merged.clear()
        if hosted != self._hosted:  # forget networks no longer hosted
            self._hosted = hosted
            keep = set(hosted)
            self._failed = {k: v for k, v in self._failed.items() if k[0] in keep}
            for table in (self._compared, self._foreign):
                for vni in [v for v in table if v not in keep]:
                    del table[vni]
        retry: dict[int, list[str]] = {}
        for vni, mac in self._failed:
            retry.setdefault(vni, []).append(mac)
        for vni in hosted:
            try:
                self._apply_network(vni, pending.get(vni), retry.get(vni, ()))
            except OverlayError as exc:
                log.error("agent %s: vni %d: %s", self.me, vni, exc)

    def _apply_network(self, vni: int, ch: NetChanges | None, retry: Iterable[str]) -> None:
        spec = self.state.specs.get(vni)
        net = self.node.networks.get(vni)
        if spec is None or net is None:
            self._compared.pop(vni, None)  # compared in full once both exist
            return
        if net.tenant != spec.tenant:  # a network made on the node by someone else
            if self._foreign.get(vni) is not net:
                self._foreign[vni] = net
                log.error(
                    "agent %s: vni %d belongs to tenant %r here but %r in the store; "
                    "not touching it",
                    self.me,
                    vni,
                    net.tenant,
                    spec.tenant,
                )
            return
        self._foreign.pop(vni, None)
        if self._compared.get(vni) is not net:
            if ch is None or not ch.full:  # (a full update is the same tables, built)
                ch = NetChanges(vni, True, self.state.remotes(vni), self.state.vteps(vni))
            self._compared[vni] = net
        # What the node refused last time, as it should be now (a full compare
        # and an update naming the MAC have it already).
        again: dict[str, Remote | None] = {}
        if ch is None or not ch.full:
            for mac in retry:
                if ch is None or mac not in ch.remotes:
                    again[mac] = self.state.remote(vni, mac)
        if ch is None and not again:
            return
        if ch is None:
            ch = NetChanges(vni)
        ch, again = self._tunnel_only(vni, ch, again)
        if ch.full:
            for addr in set(net.vteps) - set(ch.vteps):
                net.remove_vtep(str(addr))
            for mac in set(net.remotes) - set(ch.remotes):
                self._program(net, vni, mac, None)
        for addr, port in ch.vteps.items():
            if port is None:
                if addr in net.vteps:
                    net.remove_vtep(str(addr))
            elif addr not in net.vteps:
                net.add_vtep(str(addr), port or None)
        remotes = {**ch.remotes, **again} if again else ch.remotes
        # Two passes, so that an address moving from one MAC to another is free
        # before it is taken: first what goes or shrinks, then what comes.
        for mac, r in remotes.items():
            have = net.remotes.get(mac)
            if have is None:
                continue
            if r is None:
                self._program(net, vni, mac, None)
            elif any(a not in r.ips for a in have[1]):
                keep = Remote(r.vtep, tuple(a for a in have[1] if a in r.ips), r.port)
                self._program(net, vni, mac, keep)
        for mac, r in remotes.items():
            if r is not None:
                self._program(net, vni, mac, r)

    def _local_underlay(self) -> IPNetwork | None:
        if self._underlay is None:
            netns = getattr(self.node, "netns", None)
            self._underlay = (underlay_network(netns, self.node.underlay),)
        return self._underlay[0]

    def _tunnel_only(
        self, vni: int, ch: NetChanges, again: dict[str, Remote | None]
    ) -> tuple[NetChanges, dict[str, Remote | None]]:
        """ch and again without the peers this network does not tunnel to (see the
        module's notes): a copy, the update is shared."""
        spec = self.state.specs.get(vni)
        if spec is not None and spec.mode == "underlay":
            # Pods of other nodes are stations of the segment, reached there
            # (overlay.uplink): no VTEP, no remote; a whole table empties it.
            return NetChanges(vni, ch.full, {}, {}), {}
        if spec is None or spec.mode not in ROUTED_MODES:
            return ch, again
        mode, local = spec.mode, self._local_underlay()

        def keep(addr: object) -> bool:
            return is_member_vtep(mode, local, str(addr))

        vteps = {a: (p if p is None or keep(a) else None) for a, p in ch.vteps.items()}
        remotes = {m: (r if r is None or keep(r.vtep) else None) for m, r in ch.remotes.items()}
        if ch.full:  # a whole table: what is left out goes
            vteps = {a: p for a, p in vteps.items() if p is not None}
            remotes = {m: r for m, r in remotes.items() if r is not None}
        again = {m: (r if r is None or keep(r.vtep) else None) for m, r in again.items()}
        return NetChanges(vni, ch.full, remotes, vteps), again

    def _program(self, net: NetworkTables, vni: int, mac: str, r: Remote | None) -> None:
        """Make the node's entry for mac equal r (None: no entry); a refusal is
        logged (once per reason) and tried again at the next apply."""
        have = net.remotes.get(mac)
        try:
            if r is None:
                if have is not None:
                    net.remove_remote(mac)
            elif have is None or have[0] != r.vtep or tuple(have[1]) != r.ips:
                net.add_remote(mac, str(r.vtep), [str(i) for i in r.ips], r.port or None)
        except OverlayError as exc:
            why = str(exc)
            if self._failed.get((vni, mac)) != why:
                log.error("agent %s: vni %d: %s not programmed: %s", self.me, vni, mac, why)
            self._failed[(vni, mac)] = why
            return
        self._failed.pop((vni, mac), None)
