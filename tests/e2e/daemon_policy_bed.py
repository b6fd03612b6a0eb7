"""The nine-pod NetworkPolicy bed on real daemons: three ``overlayd`` processes
sharing a real etcd, pods added by the real ``overlay-cni``, policies applied
with the ``overlay`` command.

Where ``policy_bed`` programs in-process nodes through the embedding API, this
bed goes the way a cluster goes: each pod's namespace is made by the bed and
handed to ``overlay-cni ADD`` (``CNI_ARGS`` ``K8S_POD_NAMESPACE``/``K8S_POD_NAME``,
its label ``pod: <name>`` and its named container ports ``serve-<port>-<proto>``
(``policy_bed.NAMED``) in ``args.cni.labels``/``args.cni.namedPorts`` for some
pods and in ``runtimeConfig.labels``/``runtimeConfig.namedPorts`` for the
others), its address is whatever the node's
IPAM gave (read from the CNI result), and the other nodes learn it through
etcd. Policies and namespaces are manifest files given to ``overlay policy
apply -f FILE --prune`` on one node; every node's agent picks them up from the
store, and ``overlay policy status`` says when all have them in force.

The servers and the probes are ``policy_bed``'s (``Servers``, ``Prober``);
only where a pod is differs, so ``address`` maps a pod's name to its address.
The upstream scenarios' expectations are by name; the two that name addresses
(ipBlock) are translated by ``manifests``, which refuses a CIDR whose meaning
the translation would change.

``overlay`` runs in this process (``overlay.cli.main`` with its output
captured): starting an interpreter per command would cost more than the
command. ``drops --follow`` runs as the console script, since it does not end.

Everything is undone by ``close`` (also after a failed build): pods DEL
through the plugin, the servers' sockets closed, daemons stopped by PID; the
caller's Topology removes the namespaces and its EtcdServer stops etcd.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from policy_bed import NAMED, TENANT, VNI, Prober, Servers, node_of
from policy_matrix import NAMESPACES, all_pods, pod_ip

from overlay import cli
from overlay.policy.model import IPBlock, LabelSelector, NetworkPolicy, Peer, PolicyPort, Rule
from overlay.testing.daemon import DaemonCluster, Overlayd, Run, cni
from overlay.testing.netns import Netns, Topology

PLAN = all_pods()  # the pods of the upstream address plan (policy_matrix.pod_ip)
CIDR = "10.244.0.0/16"
NETWORK = {"vni": VNI, "tenant": TENANT, "cidr": CIDR}
VERIFY_INTERVAL = 1.0  # [policy] verify_interval: the verification probe's pace
SYNC_TIMEOUT = 30.0  # generous: what "never in sync" means here


def namespace_manifests() -> list[dict[str, Any]]:
    """The bed's namespaces x, y, z with label ``ns: <name>``, as ``kind: Namespace``."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ns": ns}}}
        for ns in NAMESPACES
    ]


# -- policy objects back to manifests ------------------------------------------------


