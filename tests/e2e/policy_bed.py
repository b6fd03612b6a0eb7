"""The upstream NetworkPolicy test bed on real nodes: namespaces x, y, z with
pods a, b, c, spread over three nodes, each pod serving TCP and UDP on ports
80 and 81, probed pair by pair with real connections.

Pods are built through the embedding API with their identity (namespace,
labels, named ports ``serve-<port>-<proto>``), and every node learns every
other node's pods as remotes with theirs, as a control plane would program
them. Servers run in this process: one selector thread serves every pod's
sockets (TCP accepted and echoed, UDP echoed), so nothing is left running
after the bed closes.

A probe is "connected" (a TCP connect completes; a UDP datagram comes back
echoed) or not. Probes run concurrently with a short timeout; a probe whose
answer differs from the expectation is asked again with a long one before it
counts, so a slow machine makes the run slower, never wrong.

``Servers`` and ``Prober`` are shared with ``daemon_policy_bed`` (the same
pods on real daemons): a bed says where a pod is by overriding ``address``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from overlay.node import Network, Node, Port
from overlay.testing.cluster import Cluster, pod_mac
from overlay.testing.netns import Netns, Topology, run_prefix, underlay_ip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from policy_matrix import NAMESPACES, PODS, Reachability, all_pods, grid, pod_ip  # noqa: E402

VNI = 100
TENANT = "acme"
PORTS = (80, 81)
NAMED = {
    f"serve-{port}-{proto.lower()}": (port, proto) for port in PORTS for proto in ("TCP", "UDP")
}
SHORT_S = 1.0  # first probe
LONG_S = 5.0  # a probe that disagreed with the expectation, asked again


def bed_prefix(name: str = "pb") -> str:
    """A Topology prefix of this run for a bed shared by a module, so that its
    namespaces never meet those of a test's own ``overlay_topology``."""
    return f"{run_prefix()}{name}"


def node_of(pod: str) -> int:
    """Spread: each node hosts one pod of every namespace, and every pair of
    namespaces meets both on one node and across nodes."""
    ns, name = pod.split("/")
    return (NAMESPACES.index(ns) + PODS.index(name)) % 3


