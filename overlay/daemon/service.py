"""overlayd's core: one node, its agent, its pods, its API — and how they start,
reload and stop.

Design notes.
- **All or nothing at start.** The configuration is checked in full before
  anything is made; then the node (sockets bound), the store, the API socket
  and the metrics endpoint are brought up in order, and a failure at any step
  tears down the steps before it and exits with a message naming the key.
- **Pods outlive the daemon.** A pod's TAP is persistent and lives in the
  pod's namespace; ``<state_dir>/attachments.json`` remembers which TAP is
  whose. A restarted daemon re-opens each TAP where it is (in the pod's
  namespace), re-announces the endpoint, and traffic resumes: the pod keeps
  its interface, addresses and routes, and sees only a short gap. SIGTERM
  therefore does not withdraw anything from the store: the node's lease
  keeps its keys for a TTL, so peers keep forwarding to a daemon that comes
  straight back; one that does not is forgotten when the lease expires.
- **Reload is a diff.** SIGHUP (or ``POST /v1/reload``) reads the file again;
  a bad file changes nothing. Networks and static peers are applied as a
  difference — unchanged networks are not touched, so their traffic never
  stops; a network with pods attached cannot be removed or redefined (the
  reload is refused naming it). Keys that need a restart (node, store, API
  socket) refuse the reload too, naming the key.
- **One writer.** Attach, detach, GC and reload take one lock; requests for
  different containers are safe to send at once and are served in turn (each
  takes milliseconds).
- **Static peers.** With ``store.kind = "memory"`` nodes share no store: the
  peers listed in the file are written into the daemon's own store (so the
  agent makes them VTEPs of the networks they share), and those networks
  use flood-and-learn, since no peer can announce its pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from overlay import __version__
from overlay.control import keys
from overlay.control.agent import Agent
from overlay.control.ipam import lease_subnet
from overlay.control.store import MemoryStore, Store, StoreUnavailable
from overlay.daemon import config as cfgmod
from overlay.daemon.api import ApiServer, Router, Unavailable
from overlay.daemon.config import DaemonConfig
from overlay.daemon.health import HEALTH_TENANT, HealthProber
from overlay.daemon.pods import (
    AttachRequest,
    add_routes,
    delete_link,
    forbidden_netns,
    link_state,
)
from overlay.daemon.state import Attachment, StateFile
from overlay.errors import ConfigError, ConflictError, NotFoundError, OverlayError
from overlay.model import Endpoint, NetworkSpec, NodeSpec, from_json, to_json
from overlay.node import Encap, Node
from overlay.nsenter import iproute, link_index, netns_path, off_loop

log = logging.getLogger("overlay.daemon")


def resolve_underlay(node: cfgmod.NodeConfig) -> str:
    """The underlay address: ``node.underlay``, or the first address of ``node.interface``
    (IPv4 first) in the node's namespace."""
    if node.underlay:
        return node.underlay
    interface = node.interface or ""  # parse() asks for exactly one of the two
    path = netns_path(node.netns) if node.netns else None

    def lookup() -> str:
        with iproute(path) as ipr:
            try:
                idx = link_index(ipr, interface, path)
            except LookupError:
                raise ConfigError("node.interface", interface, "an existing interface") from None
            addrs = [
                (a["family"], a.get_attr("IFA_ADDRESS"))
                for a in ipr.get_addr(index=idx)
                if a["scope"] == 0
            ]
        for _fam, a in sorted(addrs, key=lambda x: x[0]):
            return str(a)
        raise ConfigError(
            "node.interface", interface, "an interface with a global IPv4 or IPv6 address"
        )

    return off_loop(lookup)


