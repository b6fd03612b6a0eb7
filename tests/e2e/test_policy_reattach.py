"""A pod re-attached by a restarted node (``Network.attach_port``) under policies
is isolated until its tables are set, and has them when ``attach_port`` returns:
no window in which a restart lets through what the policies deny."""

from __future__ import annotations

import pytest

from overlay import Encap, Node
from overlay.testing.netns import Topology
from overlay.testing.traffic import ping

pytestmark = pytest.mark.root

DENY_INGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny-ingress", "namespace": "default"},
    "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]},
}


def test_a_reattached_pod_keeps_its_policy(overlay_topology: Topology) -> None:
    t = overlay_topology
    n0, db, client = t.add_netns("n0"), t.add_netns("db"), t.add_netns("client")
    t.underlay([n0, t.add_netns("n1")])
    mac_db, mac_client = "02:00:00:00:0d:01", "02:00:00:00:0c:01"
    with Node("198.18.0.1", Encap.VXLAN, netns=n0.path) as node:
        net = node.add_network(100, "blue")
        pod = net.add_port(mac_db, ["10.244.1.10/24"], persist=True, labels={"app": "db"})
        pod.move_to_netns(db.path)
        net.add_port(mac_client, ["10.244.1.11/24"]).move_to_netns(client.path)
        net.apply_policies([DENY_INGRESS])
        node.start()
        assert ping(client, "10.244.1.10", count=2, timeout=1).received == 0
    # A new node takes the pod back where it lives, with the same policy set.
    with Node("198.18.0.1", Encap.VXLAN, netns=n0.path) as node:
        net = node.add_network(100, "blue")
        net.apply_policies([DENY_INGRESS])
        back = net.attach_port(
            mac_db, ["10.244.1.10/24"], ifname="eth0", netns=db.path, labels={"app": "db"}
        )
        table = net.policy_table(back, "ingress")
        assert table is not None and table.to_dict()  # in force when attach_port returns
        client2 = t.add_netns("c2")
        net.add_port(mac_client, ["10.244.1.12/24"]).move_to_netns(client2.path)
        node.start()
        before = node.counters()["drops"].get("policy_denied_ingress", 0)
        assert ping(client2, "10.244.1.10", count=2, timeout=1).received == 0
        assert node.counters()["drops"].get("policy_denied_ingress", 0) > before
        # ...and the pod itself may still reach out (egress is not isolated).
        assert ping(db, "10.244.1.12", count=2, timeout=2).received == 2
        net.remove_port(back)
