"""A real BGP router for tests: BIRD 2 (Debian's ``bird2``) in a test namespace.

Why this module exists: a node that announces its subnets over BGP
(``overlay.bgp``) is only believable against a router that is not ours.
:class:`BirdRouter` runs ``bird -f`` inside a namespace with a configuration
made from a small template: one eBGP session per neighbour (everything
accepted and passed on, as a top-of-rack switch does), the best routes
written into the router's kernel so that it forwards between the nodes, and
optionally ``extra_routes`` it announces without using them itself (a
default route, a prefix out of any range: what a node's import filter must
refuse). It is started and stopped by PID (the namespace's process list also
stops it if a test forgets), its control socket lives in a directory of the
test, and :meth:`birdc` asks it questions.

::

    with BirdRouter(router_ns, tmp_path / "r", asn=65000, router_id="198.18.1.254",
                    neighbors=[("198.18.1.1", 65001), ("198.18.2.1", 65002)]) as r:
        wait_for(lambda: r.established("198.18.1.1"))
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from overlay.bgp import BIRD, BIRDC, check_config, parse_protocols, parse_routes, peer_protocol
from overlay.nsenter import stop_process
from overlay.testing.netns import Netns, check_allowed

__all__ = ["BirdRouter"]

_TEMPLATE = """\
log stderr all;
router id {router_id};
timeformat protocol "%s";
timeformat route "%s";

protocol device {{}}

# The best routes into this router's kernel, so that it forwards between nodes
# (the extra routes are only announced).
protocol kernel {{
  ipv4 {{ import none; export where proto != "extras"; }};
  learn off;
}}

protocol static extras {{
  ipv4 {{ preference 50; }};
{extras}
}}

template bgp node {{
  local as {asn};
  hold time 9;
  keepalive time 3;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 10;
  ipv4 {{ import all; export all; }};
}}
{neighbors}
"""


class BirdRouter:
    """A BIRD 2 router in namespace ``ns``, its files in ``directory``."""

    def __init__(
        self,
        ns: Netns,
        directory: str | os.PathLike[str],
        *,
        asn: int,
        router_id: str,
        neighbors: Sequence[tuple[str, int]],
        extra_routes: Sequence[str] = (),
    ) -> None:
        check_allowed(router_id, "router id")
        for address, _ in neighbors:
            check_allowed(address, "BGP neighbour")
        for net in extra_routes:
            if net != "0.0.0.0/0":
                check_allowed(net, "announced route")
        self.ns = ns
        self.dir = Path(directory)
        self.asn, self.router_id = asn, router_id
        self.neighbors = list(neighbors)
        self.extra_routes = list(extra_routes)
        self.conf = self.dir / "bird.conf"
        self.ctl = self.dir / "bird.ctl"
        self.log = self.dir / "bird.log"
        self.proc: subprocess.Popen[Any] | None = None

    def config_text(self) -> str:
        extras = "\n".join(f"  route {net} blackhole;" for net in self.extra_routes)
        neighbors = "\n".join(
            f"protocol bgp {peer_protocol(a)} from node {{ neighbor {a} as {asn}; }}"
            for a, asn in self.neighbors
        )
        return _TEMPLATE.format(
            router_id=self.router_id, asn=self.asn, extras=extras, neighbors=neighbors
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 10.0) -> BirdRouter:
        """Write the configuration, check it, start BIRD; return once it answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"the router is running already (pid {self.pid})")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config_text())
        check_config(str(self.conf))
        self.ctl.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = self.ns.popen(
                [BIRD, "-f", "-c", str(self.conf), "-s", str(self.ctl)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bird exited ({self.proc.returncode}): {self.log.read_text()}")
            done = self._run("show status")
            if done.returncode == 0 and "Unable to connect" not in done.stdout:
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"bird in {self.ns.name} did not answer on {self.ctl}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID (peers get a Cease), SIGKILL after ``timeout``. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc, timeout)
        self.ctl.unlink(missing_ok=True)

    def __enter__(self) -> BirdRouter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIRDC, "-s", str(self.ctl), *command.split()],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    def birdc(self, command: str) -> str:
        """``birdc <command>`` against this router; its answer."""
        done = self._run(command)
        if done.returncode != 0 or "Unable to connect" in done.stdout:
            raise RuntimeError(f"birdc {command}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def protocols(self) -> dict[str, dict[str, Any]]:
        return parse_protocols(self.birdc("show protocols all"))

    def routes(self) -> list[dict[str, Any]]:
        return parse_routes(self.birdc("show route"))

    def established(self, neighbor: str) -> bool:
        """Whether the session with ``neighbor`` is up (False while BIRD is not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            protos = self.protocols()
        except RuntimeError:
            return False
        return protos.get(peer_protocol(neighbor), {}).get("bgp_state") == "Established"

    def learned(self) -> dict[str, str]:
        """Prefix -> next hop of the routes this router learned over BGP (best ones)."""
        names = {peer_protocol(a) for a, _ in self.neighbors}
        return {
            r["net"]: r["via"] for r in self.routes() if r["protocol"] in names and r["primary"]
        }