def _selector(s: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.match_labels:
        out["matchLabels"] = dict(s.match_labels)
    if s.match_expressions:
        out["matchExpressions"] = [
            {
                "key": r.key,
                "operator": r.operator,
                **({"values": list(r.values)} if r.values else {}),
            }
            for r in s.match_expressions
        ]
    return out


def _ip_block(b: IPBlock) -> dict[str, Any]:
    out: dict[str, Any] = {"cidr": str(b.cidr)}
    if b.except_:
        out["except"] = [str(e) for e in b.except_]
    return out


def _peer(p: Peer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.ip_block is not None:
        out["ipBlock"] = _ip_block(p.ip_block)
    if p.pod_selector is not None:
        out["podSelector"] = _selector(p.pod_selector)
    if p.namespace_selector is not None:
        out["namespaceSelector"] = _selector(p.namespace_selector)
    return out


def _port(p: PolicyPort) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": p.protocol}
    if p.port is not None:
        out["port"] = p.port
    if p.end_port is not None:
        out["endPort"] = p.end_port
    return out


def _rule(r: Rule, peers_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.peers:
        out[peers_key] = [_peer(p) for p in r.peers]
    if r.ports:
        out["ports"] = [_port(p) for p in r.ports]
    return out


def network_policy_manifest(p: NetworkPolicy) -> dict[str, Any]:
    """A parsed NetworkPolicy written back as the manifest it means (explicit
    ``policyTypes``, so defaulting cannot differ); checked by parsing it again."""
    d = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": {
            "podSelector": _selector(p.pod_selector),
            "policyTypes": sorted(p.policy_types),
            "ingress": [_rule(r, "from") for r in p.ingress],
            "egress": [_rule(r, "to") for r in p.egress],
        },
    }
    again = NetworkPolicy.from_dict(d)
    assert again == p, f"manifest of {p.key} does not parse back to it: {again} != {p}"
    return d


def _translate(value: Any, table: Mapping[str, str], moved: list[tuple[str, str]]) -> Any:
    """``value`` with each ipBlock CIDR of a pod's upstream address replaced by its bed
    address (``table``: "ip/32" -> "ip/32"); any other CIDR must hold the same pods in
    both address plans, else the scenario's expectations would not hold here."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in ("cidr", "except", "networks"):
                cidrs = v if isinstance(v, list) else [v]
                new = [table.get(c, c) for c in cidrs]
                for c in new:
                    if c not in table.values():
                        moved.append((c, k))
                out[k] = new if isinstance(v, list) else new[0]
            else:
                out[k] = _translate(v, table, moved)
        return out
    if isinstance(value, list):
        return [_translate(v, table, moved) for v in value]
    return value


# -- the command in this process -------------------------------------------------------


@dataclasses.dataclass
class CliRun:
    """One ``overlay`` invocation: exit status, what it printed."""

    argv: list[str]
    rc: int
    out: str
    err: str

    def ok(self) -> str:
        assert self.rc == 0, self
        return self.out

    def json(self) -> Any:
        return json.loads(self.ok())


def overlay_cli(socket: str, *args: str) -> CliRun:
    """``overlay --socket SOCKET ARGS...`` as the console script runs it, in this process."""
    argv = ["--socket", socket, *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code if isinstance(exc.code, int) else 2
    return CliRun(argv, rc, out.getvalue(), err.getvalue())


# -- what a pod's interface carries ----------------------------------------------------

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800


class Sniffer:
    """The IPv4 sources of every frame on ``ifname`` in ``netns`` (an AF_PACKET
    socket read by a thread), counted: ``sources[ip]`` frames. Both directions
    are seen; a test asserts on the sources it cares about."""

    def __init__(self, netns: Netns, ifname: str) -> None:
        self.where = f"{netns.name}:{ifname}"
        self.sources: collections.Counter[str] = collections.Counter()
        self.sock = netns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sniff-{self.where}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(frame) >= 34 and int.from_bytes(frame[12:14], "big") == ETH_P_IP:
                self.sources[socket.inet_ntoa(frame[26:30])] += 1

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


# -- the bed ---------------------------------------------------------------------------


@dataclasses.dataclass
class Pod:
    """A pod the bed added through overlay-cni: where, how, and what it got."""

    name: str  # "ns/pod"
    node: int
    cid: str
    netns: Netns
    conf: dict[str, Any]
    cni_args: str
    result: dict[str, Any]

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.result["ips"][0]["address"]).ip)


class DaemonPolicyBed(Prober):
    """Three overlayd nodes on ``etcd`` hosting ``NETWORK``, the nine pods added by CNI."""

    def __init__(self, topo: Topology, directory: Path, etcd: str) -> None:
        self.topo = topo
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.servers = Servers()
        self.pods: dict[str, Netns] = {}
        self.added: dict[str, Pod] = {}
        self.applies = 0
        self.cluster = DaemonCluster(
            topo,
            directory / "cluster",
            n_nodes=3,
            networks=[NETWORK],
            store=etcd,
            extra={"policy": {"verify_interval": VERIFY_INTERVAL}},
        )
        try:
            self.cluster.start()
            self.apply_manifests(namespace_manifests())
            for i, pod in enumerate(all_pods()):
                netns = topo.add_netns(pod.replace("/", ""))
                self.servers.add(netns)
                self.add_pod(pod, node_of(pod), netns, runtime_labels=i % 2 == 1)
                self.pods[pod] = netns
            self.servers.thread.start()
            self.wait_endpoints(list(self.added))
            self.wait_in_sync()
        except BaseException:
            self.close()
            raise

    # -- where things are

    @property
    def daemons(self) -> list[Overlayd]:
        return self.cluster.daemons

    def socket(self, node: int) -> str:
        return str(self.daemons[node].socket)

    def address(self, pod: str) -> str:
        return self.added[pod].ip

    def node_ns(self, node: int) -> Netns:
        return self.cluster.node_ns[node]

    # -- pods through the plugin

    def conf(self, node: int, labels: Mapping[str, str], *, runtime: bool) -> dict[str, Any]:
        """overlay-cni's configuration on ``node``, the pod's ``labels`` and named
        ports (``NAMED``) given the args way (``args.cni.labels``,
        ``args.cni.namedPorts``) or, with ``runtime``, the capability way."""
        ports = [{"name": n, "port": p, "protocol": proto} for n, (p, proto) in NAMED.items()]
        conf: dict[str, Any] = {
            "cniVersion": "1.1.0",
            "name": TENANT,
            "type": "overlay-cni",
            "vni": VNI,
            "socket": self.socket(node),
        }
        if runtime:
            conf["capabilities"] = {"labels": True, "namedPorts": True}
            conf["runtimeConfig"] = {"labels": dict(labels), "namedPorts": ports}
        else:
            conf["args"] = {
                "cni": {
                    "labels": [{"key": k, "value": v} for k, v in labels.items()],
                    "namedPorts": ports,
                }
            }
        return conf

    def add_pod(
        self,
        pod: str,
        node: int,
        netns: Netns,
        *,
        runtime_labels: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> Pod:
        """``overlay-cni ADD`` of pod "ns/name" into ``netns`` on ``node``."""
        ns, name = pod.split("/")
        conf = self.conf(node, labels or {"pod": name}, runtime=runtime_labels)
        cni_args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"
        cid = f"{ns}-{name}"
        result = cni("ADD", conf, cid=cid, netns=netns.path, cni_args=cni_args).success()
        added = Pod(pod, node, cid, netns, conf, cni_args, result)
        self.added[pod] = added
        return added

    def del_pod(self, pod: str) -> Run:
        p = self.added.pop(pod)
        return cni("DEL", p.conf, cid=p.cid, netns=p.netns.path, cni_args=p.cni_args)

    def wait_endpoints(self, pods: list[str], timeout: float = SYNC_TIMEOUT) -> None:
        """Until every node knows every one of ``pods`` (its own, or a remote from the store)."""
        want = {p: self.address(p) for p in pods}
        deadline = time.monotonic() + timeout
        while True:
            missing = []
            for i, d in enumerate(self.daemons):
                have = {e.get("name"): e for e in d.client.endpoints(vni=VNI)}
                for p, ip in want.items():
                    ep = have.get(p)
                    if ep is None or not any(a.split("/")[0] == ip for a in ep.get("ips", [])):
                        missing.append(f"node{i}: {p} {ip}")
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"endpoints not everywhere after {timeout}s: {missing}")
            time.sleep(0.05)

    # -- policy through the command

    def cli(self, node: int, *args: str) -> CliRun:
        return overlay_cli(self.socket(node), *args)

    def manifests(self, policies: list[Any]) -> list[dict[str, Any]]:
        """The bed's namespaces and ``policies`` (objects or dicts) as manifests, ipBlock
        addresses translated from the upstream plan to the pods' addresses here."""
        table = {f"{pod_ip(p)}/32": f"{self.address(p)}/32" for p in self.added if p in PLAN}
        docs = [
            network_policy_manifest(p) if isinstance(p, NetworkPolicy) else dict(p)
            for p in policies
        ]
        moved: list[tuple[str, str]] = []
        docs = [_translate(d, table, moved) for d in docs]
        for cidr, _ in moved:  # a wider block: it must hold the same pods in both plans
            net = ipaddress.ip_network(cidr)
            for p in PLAN:
                same = (ipaddress.ip_address(pod_ip(p)) in net) == (
                    ipaddress.ip_address(self.address(p)) in net
                )
                assert same, f"{cidr} holds {p} in one address plan only: translate it"
        return namespace_manifests() + docs

    def write_manifest(self, docs: list[dict[str, Any]], name: str | None = None) -> Path:
        self.applies += 1
        path = self.dir / f"{name or f'apply-{self.applies}'}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return path

    def apply_manifests(self, docs: list[dict[str, Any]], *, node: int = 0) -> dict[str, Any]:
        """``overlay policy apply -f FILE --prune --json`` on ``node``: the file is the set."""
        path = self.write_manifest(docs)
        run = self.cli(node, "--json", "policy", "apply", "-f", str(path), "--prune")
        out: dict[str, Any] = run.json()
        return out

    def apply(self, policies: list[Any], *, node: int = 0) -> dict[str, Any]:
        return self.apply_manifests(self.manifests(policies), node=node)

    def status(self, node: int = 0) -> CliRun:
        return self.cli(node, "--json", "policy", "status")

    def wait_in_sync(self, timeout: float = SYNC_TIMEOUT, node: int = 0) -> float:
        """Until ``overlay policy status`` exits 0 (every node has the set in force);
        the seconds it took."""
        t0 = time.monotonic()
        while True:
            run = self.status(node)
            if run.rc == 0:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"policy not in sync after {timeout}s:\n{run.out}\n{run.err}")
            time.sleep(0.05)

    def poll(self, check: Callable[[], bool], timeout: float = SYNC_TIMEOUT) -> float:
        t0 = time.monotonic()
        while not check():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"not true after {timeout}s: {check}")
            time.sleep(0.01)
        return time.monotonic() - t0

    # -- undo

    def close(self) -> None:
        errors: list[str] = []
        for pod in list(self.added):
            with contextlib.suppress(Exception):
                run = self.del_pod(pod)
                if run.rc != 0:
                    errors.append(f"DEL {pod}: {run}")
        self.servers.close()
        self.cluster.close()
        if errors:
            raise RuntimeError("\n".join(errors))


@contextlib.contextmanager
def daemon_policy_bed(topo: Topology, directory: Path, etcd: str) -> Iterator[DaemonPolicyBed]:
    bed = DaemonPolicyBed(topo, directory, etcd)
    try:
        yield bed
    finally:
        bed.close()


__all__ = [
    "CIDR",
    "NETWORK",
    "CliRun",
    "DaemonPolicyBed",
    "Pod",
    "Sniffer",
    "daemon_policy_bed",
    "namespace_manifests",
    "network_policy_manifest",
    "overlay_cli",
]
