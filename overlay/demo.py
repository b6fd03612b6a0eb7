"""``overlay demo``: two nodes, two tenants, one overlay, built and removed in seconds.

It shows the contracts working on real kernel parts: pods of one tenant reach
each other across nodes, the other tenant's identical addresses are not
confused with them, a pod of one tenant cannot reach the other tenant at all,
a TCP transfer is verified byte for byte, a spoofing pod is stopped, the node
reaches pods and pods the outside through a gateway (masqueraded), a routed
network carries plain IP, a NetworkPolicy admits only the pods it names, and
every frame is accounted for in the counters. Everything lives in network
namespaces with the run's prefix and is removed at the end, also on failure or
Ctrl-C.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from overlay import wire
from overlay.node import Encap, Node

Say = Callable[[str], None]


def _neighbour_mac(ns: object, ip: str) -> str | None:
    with ns.ipr() as ipr:  # type: ignore[attr-defined]
        for n in ipr.get_neighbours():
            if n.get("NDA_DST") == ip:
                return str(n.get("NDA_LLADDR"))
    return None


def _nonzero(d: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v) or "-"


def _impersonation(mac: str, victim_ip: str) -> tuple[bytes, bytes]:
    """What a pod that lies sends: an ARP reply claiming ``victim_ip`` at the pod's
    own MAC, and a UDP datagram with ``victim_ip`` as its source."""
    me = bytes.fromhex(mac.replace(":", ""))
    ip = socket.inet_aton(victim_ip)
    bcast = b"\xff" * 6
    arp_reply = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + me + ip + bcast + ip
    udp = struct.pack("!HHHH", 5353, 9, 8 + 4, 0) + b"spam"
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, ip, ip)
    hdr = hdr[:10] + struct.pack("!H", wire.checksum(hdr)) + hdr[12:]
    return bcast + me + b"\x08\x06" + arp_reply, bcast + me + b"\x08\x00" + hdr + udp


def _drops_until(node: Node, before: dict[str, int], reasons: tuple[str, ...]) -> dict[str, int]:
    """The node's drop counters once each of ``reasons`` moved past ``before`` (at most 2 s)."""
    deadline = time.monotonic() + 2
    while True:
        now: dict[str, int] = node.counters()["drops"]
        if all(now.get(r, 0) > before.get(r, 0) for r in reasons) or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def run(encap: Encap = Encap.VXLAN, transfer_bytes: int = 50_000_000, say: Say = print) -> int:
    """Run the demo; returns 0 when every expectation held, 1 otherwise."""
    if os.geteuid() != 0:
        say("overlay demo: needs root (TAP devices and network namespaces): run it with sudo")
        return 2
    from overlay.testing.cluster import Cluster, underlay_ip
    from overlay.testing.netns import Topology
    from overlay.testing.traffic import ping, send_frames, tcp_transfer

    ok = True
    t0 = time.monotonic()
    say(f"overlay demo: two nodes, two tenants, {encap.name} (port {encap.default_port})\n")
    with Topology() as topo, Cluster(topo, encap) as c:
        c.add_network(100, "blue")
        c.add_network(200, "red")
        blue_a = c.add_pod(0, 100, "10.244.1.2/24", name="blue-a")
        blue_b = c.add_pod(1, 100, "10.244.1.3/24", name="blue-b")
        red_a = c.add_pod(0, 200, "10.244.1.2/24", name="red-a")
        red_b = c.add_pod(1, 200, "10.244.1.3/24", name="red-b")
        red_c = c.add_pod(1, 200, "10.244.1.4/24", name="red-c")
        c.start()
        say(f"  underlay   node n0 {underlay_ip(0)}  <-- veth -->  node n1 {underlay_ip(1)}")
        say(f"  blue (VNI 100)  {blue_a.name} {blue_a.ip} @n0   {blue_b.name} {blue_b.ip} @n1")
        say(
            f"  red  (VNI 200)  {red_a.name} {red_a.ip} @n0   {red_b.name} {red_b.ip} @n1   "
            f"{red_c.name} {red_c.ip} @n1"
        )
        say(f"  pods' MTU {c.nodes[0].pod_mtu()} (underlay 1500 less {encap.name} overhead)")
        active = [k for k, v in c.nodes[0].engine.offloads.items() if v]
        say(f"  offloads in use: {', '.join(active) or 'none'}\n")

        say("reachability (ping, 3 packets each)")
        checks = [
            (blue_a, blue_b.ip, f"{blue_b.name}", True),
            (red_a, red_b.ip, f"{red_b.name}", True),
            (red_a, red_c.ip, f"{red_c.name}", True),
            (blue_a, red_c.ip, "exists only in red", False),
        ]
        for src, dst, what, expect in checks:
            r = ping(src.netns, dst, count=3, interval=0.1, timeout=3 if expect else 2)
            reached = r.received > 0
            good = reached == expect
            ok &= good
            rtt = f"  rtt {sorted(r.rtts_ms)[len(r.rtts_ms) // 2]:.2f} ms" if r.rtts_ms else ""
            verdict = ("reached" if reached else "blocked") + ("" if good else "  << UNEXPECTED")
            say(f"  {src.name:7} -> {dst:11} ({what:18}) {verdict:8} {r.received}/{r.sent}{rtt}")

        macs = {p.mac: p.name for p in c.pods}
        for pod, ip in ((blue_a, blue_b.ip), (red_a, red_b.ip)):
            mac = _neighbour_mac(pod.netns, ip)
            owner = macs.get(mac or "", "?")
            same = owner.split("-")[0] == pod.name.split("-")[0]
            ok &= same
            say(
                f"  {pod.name} resolved {ip} to {mac} = {owner}"
                + ("" if same else "  << WRONG TENANT")
            )

        say(f"\nport security ({blue_a.name} pretends to be {blue_b.name})")
        before = c.nodes[0].counters()["drops"]
        send_frames(blue_a.netns, *_impersonation(blue_a.mac, blue_b.ip))
        after = _drops_until(c.nodes[0], before, ("spoofed_arp", "spoofed_source_ip"))
        for reason, what in (
            ("spoofed_arp", f"ARP reply 'I am {blue_b.ip}'"),
            ("spoofed_source_ip", f"UDP from {blue_b.ip}"),
        ):
            dropped = after.get(reason, 0) - before.get(reason, 0)
            ok &= dropped == 1
            say(f"  {what:28} dropped at n0: {reason} +{dropped}")
        r = ping(blue_a.netns, blue_b.ip, count=1, timeout=3)
        ok &= r.received == 1 and _neighbour_mac(blue_a.netns, blue_b.ip) == blue_b.mac
        say(f"  {blue_b.name} still reachable, still at {blue_b.mac}")

        say(f"\nthroughput (TCP, {transfer_bytes / 1e6:.0f} MB {blue_a.name} -> {blue_b.name})")
        t = tcp_transfer(blue_a.netns, blue_b.netns, blue_b.ip, transfer_bytes, timeout=60)
        ok &= t.ok
        say(
            f"  {t.mbit_per_s:8.0f} Mbit/s, {t.nbytes} bytes, sha256 "
            f"{'verified' if t.sha256_match else 'MISMATCH'}" + (f" ({t.error})" if t.error else "")
        )

        ok &= _gateway_section(c, topo, blue_a, blue_b, say)
        ok &= _routed_section(c, topo, say)
        ok &= _policy_section(c, blue_a, blue_b, say)

        say("\ncounters")
        for i, node in enumerate(c.nodes):
            cnt = node.counters()
            say(f"  n{i} node:  {_nonzero(cnt['node'])}")
            say(f"  n{i} drops: {_nonzero(cnt['drops'])}")
            for vni, net in cnt["networks"].items():
                say(f"  n{i} vni {vni}: {_nonzero(net)}")
        n_ns = len(topo.namespaces)
    say(f"\ncleaned up: {n_ns} namespaces and their devices removed")
    say(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1


def _gateway_section(c: Any, topo: Any, pod: Any, remote: Any, say: Say) -> bool:
    """blue gets a gateway on n0 (the node's own IP stack as a port of the network):
    the node reaches pods on both nodes, and a pod reaches an outside host,
    masqueraded by the node's nftables rules."""
    from overlay.control.ipam import mac_of
    from overlay.gateway import GatewayRule, NodeRules
    from overlay.testing.cluster import underlay_ip
    from overlay.testing.traffic import ping, tcp_peer

    gw_ip = "10.244.1.1"
    say(f"\nthe node's way in and out (blue's gateway {gw_ip} on n0, an outside host 198.19.0.2)")
    n0 = c.node_ns[0]
    out = topo.add_netns("out")
    topo.veth(n0, out, "198.19.0.1/24", "198.19.0.2/24", name_a="wan0", name_b="wan0")
    gw = c.nodes[0].network(100).add_gateway(mac_of(gw_ip), [f"{gw_ip}/24"])
    c.nodes[1].network(100).add_remote(gw.mac, underlay_ip(0), gw_ip)  # as the store would
    NodeRules(n0.path).apply([GatewayRule(gw.ifname, ("10.244.1.0/24",))])
    pod.netns.route_add("default", gateway=gw_ip)
    ok = True
    for dst, who in ((pod, "on n0"), (remote, "on n1, over the overlay")):
        r = ping(n0, dst.ip, count=2, interval=0.1, timeout=3)
        ok &= r.received == 2
        say(f"  node n0 -> {dst.name} {dst.ip} ({who}): {r.received}/{r.sent}")
    seen = tcp_peer(pod.netns, out, ("198.19.0.2", 8080))
    ok &= seen == "198.19.0.1"
    say(f"  {pod.name} -> outside 198.19.0.2: connected, seen as {seen} (masqueraded)")
    return ok


def _routed_section(c: Any, topo: Any, say: Say) -> bool:
    """green (VNI 300) is routed, not encapsulated: each node's gateway holds its
    node subnet, and the nodes route each other's subnet over the underlay, as
    overlayd does for ``mode = "routed"`` (host-gw; BGP where routers are between)."""
    from overlay.control.ipam import mac_of
    from overlay.gateway import GatewayRule, NodeRules
    from overlay.testing.cluster import underlay_ip
    from overlay.testing.traffic import ping

    say(
        "\na routed network (green, VNI 300: no encapsulation, each node routes the other's subnet)"
    )
    pods = []
    for i, node in enumerate(c.nodes):
        net = node.add_network(300, "green")
        gw = f"10.245.{i}.1"
        net.add_gateway(mac_of(gw), [f"{gw}/24"])
        ns = topo.add_netns(f"green{i}")
        ip = f"10.245.{i}.2"
        net.add_port(mac_of(ip), [f"{ip}/24"]).move_to_netns(ns.path, gateway=gw)
        c.node_ns[i].route_add(f"10.245.{1 - i}.0/24", gateway=underlay_ip(1 - i))
        pods.append((ns, ip))
    # Green's gateways join each node's rules: isolated from blue's, not masqueraded.
    NodeRules(c.node_ns[0].path).apply(
        [
            GatewayRule("ovg100", ("10.244.1.0/24",)),
            GatewayRule("ovg300", ("10.245.0.0/16",), False),
        ]
    )
    NodeRules(c.node_ns[1].path).apply([GatewayRule("ovg300", ("10.245.0.0/16",), False)])
    before = c.nodes[0].counters()["node"].get("udp_tx_packets", 0)
    r = ping(pods[0][0], pods[1][1], count=3, interval=0.1, timeout=3)
    sent = c.nodes[0].counters()["node"].get("udp_tx_packets", 0) - before
    ok = r.received == 3 and sent == 0
    say(f"  green0 {pods[0][1]} @n0 -> green1 {pods[1][1]} @n1: {r.received}/{r.sent}, "
        f"tunnel datagrams sent meanwhile: {sent} (plain IP on the underlay)")  # fmt: skip
    return ok


def _policy_section(c: Any, client: Any, server: Any, say: Say) -> bool:
    """A Kubernetes NetworkPolicy on blue-b (n1): only pods labelled role=client
    may connect. blue-a (on n0, a remote pod to n1) is refused until n1 learns
    its label; ``explain`` names the deciding policy."""
    from overlay.testing.cluster import underlay_ip
    from overlay.testing.traffic import ping

    say("\nnetwork policy (a NetworkPolicy: blue-b admits only pods labelled role=client)")
    net = c.nodes[1].network(100)
    server.port.set_labels({"app": "db"})
    net.apply_policies(
        [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "db-clients-only", "namespace": "default"},
          "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}}]
    )  # fmt: skip
    before = c.nodes[1].counters()["drops"].get("policy_denied_ingress", 0)
    r = ping(client.netns, server.ip, count=2, interval=0.1, timeout=1)
    denied = c.nodes[1].counters()["drops"].get("policy_denied_ingress", 0) - before
    v = net.explain(client.ip, server.ip, 80, "TCP")
    say(f"  {client.name} (no labels) -> {server.name}: {r.received}/{r.sent}, dropped at n1: "
        f"policy_denied_ingress +{denied}; explain: {'allowed' if v.allowed else 'denied'} "
        f"by {v.tier} {v.policy or ''}")  # fmt: skip
    net.add_remote(client.mac, underlay_ip(0), client.ip, labels={"role": "client"})
    r2 = ping(client.netns, server.ip, count=2, interval=0.1, timeout=2)
    say(f"  {client.name} labelled role=client -> {server.name}: {r2.received}/{r2.sent}")
    net.apply_policies([])
    return r.received == 0 and denied > 0 and not v.allowed and r2.received == 2


def run_discovery(encap: Encap = Encap.VXLAN, say: Say = print, ttl: float = 2.0) -> int:
    """Three nodes find each other through the store (the embedded MemoryStore):
    a pod added on each is reached from the others, then a node goes away and
    its entries leave the others' tables within the lease TTL."""
    if os.geteuid() != 0:
        say("overlay demo: needs root (TAP devices and network namespaces): run it with sudo")
        return 2
    import asyncio
    import functools
    import ipaddress

    from overlay.control import keys
    from overlay.control.agent import Agent
    from overlay.control.store import MemoryStore
    from overlay.model import NAMESPACE_LABEL, NetworkSpec, to_json
    from overlay.node import Node
    from overlay.testing.cluster import underlay_ip
    from overlay.testing.netns import Topology
    from overlay.testing.traffic import ping

    ok = True
    t0 = time.monotonic()
    say(f"\noverlay demo, part 2: three nodes find each other through the store ({encap.name})\n")
    with Topology() as topo:
        # Namespaces first: netlink work runs outside the event loop.
        node_ns = [topo.add_netns(f"d{i}") for i in range(3)]
        pod_ns = [topo.add_netns(f"dpod{i}") for i in range(3)]
        topo.lan(node_ns, [f"{underlay_ip(i)}/24" for i in range(3)], switch="dsw")
        nodes = [Node(underlay_ip(i), encap, netns=ns.path) for i, ns in enumerate(node_ns)]
        store = MemoryStore()

        def table(i: int) -> str:
            net = nodes[i].networks.get(100)
            if net is None:
                return "-"
            peers = ", ".join(sorted(str(v) for v in net.vteps)) or "none"
            return f"VTEPs [{peers}], {len(net.remotes)} remote pods"

        async def main() -> bool:
            good = True
            loop = asyncio.get_running_loop()
            await store.put(keys.network(100), to_json(NetworkSpec(vni=100, tenant="blue")))
            agents = [
                Agent(n, store, f"node{i}", networks=(100,), ttl=ttl) for i, n in enumerate(nodes)
            ]
            tasks = [asyncio.create_task(a.run()) for a in agents]
            try:
                for n in nodes:
                    n.start()
                ips = []
                for i, a in enumerate(agents):
                    labels = {"app": f"pod{i}", NAMESPACE_LABEL: "demo"}
                    ep, port = await a.add_endpoint(100, name=f"demo/pod{i}", labels=labels)
                    port.move_to_netns(pod_ns[i].path, "eth0")
                    ip = str(ipaddress.ip_interface(ep.ips[0]).ip)
                    ips.append(ip)
                    say(f"  node{i} {underlay_ip(i)} leased {a.subnets[100]}; pod{i} got {ip}")
                end = loop.time() + 10
                while loop.time() < end and not all(
                    len(n.networks[100].remotes) == 2 for n in nodes
                ):
                    await asyncio.sleep(0.05)
                for i in range(3):
                    say(f"  node{i} programmed: {table(i)}")
                for i in range(3):
                    for j in range(3):
                        if i != j:
                            job = functools.partial(
                                ping, pod_ns[i], ips[j], count=2, interval=0.1, timeout=3
                            )
                            r = await loop.run_in_executor(None, job)
                            good &= r.ok
                            say(
                                f"  pod{i} -> pod{j} {ips[j]:12} "
                                f"{'reached' if r.ok else 'FAILED'} {r.received}/{r.sent}"
                            )
                good &= await _store_policy_section(store, agents, pod_ns, ips, say)
                say(f"\n  node2 goes away (its agent stops renewing a {ttl:g} s lease)")
                gone = loop.time()
                tasks[2].cancel()
                await asyncio.gather(tasks[2], return_exceptions=True)
                await agents[2].stop(deregister=False)
                nodes[2].stop()
                end = loop.time() + ttl + 5
                while loop.time() < end and not all(
                    len(nodes[i].networks[100].remotes) == 1 for i in (0, 1)
                ):
                    await asyncio.sleep(0.05)
                took = loop.time() - gone
                removed = all(len(nodes[i].networks[100].vteps) == 1 for i in (0, 1))
                good &= removed
                for i in (0, 1):
                    say(f"  node{i} programmed: {table(i)}")
                say(f"  node2's entries {'gone' if removed else 'STILL THERE'} after {took:.1f} s")
            finally:
                for a, t in zip(agents, tasks, strict=True):
                    await a.stop()
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await store.close()
            return good

        try:
            ok = asyncio.run(main())
        finally:
            for n in nodes:
                n.close()
        n_ns = len(topo.namespaces)
    say(f"\ncleaned up: {n_ns} namespaces and their devices removed")
    say(f"part 2 {'passed' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1


_DEMO_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pod1-from-pod0, namespace: demo}
spec:
  podSelector: {matchLabels: {app: pod1}}
  ingress: [{from: [{podSelector: {matchLabels: {app: pod0}}}]}]
"""


def _realised(agent: Any, tenant: str) -> str:
    got = agent.policy_report.get(tenant)
    return "" if got is None else str(got.hash)


async def _store_policy_section(
    store: Any, agents: list[Any], pod_ns: list[Any], ips: list[str], say: Say
) -> bool:
    """Policy written once to the store: every node applies it, reports the
    same hash, and its verification probe finds the tables as the policy says."""
    import asyncio
    import functools

    from overlay.control import policies
    from overlay.control.verify import PolicyVerifier
    from overlay.testing.traffic import ping

    loop = asyncio.get_running_loop()
    say("\n  policy through the store: pod1 admits only pod0 (overlay policy apply does this)")
    began = loop.time()
    await policies.apply(store, "blue", policies.parse(_DEMO_POLICY))
    want = (await policies.read(store, "blue")).hash
    end = began + 10
    while loop.time() < end and not all(_realised(a, "blue") == want for a in agents):
        await asyncio.sleep(0.01)
    took = loop.time() - began
    for a in agents:
        await a.report_policy()
    rows = await policies.status(store, "blue")
    good = len(rows) == 3 and all(r["in_sync"] for r in rows)
    say(
        f"  every node in sync with the store (hash {want}) {took * 1000:.0f} ms after apply: "
        + ", ".join(f"{r['node']} {'yes' if r['in_sync'] else 'NO'}" for r in rows)
    )
    for i in (0, 2):
        job = functools.partial(ping, pod_ns[i], ips[1], count=1, interval=0.1, timeout=1)
        r = await loop.run_in_executor(None, job)
        expect = i == 0
        good &= r.ok == expect
        say(
            f"  pod{i} -> pod1 {'reached' if r.ok else 'refused'}"
            + ("" if r.ok == expect else " (UNEXPECTED)")
        )
    found = [PolicyVerifier(a).run_once().get("blue", {}) for a in agents]
    bad = sum(f.get("count", 0) for f in found)
    good &= bad == 0
    say(
        f"  verify: {sum(f.get('checked', 0) for f in found)} cells of the truth table checked "
        f"against the data plane on 3 nodes, {bad} disagreements"
    )
    await policies.delete(
        store, "blue", [policies.key_of("blue", "netpol", "pod1-from-pod0", "demo")]
    )
    return good


if __name__ == "__main__":
    sys.exit(run())
