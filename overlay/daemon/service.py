"""overlayd's life cycle: one node, its store and agent, its API and metrics — how
they start, answer signals and stop — and the rooms that do the rest.

Design notes.
- **Rooms, one job each.** This module brings the parts up and down
  (``parts.Parts``: node, store, agent, prober) and wires the rooms that work
  on them: ``definitions`` (networks and static peers written to the store),
  ``attach`` (pods: attach, detach, GC, re-attach after a restart),
  ``reload`` (the file applied again, as a difference), ``views`` (the
  read-only answers and the metrics snapshot) and ``policy`` (tenants'
  policies in the store, explain, the data plane's policy drops). The API
  is the route table (``routes``) served by the rooms' handlers
  (``rooms.build_router``). A new
  resource (gateways, routes, policies) is one more room in ``Daemon.rooms`` and
  its lines in the table; the life cycle does not change.
- **All or nothing at start.** The configuration is checked in full before
  anything is made; then the node (sockets bound), the store, the API socket
  and the metrics endpoint are brought up in order, and a failure at any step
  tears down the steps before it and exits with a message naming the key.
- **Pods outlive the daemon** (``attach``). SIGTERM therefore does not
  withdraw anything from the store: the node's lease keeps its keys for a
  TTL, so peers keep forwarding to a daemon that comes straight back; one
  that does not is forgotten when the lease expires.
- **Signals.** SIGHUP reloads (a refused or bad reload is logged and changes
  nothing); SIGTERM and SIGINT stop.
- **Bootstrap after the API.** The API answers (503, with the reason) while
  the store is waited for: definitions and re-attachment are retried with
  backoff while the store is unavailable, and readiness is set only once
  the saved pods are re-attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from overlay import __version__
from overlay.control.agent import Agent
from overlay.control.store import MemoryStore, StoreUnavailable
from overlay.daemon import config as cfgmod
from overlay.daemon.api import ApiServer
from overlay.daemon.attach import Attachments
from overlay.daemon.bgp import Bgp
from overlay.daemon.config import DaemonConfig
from overlay.daemon.definitions import Definitions
from overlay.daemon.gateways import Gateways
from overlay.daemon.health import HealthProber
from overlay.daemon.parts import Parts
from overlay.daemon.policy import PolicyRoom
from overlay.daemon.reload import Reloader
from overlay.daemon.rooms import Room, build_router
from overlay.daemon.routing import Routing
from overlay.daemon.underlay import Uplinks
from overlay.daemon.views import Views
from overlay.errors import ConfigError, OverlayError
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
        self.parts = Parts(config, config_path)
        self.definitions = Definitions(self.parts)
        self.attachments = Attachments(self.parts)
        self.gateways = Gateways(self.parts)
        self.uplinks = Uplinks(self.parts)
        self.routing = Routing(self.parts)
        self.reloader = Reloader(self.parts, self.definitions, self.attachments, self.gateways)
        self.bgp = Bgp(self.parts, self.routing.announced)
        self.policy = PolicyRoom(self.parts)
        self.views = Views(
            self.parts,
            self.attachments,
            self.gateways,
            self.routing,
            self.bgp,
            self.uplinks,
            policy=self.policy,
        )
        self.metrics: Any = None
        self.api: ApiServer | None = None
        self.failed = False  # start-up failed after the API came up: exit non-zero
        self.verifier: Any = None  # the policy verification probe, once running
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()

    @property
    def rooms(self) -> list[Room]:
        """The rooms whose handlers serve the API (``rooms.build_router``)."""
        return [
            self.definitions,
            self.attachments,
            self.gateways,
            self.reloader,
            self.views,
            self.policy,
        ]

    # -- start ------------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up, or nothing: on failure what was started is stopped."""
        try:
            await self._start()
        except BaseException:
            await self._teardown()
            raise

    async def _start(self) -> None:
        p = self.parts
        c = p.config
        router = build_router(self.rooms)  # a route without a handler fails here, first
        self.attachments.state.secure()  # files an older release left readable: private first
        underlay = resolve_underlay(c.node)
        try:
            node = Node(
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
        p.node = node
        node.start()
        if c.store.kind == "etcd":
            from overlay.control.etcd import EtcdStore

            p.store = EtcdStore(
                list(c.store.endpoints),
                ca_file=c.store.ca_file,
                cert_file=c.store.cert_file,
                key_file=c.store.key_file,
                username=c.store.username,
                password=None if c.store.password is None else str(c.store.password),
            )
        else:
            p.store = MemoryStore()
        p.agent = Agent(
            node,
            p.store,
            c.node.name,
            networks=[n.vni for n in c.networks],
            ttl=c.store.ttl,
        )
        self.policy.start()  # drains the node's events: policy drops for the API and metrics
        if c.metrics_address:
            from overlay.daemon.metrics import Metrics

            metrics = Metrics(self.views.snapshot)
            await metrics.serve(c.metrics_address)  # scrapes run on this loop: no locking
            self.metrics = metrics

            def on_reconcile(seconds: float) -> None:
                metrics.observe_reconcile(seconds)
                applied = self.policy.apply_seconds()  # None: no policy compiled this batch
                if applied is not None:
                    metrics.observe_policy_apply(applied)

            p.agent.on_reconcile = on_reconcile
            host, port = metrics.bound or ("?", 0)
            log.info("overlayd: metrics on http://%s:%d/metrics", host, port)
        self.api = ApiServer(router, c.api_socket)
        await self.api.start()
        if c.health.enabled:
            p.prober = HealthProber(node, c.node.name, vni=c.health.vni, interval=c.health.interval)
            await p.prober.start()
        self._tasks.append(asyncio.create_task(self._bootstrap(), name="overlayd-bootstrap"))
        log.info(
            "overlayd %s: node %s, underlay %s:%d (%s), store %s, API %s",
            __version__,
            c.node.name,
            underlay,
            node.port,
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
        agent = self.parts.agent
        assert agent is not None
        await self._retry(self.definitions.define_file)
        self._tasks.append(asyncio.create_task(agent.run(), name="overlayd-agent"))
        self._tasks.append(asyncio.create_task(self._peer_loop(), name="overlayd-peers"))
        await agent.synced.wait()
        await self._retry(self.attachments.reattach)
        await self.gateways.sync()
        await self.uplinks.sync()
        await self.routing.sync()
        await self.bgp.sync()  # after the gateways: BIRD announces their connected routes
        self._tasks.append(asyncio.create_task(self._gateway_loop(), name="overlayd-gateways"))
        if self.parts.config.policy.verify_interval:
            self._tasks.append(asyncio.create_task(self._verify_loop(), name="overlayd-verify"))
        self.parts.ready = True
        log.info("overlayd: ready (%d attachments)", len(self.attachments.attached))

    async def _retry(self, fn: Callable[[], Awaitable[None]]) -> None:
        """``fn()`` until the store answers it, with backoff."""
        delay = 0.1
        while True:
            try:
                await fn()
                return
            except StoreUnavailable as exc:
                log.warning("overlayd: store unavailable (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _gateway_loop(self) -> None:
        """Keep gateways equal to the store's definitions (another node may define or
        change a network; a gateway that failed is tried again), then the routes of
        routed and auto networks (``routing``: subnet leases come and go)."""
        while True:
            await asyncio.sleep(2.0)
            try:
                await self.gateways.sync()
            except Exception:
                log.exception("overlayd: syncing gateways failed")
            try:
                await self.uplinks.sync()
            except Exception:
                log.exception("overlayd: syncing uplinks failed")
            try:
                await self.routing.sync()
            except Exception:
                log.exception("overlayd: syncing routes failed")
            try:
                await self.bgp.sync()
            except Exception:
                log.exception("overlayd: syncing the BGP speaker failed")

    async def _verify_loop(self) -> None:
        """The policy verification probe (``overlay.control.verify``): a round
        every ``policy.verify_interval`` seconds, its findings published with
        the node's policy status (``overlay policy verify`` reads them)."""
        from overlay.control.verify import PolicyVerifier

        agent = self.parts.agent
        assert agent is not None
        pc = self.parts.config.policy
        verifier = PolicyVerifier(agent, budget=pc.verify_budget)
        self.verifier = verifier
        while True:
            await asyncio.sleep(self.parts.config.policy.verify_interval or 10.0)
            try:
                found = verifier.run_once()
                await agent.report_policy(verify=found)
            except StoreUnavailable:
                pass  # published again at the next round
            except Exception:
                log.exception("overlayd: the policy verification round failed")

    async def _peer_loop(self) -> None:
        """Keep the health prober's peers equal to the nodes the agent knows."""
        p = self.parts
        while True:
            if p.prober is not None and p.agent is not None:
                try:
                    p.prober.set_peers(
                        {n.name: (n.underlay, n.port) for n in p.agent.nodes.values()}
                    )
                except Exception:
                    log.exception("overlayd: updating health peers failed")
            await asyncio.sleep(min(1.0, p.config.health.interval))

    # -- signals ----------------------------------------------------------------

    def handle_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGHUP reloads; SIGTERM and SIGINT stop."""

        def on_hup() -> None:
            async def go() -> None:
                try:
                    await self.reloader.reload()
                except OverlayError as exc:
                    log.error("overlayd: reload refused, nothing changed: %s", exc)
                except Exception:
                    log.exception("overlayd: reload failed")

            loop.create_task(go())

        def on_term() -> None:
            loop.create_task(self.stop())

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, on_term)

    # -- stop -------------------------------------------------------------------

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
        p = self.parts
        p.ready = False
        if self.api is not None:
            await self.api.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if p.prober is not None:
            with contextlib.suppress(Exception):
                await p.prober.stop()
        if p.agent is not None:
            with contextlib.suppress(Exception):
                await p.agent.stop(deregister=False)
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                await self.metrics.close()
            self.metrics = None
        with contextlib.suppress(Exception):
            await self.bgp.stop()  # the routers withdraw this node's subnets
        if p.node is not None:
            self.policy.stop()  # before its event descriptor goes with the node
            p.node.close()  # persistent TAPs stay, in the pods' namespaces
        if p.store is not None:
            with contextlib.suppress(Exception):
                await p.store.close()
