"""Pods on this node: attach (CNI ADD), detach (DEL), look up (CHECK), GC, and
re-attach after a restart.

Design notes.
- **Pods outlive the daemon.** A pod's TAP is persistent and lives in the
  pod's namespace; ``<state_dir>/attachments.json`` (``state.StateFile``)
  remembers which TAP is whose, rewritten after every change. A restarted
  daemon re-opens each TAP where it is (in the pod's namespace),
  re-announces the endpoint, and traffic resumes: the pod keeps its
  interface, addresses and routes, and sees only a short gap.
- **Orphans are kept, not dropped.** A saved attachment that cannot be
  re-attached for a reason other than the pod being gone (its network is no
  longer hosted, the TAP cannot be opened) is kept, and saved, so that DEL
  and GC can still remove its interface and the runtime release its address.
- **Not found is not said while starting.** Until the saved attachments are
  re-attached, a lookup answers 503: "not found" would let DEL succeed (and
  the runtime release the pod's address) for a pod re-attached moments later.
- **A restarted container keeps its address.** A runtime restarts a
  container as DEL then ADD with the same container ID (``podman restart``),
  and asks for no address. The node's allocator hands out the lowest free
  address, which is another one whenever a lower one was freed meanwhile; so
  the address a node-allocated attachment had is remembered at DEL (in
  memory, for the last ``REMEMBERED`` attachments) and asked for again by the
  next ADD of the same container and interface. If it was taken meanwhile or
  left the node's lease, the ADD gets a fresh one. Its MAC follows the address,
  so peers' neighbour caches stay right and traffic resumes at once.
- **One writer.** Attach, detach and reload take ``parts.lock``; GC detaches
  one by one through ``detach``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections import OrderedDict
from typing import Any

from overlay.control.store import StoreUnavailable
from overlay.daemon.parts import Parts
from overlay.daemon.pods import (
    AttachRequest,
    add_routes,
    announce,
    delete_link,
    forbidden_netns,
    link_state,
)
from overlay.daemon.rooms import Room, handles
from overlay.daemon.state import Attachment, StateFile
from overlay.errors import ConfigError, ConflictError, NotFoundError
from overlay.model import NAMESPACE_LABEL, Endpoint

log = logging.getLogger("overlay.daemon")


def default_gateway(
    net: Any, ips: Any, ipam: str, routes: list[dict[str, str]], router: str = ""
) -> str:
    """The address a pod of ``net`` routes through by default: the node's gateway of
    the pod's primary address family, or, in an underlay network, the segment's
    ``router`` of its definition (``[[networks]] router``), when the network has
    one, overlayd gave the addresses (``ipam`` "node"), and the request has no
    default route of its own; else ""."""
    gw = net.gateway
    if (gw is None and not router) or ipam != "node" or not ips:
        return ""
    family = ipaddress.ip_interface(ips[0]).version
    if any(ipaddress.ip_network(r["dst"]).prefixlen == 0
           and ipaddress.ip_network(r["dst"]).version == family for r in routes):  # fmt: skip
        return ""
    if gw is None:
        return router if ipaddress.ip_address(router).version == family else ""
    return next((str(ip.ip) for ip in gw.ips if ip.version == family), "")


REMEMBERED = 4096
"""How many detached attachments' addresses are kept for their container's next ADD."""


class Attachments(Room):
    """The pods attached on this node, and the state file that outlives the daemon."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.state = StateFile(parts.config.node.state_dir)
        self.attached: dict[tuple[str, str], Attachment] = {}
        # Attachments from the state file that could not be re-attached for a
        # reason other than the pod being gone: kept (and saved) for DEL and GC.
        self.orphans: dict[tuple[str, str], Attachment] = {}
        # (container_id, ifname) -> (vni, address) of node-allocated attachments
        # detached lately: asked for again by the container's next ADD (a restart).
        self.released: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()

    # -- what is kept -------------------------------------------------------------

    def records(self) -> list[Attachment]:
        """Every attachment this daemon keeps: the attached ones, then the orphans."""
        return [*self.attached.values(), *self.orphans.values()]

    def in_use(self) -> set[int]:
        """The VNIs pods are attached to."""
        return {rec.vni for rec in self.attached.values()}

    def by_mac(self) -> dict[tuple[int, str], Attachment]:
        """The attached pods by (VNI, MAC)."""
        return {(r.vni, r.mac): r for r in self.attached.values()}

    def _save(self) -> None:
        self.state.save(self.records())

    # -- after a restart ----------------------------------------------------------

    async def reattach(self) -> None:
        """Re-open the TAPs of the pods attached before a restart, where they are."""
        agent = self.parts.agent
        assert agent is not None and self.parts.node is not None
        for rec in self.state.load():
            if rec.key in self.attached:
                continue
            if not os.path.exists(rec.netns):
                log.info("overlayd: %s/%s: namespace gone; forgetting it", *rec.key)
                continue
            if rec.vni not in agent.spec.networks:
                log.error(
                    "overlayd: %s/%s: vni %d is no longer hosted; kept for DEL", *rec.key, rec.vni
                )
                self.orphans[rec.key] = rec
                continue
            try:
                await self._reattach_one(rec)
            except NotFoundError as exc:
                log.info("overlayd: %s/%s: interface gone (%s); forgetting it", *rec.key, exc)
            except StoreUnavailable:
                raise
            except Exception as exc:
                log.error("overlayd: %s/%s: cannot re-attach (%s); kept for DEL", *rec.key, exc)
                self.orphans[rec.key] = rec
        self._save()

    async def _reattach_one(self, rec: Attachment) -> None:
        agent, node = self.parts.agent, self.parts.node
        assert agent is not None and node is not None
        agent.reconcile([rec.vni])  # the network exists before its port
        net = node.network(rec.vni)
        if not any(p.mac == rec.mac for p in net.ports):
            # With its identity: the tenant's policies judge it as before the restart.
            await asyncio.to_thread(
                net.attach_port,
                rec.mac,
                rec.ips,
                ifname=rec.ifname,
                netns=rec.netns,
                namespace=rec.labels.get(NAMESPACE_LABEL) or None,
                labels=dict(rec.labels),
                named_ports=dict(rec.named_ports),
            )
        ep = Endpoint(
            vni=rec.vni,
            mac=rec.mac,
            ips=tuple(rec.ips),
            node=self.parts.node_name,
            name=rec.name,
            labels=dict(rec.labels),
            ports=dict(rec.named_ports),
        )
        await agent.register_endpoint(ep, delegated=rec.ipam == "delegated")
        self.attached[rec.key] = rec
        log.info("overlayd: re-attached %s/%s (%s in vni %d)", *rec.key, rec.mac, rec.vni)

    # -- the routes ---------------------------------------------------------------

    @handles("attach")
    async def attach(self, body: Any) -> dict[str, Any]:
        req = AttachRequest.parse(body, forbidden_netns(self.parts.config.node.netns))
        self.parts.check_ready()
        agent, node = self.parts.agent, self.parts.node
        assert agent is not None and node is not None
        async with self.parts.lock:
            key = (req.container_id, req.ifname)
            if key in self.attached:
                raise ConflictError(
                    f"attachment {req.container_id}/{req.ifname} exists already; DEL it first"
                )
            if req.vni not in agent.spec.networks:
                raise ConfigError(
                    "vni", req.vni, f"a network this node hosts: {list(agent.spec.networks)}"
                )
            if req.ip_masq:
                spec = agent.specs.get(req.vni)
                if spec is None or spec.gateway == "none" or not spec.masquerade:
                    has = (
                        "no gateway"
                        if spec is None or spec.gateway == "none"
                        else "masquerade = false"
                    )
                    raise ConfigError(
                        "ipMasq",
                        True,
                        f"false, or a network that masquerades: network {req.vni} has {has} "
                        "in its definition (overlayd's [[networks]] gateway and masquerade)",
                    )
            for rec in self.attached.values():
                if rec.netns == req.netns and rec.ifname == req.ifname:
                    raise ConflictError(
                        f"{req.netns} already has {req.ifname} from container "
                        f"{rec.container_id}; choose another ifname"
                    )
            before = self.released.pop(key, None)
            former = before[1] if before and before[0] == req.vni and req.ips is None else None
            while True:
                ips = [former] if former else req.ips
                try:
                    ep, port = await agent.add_endpoint(
                        req.vni,
                        mac=req.mac,
                        name=req.name,
                        labels=req.labels,
                        named_ports=req.named_ports,
                        ips=ips,
                        reserve=ips is not None and (former is not None or req.ipam == "node"),
                        persist=True,
                        ifname=req.ifname,
                        netns=req.netns,  # the TAP is born there under its name
                    )
                    break
                except (ConflictError, ConfigError) as exc:
                    if former is None:
                        raise
                    log.info(
                        "overlayd: %s/%s: its former address %s is not free (%s); "
                        "allocating another",
                        *key,
                        former,
                        exc,
                    )
                    former = None
            net = node.network(req.vni)
            mtu = req.mtu or node.pod_mtu(net)
            # The pod's default route: its own node's gateway, when the network has
            # one (an underlay network: the segment's router, when defined), and the
            # addresses are overlayd's (a delegated IPAM gives its own).
            spec = agent.specs.get(req.vni)
            router = spec.router if spec is not None and spec.mode == "underlay" else ""
            gateway = req.gateway or default_gateway(net, ep.ips, req.ipam, req.routes, router)
            try:
                await asyncio.to_thread(
                    port.configure, mtu=mtu, gateway=None if req.gateway else gateway or None
                )
                if req.routes:
                    await asyncio.to_thread(add_routes, req.netns, req.ifname, req.routes)
            except BaseException:
                await agent.remove_endpoint(req.vni, ep.mac)
                raise
            rec = Attachment(
                container_id=req.container_id,
                ifname=req.ifname,
                netns=req.netns,
                vni=req.vni,
                tenant=net.tenant,
                mac=ep.mac,
                ips=list(ep.ips),
                mtu=mtu,
                ipam=req.ipam,
                gateway=gateway,
                routes=req.routes,
                name=req.name,
                labels=req.labels,
                named_ports=ep.ports,
            )
            self.attached[key] = rec
            self._save()
            log.info("overlayd: attached %s/%s: %s %s", *key, ep.mac, ",".join(ep.ips))
        try:
            await asyncio.to_thread(announce, req.netns, req.ifname, ep.mac, ep.ips)
        except OSError as exc:  # best effort (see overlay.daemon.pods)
            log.warning("overlayd: %s/%s: announcing %s failed: %s", *key, ep.mac, exc)
        return rec.to_dict()

    def find(self, container_id: str, ifname: str) -> Attachment:
        """The attachment kept for (container_id, ifname), attached or orphaned;
        NotFoundError when there is none, Unavailable while starting."""
        self.parts.check_ready()
        key = (container_id, ifname)
        rec = self.attached.get(key) or self.orphans.get(key)
        if rec is None:
            raise NotFoundError(f"no attachment {container_id}/{ifname} on this node")
        return rec

    @handles("attachments")
    def listing(self) -> list[dict[str, Any]]:
        return [{**a.to_dict(), "attached": a.key in self.attached} for a in self.records()]

    @handles("attachment")
    async def describe(self, container_id: str, ifname: str) -> dict[str, Any]:
        rec = self.find(container_id, ifname)
        d = rec.to_dict()
        d["attached"] = rec.key in self.attached
        d["interface"] = await asyncio.to_thread(link_state, rec.netns, rec.ifname)
        return d

    @handles("detach")
    async def detach(self, container_id: str, ifname: str) -> dict[str, Any]:
        agent = self.parts.agent
        assert agent is not None
        async with self.parts.lock:
            rec = self.find(container_id, ifname)
            if self.orphans.pop(rec.key, None) is not None:
                await asyncio.to_thread(delete_link, rec.netns, rec.ifname)
                self._save()
                return rec.to_dict()
            await agent.remove_endpoint(rec.vni, rec.mac)  # the TAP goes with its port
            del self.attached[rec.key]
            if rec.ipam == "node" and rec.ips:
                self.released[rec.key] = (rec.vni, rec.ips[0])
                self.released.move_to_end(rec.key)
                while len(self.released) > REMEMBERED:
                    self.released.popitem(last=False)
            self._save()
            log.info("overlayd: detached %s/%s", container_id, ifname)
            return rec.to_dict()

    @handles("gc")
    async def gc(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("valid"), list):
            raise ConfigError("valid", body, 'a list of {"container_id", "ifname"}')
        valid = set()
        for v in body["valid"]:
            if not isinstance(v, dict) or not isinstance(v.get("container_id"), str):
                raise ConfigError("valid", v, '{"container_id": ..., "ifname": ...}')
            valid.add((v["container_id"], str(v.get("ifname", ""))))
        vni = body.get("vni")
        if vni is not None and (isinstance(vni, bool) or not isinstance(vni, int)):
            raise ConfigError("vni", vni, "a VNI, or no vni field for every network")
        self.parts.check_ready()
        removed = []
        for rec in self.records():
            if rec.key in valid or (vni is not None and rec.vni != vni):
                continue
            with contextlib.suppress(NotFoundError):
                removed.append(await self.detach(*rec.key))
        return {"removed": removed}