class Servers:
    """TCP echo (accept, echo until EOF) and UDP echo on every pod's ports,
    served by one thread."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="policy-bed-servers", daemon=True)

    def add(self, ns: Netns) -> None:
        for port in PORTS:
            t = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind(("0.0.0.0", port))
            t.listen(256)
            t.setblocking(False)
            self.sel.register(t, selectors.EVENT_READ, ("listen", None))
            u = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("0.0.0.0", port))
            u.setblocking(False)
            self.sel.register(u, selectors.EVENT_READ, ("udp", None))

    def _run(self) -> None:
        while not self.stopping:
            for key, _ in self.sel.select(timeout=1.0):
                kind, _ = key.data
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(OSError):
                    if kind == "listen":
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self.sel.register(conn, selectors.EVENT_READ, ("conn", None))
                    elif kind == "conn":
                        data = sock.recv(65536)
                        if not data:
                            self.sel.unregister(sock)
                            sock.close()
                        else:
                            sock.send(data)
                    elif kind == "udp":
                        data, peer = sock.recvfrom(65536)
                        sock.sendto(data, peer)
                    else:
                        sock.recv(64)

    def close(self) -> None:
        self.stopping = True
        self.wake_w.send(b"x")
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        self.wake_w.close()


class Prober:
    """Real probes between the pods of ``self.pods`` (name -> its namespace),
    shared by every bed of the nine pods: a bed says where a pod is
    (``address``; the upstream table's addresses unless it overrides)."""

    pods: dict[str, Netns]

    def address(self, pod: str) -> str:
        """The IPv4 address of ``pod`` ("ns/name")."""
        return pod_ip(pod)

    def connect(self, src: str, dst: str, port: int, timeout: float = LONG_S) -> socket.socket:
        """An open TCP connection from pod ``src`` to ``dst``:``port`` (the caller closes it)."""
        s = self.pods[src].socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((self.address(dst), port))
        return s

    def _probe(self, sock: socket.socket, dst: str, port: int, proto: str, timeout: float) -> bool:
        with sock:
            sock.settimeout(timeout)
            try:
                if proto == "TCP":
                    return sock.connect_ex((self.address(dst), port)) == 0
                sock.sendto(b"probe", (self.address(dst), port))
                data, _ = sock.recvfrom(64)
                return data == b"probe"
            except OSError:
                return False

    def probe(
        self, pairs: Iterable[tuple[str, str]], port: int, proto: str, timeout: float
    ) -> dict[tuple[str, str], bool]:
        pairs = list(pairs)
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        by_src: dict[str, list[str]] = {}
        for f, t in pairs:
            by_src.setdefault(f, []).append(t)
        jobs: list[tuple[tuple[str, str], socket.socket]] = []
        for f, dsts in by_src.items():
            socks = self.pods[f].call(
                lambda n: [socket.socket(socket.AF_INET, kind) for _ in range(n)], len(dsts)
            )
            jobs += [((f, t), s) for t, s in zip(dsts, socks, strict=True)]
        with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
            futs = {
                pair: pool.submit(self._probe, s, pair[1], port, proto, timeout) for pair, s in jobs
            }
            return {pair: f.result() for pair, f in futs.items()}

    def check(self, port: int, proto: str, expected: Reachability) -> list[str]:
        """Probe every ordered pair of pods (loopback ignored, as upstream);
        the disagreements with ``expected`` as readable lines (none: all agree)."""
        pairs = [(f, t) for (f, t) in expected.table if f != t]
        got = self.probe(pairs, port, proto, SHORT_S)
        wrong = [p for p in pairs if got[p] != expected.table[p]]
        if wrong:
            got.update(self.probe(wrong, port, proto, LONG_S))
            wrong = [p for p in pairs if got[p] != expected.table[p]]
        if not wrong:
            return []
        seen = Reachability(expected.pods)
        for p, ok in got.items():
            seen.table[p] = ok
        return [
            f"{port}/{proto}: expected",
            grid(expected),
            "observed",
            grid(seen),
            *(f"{f} -> {t}: expected {expected.table[(f, t)]}" for f, t in wrong),
        ]


class PolicyBed(Prober):
    """Three nodes, network ``VNI`` of tenant ``TENANT`` on each, the nine pods."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.cluster = Cluster(topo, n_nodes=3)
        self.servers = Servers()
        self.pods: dict[str, Netns] = {}
        self.ports: dict[str, Port] = {}
        self.labels: dict[str, dict[str, str]] = {}
        try:
            self.cluster.add_network(VNI, TENANT)
            for net in self.nets:
                for ns in NAMESPACES:
                    net.set_namespace(ns, {"ns": ns})
            for pod in all_pods():
                self._add_pod(pod)
            self.cluster.start()
            self.servers.thread.start()
        except BaseException:
            self.close()
            raise

    @property
    def nodes(self) -> list[Node]:
        return self.cluster.nodes

    @property
    def nets(self) -> list[Network]:
        return [n.network(VNI) for n in self.cluster.nodes]

    def _add_pod(self, pod: str) -> None:
        ns_name, name = pod.split("/")
        node = node_of(pod)
        index = NAMESPACES.index(ns_name) * 3 + PODS.index(name) + 1
        mac = pod_mac(node, VNI, index)
        ip = pod_ip(pod)
        self.labels[pod] = {"pod": name}
        netns = self.topo.add_netns(f"{ns_name}{name}")
        port = self.nets[node].add_port(
            mac,
            [f"{ip}/16"],
            ifname=f"pp{ns_name}{name}",
            namespace=ns_name,
            labels=self.labels[pod],
            named_ports=NAMED,
        )
        port.move_to_netns(netns.path, "eth0")
        for j, net in enumerate(self.nets):
            if j != node:
                net.add_remote(
                    mac,
                    underlay_ip(node),
                    ip,
                    namespace=ns_name,
                    labels=self.labels[pod],
                    named_ports=NAMED,
                )
        self.pods[pod] = netns
        self.ports[pod] = port
        self.servers.add(netns)

    # -- what a control plane does on every node

    def apply(self, policies: list[Any], **kw: Any) -> None:
        """The same policy set on every node."""
        for net in self.nets:
            net.apply_policies(policies, **kw)

    def set_pod_labels(self, pod: str, labels: dict[str, str]) -> None:
        """New labels on the pod's own port and on its remote entry elsewhere."""
        node = node_of(pod)
        port = self.ports[pod]
        port.set_labels(labels)
        for j, net in enumerate(self.nets):
            if j != node:
                net.add_remote(
                    port.mac,
                    underlay_ip(node),
                    pod_ip(pod),
                    namespace=pod.split("/")[0],
                    labels=labels,
                    named_ports=NAMED,
                )
        self.labels[pod] = dict(labels)

    def set_namespace_labels(self, ns: str, labels: dict[str, str]) -> None:
        for net in self.nets:
            net.set_namespace(ns, labels)

    def close(self) -> None:
        self.servers.close()
        self.cluster.close()


@contextlib.contextmanager
def policy_bed(topo: Topology) -> Iterator[PolicyBed]:
    bed = PolicyBed(topo)
    try:
        yield bed
    finally:
        bed.close()