class Daemon:
    """overlayd: ``await Daemon(config, path).start()``, then ``await wait_stopped()``."""

    def __init__(self, config: DaemonConfig, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.node: Node | None = None
        self.store: Store | None = None
        self.agent: Agent | None = None
        self.prober: Any = None
        self.metrics: Any = None
        self.api: ApiServer | None = None
        self.state = StateFile(config.node.state_dir)
        self.attachments: dict[tuple[str, str], Attachment] = {}
        self.ready = False
        self.started = time.monotonic()
        self.reloads = 0
        self.failed = False  # start-up failed after the API came up: exit non-zero
        # Attachments from the state file that could not be re-attached for a
        # reason other than the pod being gone: kept (and saved) for DEL and GC.
        self.orphans: dict[tuple[str, str], Attachment] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up, or nothing: on failure what was started is stopped."""
        try:
            await self._start()
        except BaseException:
            await self._teardown()
            raise

    async def _start(self) -> None:
        c = self.config
        self.state.secure()  # files an older release left readable: private before use
        underlay = resolve_underlay(c.node)
        try:
            self.node = Node(
                underlay,
                Encap[c.node.encap.upper()],
                port=c.node.port,
                netns=c.node.netns or None,
                mtu=c.node.mtu,
                workers=c.node.workers,
            )
        except ConfigError as exc:
            raise ConfigError(f"node.{exc.field}", exc.value, exc.expected) from None
        except OverlayError as exc:
            raise ConfigError(
                "node", f"{underlay}:{c.node.port}", f"a usable VTEP ({exc})"
            ) from exc
        self.node.start()
        if c.store.kind == "etcd":
            from overlay.control.etcd import EtcdStore

            self.store = EtcdStore(
                list(c.store.endpoints),
                ca_file=c.store.ca_file,
                cert_file=c.store.cert_file,
                key_file=c.store.key_file,
                username=c.store.username,
                password=None if c.store.password is None else str(c.store.password),
            )
        else:
            self.store = MemoryStore()
        self.agent = Agent(
            self.node,
            self.store,
            c.node.name,
            networks=[n.vni for n in c.networks],
            ttl=c.store.ttl,
        )
        if c.metrics_address:
            from overlay.daemon.metrics import Metrics

            metrics = Metrics(self.snapshot)
            await metrics.serve(c.metrics_address)  # scrapes run on this loop: no locking
            self.metrics = metrics
            self.agent.on_reconcile = metrics.observe_reconcile
            host, port = metrics.bound or ("?", 0)
            log.info("overlayd: metrics on http://%s:%d/metrics", host, port)
        self.api = ApiServer(self._router(), c.api_socket)
        await self.api.start()
        if c.health.enabled:
            self.prober = HealthProber(
                self.node, c.node.name, vni=c.health.vni, interval=c.health.interval
            )
            await self.prober.start()
        self._tasks.append(asyncio.create_task(self._bootstrap(), name="overlayd-bootstrap"))
        log.info(
            "overlayd %s: node %s, underlay %s:%d (%s), store %s, API %s",
            __version__,
            c.node.name,
            underlay,
            self.node.port,
            c.node.encap,
            c.store.kind,
            c.api_socket,
        )

    async def _bootstrap(self) -> None:
        """Define networks and peers in the store, run the agent, re-attach pods."""
        try:
            await self._bootstrap_steps()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("overlayd: start-up failed; stopping")
            self.failed = True
            asyncio.get_running_loop().create_task(self.stop())

    async def _bootstrap_steps(self) -> None:
        assert self.agent is not None
        await self._retry(
            self._define, self.config, self.config.networks, self.config.store.peers, ()
        )
        self._tasks.append(asyncio.create_task(self.agent.run(), name="overlayd-agent"))
        self._tasks.append(asyncio.create_task(self._peer_loop(), name="overlayd-peers"))
        await self.agent.synced.wait()
        await self._retry(self._reattach)
        self.ready = True
        log.info("overlayd: ready (%d attachments)", len(self.attachments))

    async def _retry(self, fn: Any, *args: Any) -> None:
        delay = 0.1
        while True:
            try:
                await fn(*args)
                return
            except StoreUnavailable as exc:
                log.warning("overlayd: store unavailable (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop serving. Pods keep their (persistent) interfaces and the node's keys
        stay in the store until its lease expires, so a restart is seamless."""
        if self._stopped.is_set():
            return
        log.info("overlayd: stopping")
        await self._teardown()
        self._stopped.set()

    async def _teardown(self) -> None:
        self.ready = False
        if self.api is not None:
            await self.api.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.prober is not None:
            with contextlib.suppress(Exception):
                await self.prober.stop()
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await self.agent.stop(deregister=False)
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                await self.metrics.close()
            self.metrics = None
        if self.node is not None:
            self.node.close()  # persistent TAPs stay, in the pods' namespaces
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()

    # -- desired state in the store --------------------------------------------

    def _static(self) -> bool:
        return self.config.store.kind == "memory"

    @staticmethod
    def _spec(spec: NetworkSpec, cfg: DaemonConfig) -> NetworkSpec:
        """The network as this node runs it under ``cfg``: static peers learn."""
        if cfg.store.kind == "memory" and cfg.store.peers and not spec.learning:
            return dataclasses.replace(spec, learning=True)
        return spec

    async def _define(
        self,
        cfg: DaemonConfig,
        networks: tuple[NetworkSpec, ...],
        peers: tuple[NodeSpec, ...],
        gone_peers: tuple[str, ...],
    ) -> None:
        """Write network definitions (etcd: only where absent — the store is the
        cluster's truth) and static peers, as configuration ``cfg`` has them (on a
        reload: the new one, which is not yet ``self.config``)."""
        assert self.store is not None
        for spec in networks:
            spec = self._spec(spec, cfg)
            key = keys.network(spec.vni)
            if self._static():
                await self.store.put(key, to_json(spec))
                continue
            have = await self.store.get(key)
            if have is None:
                if await self.store.cas(key, 0, to_json(spec)) is not None:
                    continue
                have = await self.store.get(key)
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
            await self.store.put(keys.node(peer.name), to_json(peer))
        for name in gone_peers:
            await self.store.delete(keys.node(name))
        if self._static():
            # No shared store to lease subnets from: every node computes the same
            # assignment (names in sorted order, each taking its first free
            # subnet), so static peers never hand out the same pod address.
            names = sorted({cfg.node.name} | {p.name for p in cfg.store.peers})
            for spec in networks:
                for name in names:
                    await lease_subnet(self.store, self._spec(spec, cfg), name, 0)

    async def _peer_loop(self) -> None:
        """Keep the health prober's peers equal to the nodes the agent knows."""
        while True:
            if self.prober is not None and self.agent is not None:
                try:
                    self.prober.set_peers(
                        {n.name: (n.underlay, n.port) for n in self.agent.nodes.values()}
                    )
                except Exception:
                    log.exception("overlayd: updating health peers failed")
            await asyncio.sleep(min(1.0, self.config.health.interval))

    # -- attachments --------------------------------------------------------------

    def _records(self) -> list[Attachment]:
        """Every attachment this daemon keeps: the attached ones, then the orphans."""
        return [*self.attachments.values(), *self.orphans.values()]

    def _save(self) -> None:
        self.state.save(self._records())

    async def _reattach(self) -> None:
        """Re-open the TAPs of the pods attached before a restart, where they are."""
        assert self.agent is not None and self.node is not None
        for rec in self.state.load():
            if rec.key in self.attachments:
                continue
            if not os.path.exists(rec.netns):
                log.info("overlayd: %s/%s: namespace gone; forgetting it", *rec.key)
                continue
            if rec.vni not in self.agent.spec.networks:
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
        assert self.agent is not None and self.node is not None
        self.agent.reconcile([rec.vni])  # the network exists before its port
        net = self.node.network(rec.vni)
        if not any(p.mac == rec.mac for p in net.ports):
            await asyncio.to_thread(
                net.attach_port, rec.mac, rec.ips, ifname=rec.ifname, netns=rec.netns
            )
        ep = Endpoint(
            vni=rec.vni,
            mac=rec.mac,
            ips=tuple(rec.ips),
            node=self.config.node.name,
            name=rec.name,
            labels=dict(rec.labels),
        )
        await self.agent.register_endpoint(ep, delegated=rec.ipam == "delegated")
        self.attachments[rec.key] = rec
        log.info("overlayd: re-attached %s/%s (%s in vni %d)", *rec.key, rec.mac, rec.vni)

    def _check_ready(self) -> None:
        if not self.ready:
            raise Unavailable("overlayd is starting (waiting for the store); try again shortly")

    async def attach(self, body: Any) -> dict[str, Any]:
        req = AttachRequest.parse(body, forbidden_netns(self.config.node.netns))
        self._check_ready()
        assert self.agent is not None and self.node is not None
        async with self._lock:
            key = (req.container_id, req.ifname)
            if key in self.attachments:
                raise ConflictError(
                    f"attachment {req.container_id}/{req.ifname} exists already; DEL it first"
                )
            if req.vni not in self.agent.spec.networks:
                raise ConfigError(
                    "vni", req.vni, f"a network this node hosts: {list(self.agent.spec.networks)}"
                )
            for rec in self.attachments.values():
                if rec.netns == req.netns and rec.ifname == req.ifname:
                    raise ConflictError(
                        f"{req.netns} already has {req.ifname} from container "
                        f"{rec.container_id}; choose another ifname"
                    )
            ep, port = await self.agent.add_endpoint(
                req.vni,
                mac=req.mac,
                name=req.name,
                labels=req.labels,
                ips=req.ips,
                persist=True,
                ifname=req.ifname,
                netns=req.netns,  # the TAP is born there under its name: no move, no rename
            )
            net = self.node.network(req.vni)
            mtu = req.mtu or self.node.pod_mtu(net)
            try:
                await asyncio.to_thread(port.configure, mtu=mtu)
                if req.routes:
                    await asyncio.to_thread(add_routes, req.netns, req.ifname, req.routes)
            except BaseException:
                await self.agent.remove_endpoint(req.vni, ep.mac)
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
                ipam="delegated" if req.ips is not None else "node",
                gateway=req.gateway,
                routes=req.routes,
                name=req.name,
                labels=req.labels,
            )
            self.attachments[key] = rec
            self._save()
            log.info("overlayd: attached %s/%s: %s %s", *key, ep.mac, ",".join(ep.ips))
            return rec.to_dict()

    def _attachment(self, container_id: str, ifname: str) -> Attachment:
        # Until the saved attachments are re-attached, "not found" would be a lie:
        # DEL would succeed (and the runtime release the pod's address) for a pod
        # that is re-attached moments later.
        self._check_ready()
        key = (container_id, ifname)
        rec = self.attachments.get(key) or self.orphans.get(key)
        if rec is None:
            raise NotFoundError(f"no attachment {container_id}/{ifname} on this node")
        return rec

    async def detach(self, container_id: str, ifname: str) -> dict[str, Any]:
        assert self.agent is not None
        async with self._lock:
            rec = self._attachment(container_id, ifname)
            if self.orphans.pop(rec.key, None) is not None:
                await asyncio.to_thread(delete_link, rec.netns, rec.ifname)
                self._save()
                return rec.to_dict()
            await self.agent.remove_endpoint(rec.vni, rec.mac)  # the TAP goes with its port
            del self.attachments[rec.key]
            self._save()
            log.info("overlayd: detached %s/%s", container_id, ifname)
            return rec.to_dict()

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
        self._check_ready()
        removed = []
        for rec in self._records():
            if rec.key in valid or (vni is not None and rec.vni != vni):
                continue
            with contextlib.suppress(NotFoundError):
                removed.append(await self.detach(*rec.key))
        return {"removed": removed}

    # -- reload -------------------------------------------------------------------

    async def reload(self, new: DaemonConfig | None = None) -> dict[str, Any]:
        """Apply the file again: networks and static peers as a difference; a bad file,
        a key that needs a restart or a network in use refuses it, changing nothing."""
        if new is None:
            if self.config_path is None:
                raise ConfigError("--config", None, "a file to reload from")
            new = cfgmod.load(self.config_path)
        old = self.config
        for key in (
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
        ):
            a, b = old, new
            for part in key.split("."):
                a, b = getattr(a, part), getattr(b, part)
            if a != b:
                raise ConfigError(
                    key.replace("_", "."), b, f"unchanged ({a!r}): restart overlayd to change it"
                )
        self._check_ready()
        assert self.agent is not None and self.node is not None
        async with self._lock:
            before = {n.vni: n for n in old.networks}
            after = {n.vni: n for n in new.networks}
            in_use = {rec.vni for rec in self.attachments.values()}
            gone = [v for v in before if v not in after]
            # As the node runs them: the first static peer (or the last gone) turns
            # learning on (off) for networks whose lines did not change.
            changed = [
                v
                for v in before
                if v in after and self._spec(before[v], old) != self._spec(after[v], new)
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
            await self.agent.set_networks(after)  # stop reconciling removed networks first
            for vni in gone + changed:
                if vni in self.node.networks:
                    self.node.remove_network(vni)
                if self._static():
                    await self.store.delete(keys.network(vni))  # type: ignore[union-attr]
            await self._define(
                new, tuple(added) + tuple(after[v] for v in changed), put_peers, gone_peers
            )
            # Answer once the agent has read the new definitions: a pod may be
            # attached to a new network as soon as the reload returns.
            want = {a.vni for a in added} | set(changed)
            for _ in range(100):
                if all(v in self.agent.specs and v in self.node.networks for v in want):
                    break
                await asyncio.sleep(0.05)
            if self.config.log_level != new.log_level:
                logging.getLogger("overlay").setLevel(new.log_level.upper())
            self.config = new
            self.reloads += 1
            summary = {
                "networks_added": sorted(a.vni for a in added),
                "networks_removed": sorted(gone),
                "networks_changed": sorted(changed),
                "peers_added_or_changed": sorted(p.name for p in put_peers),
                "peers_removed": sorted(gone_peers),
            }
            log.info("overlayd: reloaded: %s", summary)
            return summary

    # -- views ----------------------------------------------------------------------

    def _peer_results(self) -> dict[str, dict[str, Any]]:
        if self.prober is None:
            return {}
        return {r["name"]: r for r in self.prober.results()}

    @property
    def store_connected(self) -> bool:
        """True while the agent is running and the store answers it."""
        return self.agent is not None and self.agent.connected

    @property
    def store_error(self) -> str:
        """Why the store failed last ("" once it answers): etcd's TLS and auth refusals
        name their cause and the setting to fix (``EtcdStore.last_error``)."""
        return str(getattr(self.store, "last_error", "") or "")

    def serving(self) -> bool:
        """Ready for ADD: started, pods re-attached, and the store answering (an ADD
        needs it to lease an address and to announce the pod)."""
        return not self.not_serving_reason()

    def not_serving_reason(self) -> str:
        """Why ADD cannot be served now ("" when it can)."""
        if not self.ready:
            error = self.store_error
            return "starting: waiting for the store to re-attach pods" + (
                f" ({error})" if error else ""
            )
        if not self.store_connected:
            error = self.store_error
            return f"the store ({self.config.store.kind}) is unreachable; retrying" + (
                f": {error}" if error else ""
            )
        return ""

    def _local_remote(self, endpoints: Iterable[Endpoint]) -> tuple[int, int]:
        """How many of ``endpoints`` are this node's pods, and how many other nodes'."""
        local = remote = 0
        for ep in endpoints:
            if ep.node == self.config.node.name:
                local += 1
            else:
                remote += 1
        return local, remote

    def status(self) -> dict[str, Any]:
        c = self.config
        agent = self.agent
        peers = self.peers()
        return {
            "node": c.node.name,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "ready": self.serving(),
            "reason": self.not_serving_reason(),
            "underlay": str(self.node.underlay) if self.node else None,
            "encap": c.node.encap,
            "port": self.node.port if self.node else c.node.port,
            "mtu": c.node.mtu,
            "store": {
                "kind": c.store.kind,
                "endpoints": list(c.store.endpoints),
                "connected": self.store_connected,
                "error": self.store_error,
                "rejected_records": len(agent.claims.rejected) if agent else 0,
            },
            "networks": len(agent.spec.networks) if agent else 0,
            "attachments": len(self.attachments),
            "endpoints": sum(len(e) for e in agent.endpoints.values()) if agent else 0,
            "peers": len(peers),
            "peers_reachable": sum(1 for p in peers if p.get("reachable")),
            "reloads": self.reloads,
        }

    def networks(self) -> list[dict[str, Any]]:
        agent, node = self.agent, self.node
        if agent is None or node is None:
            return []
        out = []
        for vni in agent.spec.networks:
            spec = agent.specs.get(vni)
            net = node.networks.get(vni)
            local, remote = self._local_remote(agent.endpoints.get(vni, {}).values())
            out.append(
                {
                    "vni": vni,
                    "tenant": spec.tenant if spec else None,
                    "cidr": spec.cidr if spec else None,
                    "learning": spec.learning if spec else None,
                    "subnet": agent.subnets.get(vni),
                    "pod_mtu": node.pod_mtu(net) if net else None,
                    "vteps": sorted(str(v) for v in net.vteps) if net else [],
                    "local_endpoints": local,
                    "remote_endpoints": remote,
                    "defined": spec is not None,
                }
            )
        return out

    def endpoints(self, vni: int | None = None) -> list[dict[str, Any]]:
        agent = self.agent
        if agent is None:
            return []
        by_mac = {(r.vni, r.mac): r for r in self.attachments.values()}
        out = []
        for v, eps in sorted(agent.endpoints.items()):
            if vni is not None and v != vni:
                continue
            for ep in sorted(eps.values(), key=lambda e: e.mac):
                d = dataclasses.asdict(ep)
                d["local"] = ep.node == self.config.node.name
                rec = by_mac.get((v, ep.mac))
                if rec is not None:
                    d.update(container_id=rec.container_id, ifname=rec.ifname, netns=rec.netns)
                out.append(d)
        return out

    def peers(self) -> list[dict[str, Any]]:
        agent = self.agent
        if agent is None:
            return []
        health = self._peer_results()
        hosted = set(agent.spec.networks)
        out = []
        for n in sorted(agent.nodes.values(), key=lambda n: n.name):
            h = health.get(n.name, {})
            out.append(
                {
                    "name": n.name,
                    "underlay": n.underlay,
                    "port": n.port or (self.node.port if self.node else 0),
                    "networks": sorted(set(n.networks) & hosted),
                    "reachable": h.get("reachable"),
                    "rtt_ms": h.get("rtt_ms"),
                    "rtt_avg_ms": h.get("rtt_avg_ms"),
                    "last_reply_age_s": h.get("last_reply_age_s"),
                    "probes_sent": h.get("sent"),
                    "probes_received": h.get("received"),
                }
            )
        return out

    def fdb(self, vni: int | None = None) -> list[dict[str, Any]]:
        if self.node is None:
            return []
        now = time.monotonic_ns()
        out = []
        for e in self.node.fdb():
            if vni is not None and e.vni != vni:
                continue
            d = dataclasses.asdict(e)
            d["age_s"] = round(max(0, now - e.updated_ns) / 1e9, 3) if e.updated_ns else None
            out.append(d)
        return sorted(out, key=lambda d: (d["vni"], d["mac"]))

    def health(self) -> dict[str, Any]:
        return {
            "ready": self.serving(),
            "store_connected": self.store_connected,
            "store_error": self.store_error,
            "probing": self.prober is not None,
            "peers": self.peers(),
        }

    def snapshot(self) -> dict[str, Any]:
        """What the metrics collector reads."""
        agent = self.agent
        eps = []
        for v, group in agent.endpoints.items() if agent else []:
            local, remote = self._local_remote(group.values())
            eps.append({"vni": v, "local": local, "remote": remote})
        return {
            "node": self.config.node.name,
            "counters": self.node.counters() if self.node else {},
            "networks": [{"vni": n["vni"], "tenant": n["tenant"]} for n in self.networks()]
            + (
                [{"vni": self.config.health.vni, "tenant": HEALTH_TENANT}]
                if self.prober is not None
                else []
            ),
            "endpoints": eps,
            "peers": [
                {
                    "name": p["name"],
                    "underlay": p["underlay"],
                    "reachable": p["reachable"],
                    "rtt_ms": p["rtt_ms"],
                }
                for p in self.peers()
            ],
            "store": {"kind": self.config.store.kind, "connected": self.store_connected},
            # Store records the agent refuses (overlay.control.claims), by reason.
            "store_rejected": agent.rejected_counts() if agent else None,
        }

    # -- the API ----------------------------------------------------------------------

    def _router(self) -> Router:
        r = Router()

        def view(fn: Any, with_vni: bool = False) -> Any:
            async def handler(query: dict[str, str], body: Any) -> Any:
                if with_vni:
                    return fn(_query_vni(query))
                return fn()

            return handler

        async def attach(query: dict[str, str], body: Any) -> Any:
            return await self.attach(body)

        async def attachments(query: dict[str, str], body: Any) -> Any:
            return [{**a.to_dict(), "attached": a.key in self.attachments} for a in self._records()]

        async def attachment(query: dict[str, str], body: Any, cid: str, ifname: str) -> Any:
            rec = self._attachment(cid, ifname)
            d = rec.to_dict()
            d["attached"] = rec.key in self.attachments
            d["interface"] = await asyncio.to_thread(link_state, rec.netns, rec.ifname)
            return d

        async def detach(query: dict[str, str], body: Any, cid: str, ifname: str) -> Any:
            return await self.detach(cid, ifname)

        async def gc(query: dict[str, str], body: Any) -> Any:
            return await self.gc(body)

        async def reload(query: dict[str, str], body: Any) -> Any:
            return await self.reload()

        async def counters(query: dict[str, str], body: Any) -> Any:
            return self.node.counters() if self.node else {}

        r.add("GET", "/v1/status", view(self.status))
        r.add("GET", "/v1/health", view(self.health))
        r.add("GET", "/v1/networks", view(self.networks))
        r.add("GET", "/v1/endpoints", view(self.endpoints, True))
        r.add("POST", "/v1/endpoints", attach)
        r.add("GET", "/v1/attachments", attachments)
        r.add("GET", "/v1/attachments/<cid>/<ifname>", attachment)
        r.add("DELETE", "/v1/attachments/<cid>/<ifname>", detach)
        r.add("POST", "/v1/gc", gc)
        r.add("POST", "/v1/reload", reload)
        r.add("GET", "/v1/peers", view(self.peers))
        r.add("GET", "/v1/fdb", view(self.fdb, True))
        r.add("GET", "/v1/counters", counters)
        return r


def _query_vni(query: dict[str, str]) -> int | None:
    v = query.get("vni")
    if v is None:
        return None
    if not v.isdigit():
        raise ConfigError("vni", v, "a VNI (a number)")
    return int(v)
