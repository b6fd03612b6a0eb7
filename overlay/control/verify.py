"""The policy verifier: does the data plane do what the policies say, here, now?

A node's policy is right only if the tables its engine holds give the
verdicts the policies in the store give. A bug in the compiler, an identity
the node got wrong, a table changed by hand or a swap that never happened
are all invisible to the control plane's own bookkeeping: it remembers what
it meant to set. The verifier asks the data plane instead.

Design notes.
- **Two independent answers.** The expected verdict comes from the
  reference evaluator (``overlay.policy.evaluate.decide``: the semantics as
  written, not the compiler) over the store's view of the cluster: the
  tenant's accepted policies and namespaces and every endpoint record of the
  network (this node's own too), by its namespace label, labels and named
  ports. The actual verdict comes from the engine's tables in force
  (``Engine.port_policy_probe``: the same classifier as a first packet, a
  dry run that creates no session, counts nothing and sends nothing, so pods
  are never disturbed).
- **Truth table, per local end.** For every local pod port, each direction
  is checked against peers (the network's other pods) and ports (every port
  a rule names, the one after each range, and one no rule names, per
  protocol: ``overlay.policy.diff.default_ports``). A round checks at most
  ``budget`` cells and goes on where the last stopped, so every cell is
  covered over rounds whatever the size of the network, at a bounded cost
  per round.
- **Only settled state is judged.** A network whose tenant's set is not the
  one the node has in force (a change still being applied) is skipped this
  round: a disagreement then is lag, which ``policy status`` reports, not a
  wrong table.
- **Reported, not repaired.** Disagreements are published with the node's
  policy status (``overlay policy verify``) and logged; the verifier does not
  reprogram anything: a wrong table is a bug to see, and reprogramming would
  hide it. (The reconciler sets a table again whenever its policy changes.)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from overlay.control.reconcilers.policy import peer_of
from overlay.errors import OverlayError
from overlay.policy.diff import default_ports
from overlay.policy.evaluate import check_inputs, decide
from overlay.policy.model import Endpoint as PolicyEndpoint
from overlay.policy.model import World

log = logging.getLogger("overlay.verify")

DISAGREEMENTS_KEPT = 20  # per tenant in a report; the count is exact


@dataclasses.dataclass(frozen=True)
class Disagreement:
    """One cell where the tables in force differ from the policies."""

    vni: int
    pod: str  # the local pod's address
    direction: str
    peer: str
    port: int
    protocol: str
    dataplane: str  # "allow", "deny", "audit" or "none", with the rule
    policies: str  # "allow" or "deny", with the tier and policy

    def line(self) -> str:
        arrow = "<-" if self.direction == "ingress" else "->"
        return (
            f"vni {self.vni} {self.pod} {self.direction} {arrow} {self.peer} "
            f"{self.port}/{self.protocol}: data plane {self.dataplane}, "
            f"policies {self.policies}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "line": self.line()}


class PolicyVerifier:
    """Checks one agent's node against the policies (see the module's notes)."""

    def __init__(self, agent: Any, *, budget: int = 4000) -> None:
        self.agent = agent
        self.budget = budget
        self._cursor: dict[int, int] = {}  # VNI -> the next cell to check
        self.rounds = 0

    def run_once(self) -> dict[str, dict[str, Any]]:
        """One round: per tenant, the cells checked, the disagreements found
        (at most ``DISAGREEMENTS_KEPT`` listed, all counted) and when."""
        out: dict[str, dict[str, Any]] = {}
        node = self.agent.node
        pol = next((r for r in self.agent.reconcilers if hasattr(r, "realised")), None)
        left = self.budget
        for vni in self.agent.spec.networks:
            net = node.networks.get(vni)
            spec = self.agent.specs.get(vni)
            if net is None or spec is None or net.tenant != spec.tenant:
                continue
            tp = self.agent.claims.tenant_policies(net.tenant)
            if tp.empty and not net.policy_active:
                continue
            realised = pol.realised.get(net.tenant) if pol is not None else None
            entry = out.setdefault(
                net.tenant, {"checked": 0, "disagreements": [], "count": 0, "skipped": []}
            )
            if realised is None or realised[0] != tp.hash:
                entry["skipped"].append(vni)  # still being applied: lag, not a wrong table
                continue
            checked, found = self._network(vni, net, tp, min(left, self.budget))
            left -= checked
            entry["checked"] += checked
            entry["count"] += len(found)
            room = DISAGREEMENTS_KEPT - len(entry["disagreements"])
            entry["disagreements"].extend(d.to_dict() for d in found[: max(room, 0)])
            for d in found[:3]:
                log.warning("verify %s: %s", self.agent.name, d.line())
        now = round(time.time(), 3)
        for entry in out.values():
            entry["at"] = now
            if not entry["skipped"]:
                del entry["skipped"]
        self.rounds += 1
        return out

    def _network(self, vni: int, net: Any, tp: Any, budget: int) -> tuple[int, list[Disagreement]]:
        me = self.agent.name
        records = self.agent.endpoints.get(vni, {})
        nss: dict[str, Mapping[str, str]] = {k: dict(v) for k, v in tp.namespaces.items()}
        pods: dict[str, PolicyEndpoint] = {}
        nodes: set[str] = set()
        for ep in records.values():
            peer = peer_of(ep)
            if peer.gateway:
                nodes.update(peer.ips)
                continue
            nss.setdefault(peer.identity.namespace, {})
            for ip in peer.ips:
                pods[ip] = PolicyEndpoint(
                    ip,
                    peer.identity.namespace,
                    dict(peer.identity.labels),
                    dict(peer.identity.named_ports),
                    name=ep.name or ip,
                )
        for p in net.ports:
            if getattr(p, "gateway", False):
                nodes.update(str(i.ip) for i in p.ips)
        local = []
        for p in net.ports:
            if p.gateway or p.uplink or not p.ips:
                continue
            ip = str(p.ips[0].ip)
            if ip in pods:
                local.append((p, pods[ip]))
        if not local:
            return 0, []
        try:
            world = World(nss, list(pods.values()), frozenset(nodes))
        except OverlayError as exc:  # a record policy cannot read: nothing to compare with
            log.warning("verify %s: vni %d: %s", me, vni, exc)
            return 0, []
        pset = tp.policies
        nps, anps, banp = check_inputs(pset.networkpolicies, pset.admin, pset.baseline)
        trip = (nps, anps, banp)
        ports, protocols = default_ports(world, trip, trip)
        protocols = [*protocols, *(p for p in ("TCP", "UDP") if p not in protocols)]
        peers = sorted(pods)
        # The cells, by index (mixed radix: never built as a list).
        axes: tuple[tuple[Any, ...], ...] = (
            tuple(local),
            ("ingress", "egress"),
            tuple(peers),
            tuple(ports),
            tuple(protocols),
        )
        total = 1
        for axis in axes:
            total *= len(axis)
        start = self._cursor.get(vni, 0) % max(total, 1)
        engine = net.node.engine
        found: list[Disagreement] = []
        checked = 0
        for i in _rotate(total, start, budget):
            (port_obj, ep), direction, peer, port, proto = _cell(axes, i)
            if peer == ep.ip:
                continue
            checked += 1
            want = decide(world, nps, anps, banp, ep, direction, _ip(peer), port, proto)
            try:
                got, rule_id = engine.port_policy_probe(port_obj.id, direction, peer, proto, port)
            except OverlayError:
                continue  # the port went meanwhile
            allowed = got in ("allow", "none")
            if allowed != want.allowed:
                ref = net.policy_rule(rule_id)
                where = f"{ref.tier}" + (f" {ref.policy}" if ref.policy else "")
                says = "allow" if want.allowed else "deny"
                who = want.tier + (f" {want.policy}" if want.policy else "")
                found.append(
                    Disagreement(
                        vni,
                        ep.ip,
                        direction,
                        peer,
                        port,
                        proto,
                        f"{got} ({where})",
                        f"{says} ({who})",
                    )  # fmt: skip
                )
        self._cursor[vni] = (start + min(budget, total)) % max(total, 1)
        return checked, found


def _cell(axes: tuple[tuple[Any, ...], ...], index: int) -> list[Any]:
    out: list[Any] = []
    for axis in reversed(axes):
        index, k = divmod(index, len(axis))
        out.append(axis[k])
    return out[::-1]


def _rotate(total: int, start: int, budget: int) -> Iterator[int]:
    for j in range(min(budget, total)):
        yield (start + j) % total


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)
