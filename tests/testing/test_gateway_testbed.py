"""The gateway test bed of the throughput toolkit (``Testbeds.gateway``, ``GatewayNet``).

It must take each pod out the way it claims (the overlay pod through its
network's gateway TAP, the veth pod through the node's kernel alone), both
masqueraded to the node's outside address, and leave nothing behind.
"""

from __future__ import annotations

import os

import pytest

from overlay.testing.netns import NETNS_RUN_DIR
from overlay.testing.throughput import OUTSIDE_IP, Testbeds, build_gateway_net, tcp_stream
from overlay.testing.traffic import tcp_peer


@pytest.mark.root
def test_both_pods_leave_masqueraded_each_by_its_own_way_and_nothing_is_left() -> None:
    with Testbeds() as beds:
        net = beds.gateway()
        sides = net.sides()
        assert list(sides) == ["overlay", "kernel"]
        assert {s.b_ip for s in sides.values()} == {OUTSIDE_IP}
        assert (sides["overlay"].a_ip, sides["kernel"].a_ip) == ("10.244.0.2", "10.245.0.2")
        gateway = net.node.network(100).gateway
        assert gateway is not None and gateway.ifname == "ovg100"
        moved: dict[str, int] = {}
        sent: dict[str, int] = {}  # bytes the engine wrote to the node's stack
        for port, side in zip((20080, 20081), sides.values(), strict=True):
            before = gateway.counters()["tx_bytes"]
            # The outside host has no route to either range: only NAT answers.
            assert tcp_peer(side.a, side.b, (side.b_ip, port)) == "198.19.0.1", side.name
            moved[side.name] = tcp_stream(side, 1).bytes_moved
            sent[side.name] = gateway.counters()["tx_bytes"] - before
            assert moved[side.name] > 0, side.name
        # Every byte of the overlay pod's stream went through the gateway port,
        # and the kernel pod's never touched the engine.
        assert sent["overlay"] >= moved["overlay"]
        assert sent["kernel"] < 65536
        counts = net.rules.counters()
        assert counts["egress ovg100 10.244.0.0/16"] > 0
        assert counts["egress kgw0 10.245.0.0/16"] > 0
        made = list(net.topology.namespaces)
        assert len(made) == 4
    assert not [n for n in made if os.path.exists(os.path.join(NETNS_RUN_DIR, n))]


def test_overlapping_or_malformed_ranges_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kernel_cidr='10.244.128.0/17'.*must not overlap"):
        build_gateway_net(kernel_cidr="10.244.128.0/17")
    with pytest.raises(ValueError, match="cidr='10.244.0.1/16'"):
        build_gateway_net(cidr="10.244.0.1/16")
    with pytest.raises(ValueError, match="kernel_cidr='10.245.0.0/31'"):
        build_gateway_net(kernel_cidr="10.245.0.0/31")
