"""What overlayd's rooms share: the configuration in force, the running parts, readiness.

Design notes. The life cycle (``service.Daemon``) brings the parts up one by
one (node, store, agent, health prober) and the rooms (definitions, attach,
reload, views) work on them. They share one ``Parts`` object instead of
reaching into the daemon or into each other: a room sees what is running and
the configuration in force (which a reload replaces, so rooms read
``parts.config`` each time and never keep a copy). Readiness lives here too,
because it is a function of the parts alone and both the views (status,
health) and the attach room (503 while starting) ask it. ``lock`` is the one
writer lock: attach, detach, GC and reload take it, so requests for
different containers are served in turn (each takes milliseconds).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

from overlay.daemon.api import Unavailable
from overlay.daemon.config import DaemonConfig

if TYPE_CHECKING:
    from overlay.control.agent import Agent
    from overlay.control.store import Store
    from overlay.daemon.health import HealthProber
    from overlay.node import Node


@dataclasses.dataclass(eq=False)
class Parts:
    """The configuration in force and what runs; None until the life cycle starts it."""

    config: DaemonConfig
    config_path: str | None = None
    node: Node | None = None
    store: Store | None = None
    agent: Agent | None = None
    prober: HealthProber | None = None
    ready: bool = False  # started, and the saved pods re-attached
    started: float = dataclasses.field(default_factory=time.monotonic)
    reloads: int = 0
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def node_name(self) -> str:
        return self.config.node.name

    @property
    def static(self) -> bool:
        """Nodes share no store: peers come from the file (``store.kind = "memory"``)."""
        return self.config.store.kind == "memory"

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

    def check_ready(self) -> None:
        """Unavailable (503) until the saved pods are re-attached."""
        if not self.ready:
            raise Unavailable("overlayd is starting (waiting for the store); try again shortly")
