"""A container added again after DEL (a runtime's restart: DEL, then ADD with the
same container ID) gets the address it had, through the real overlay-cni.

The node's allocator hands out the lowest free address; without the daemon
remembering the former one, a container restarted after a lower address was
freed would come back with another address and MAC (``test_podman.py`` sees
the same through podman restart). If its former address was taken meanwhile,
the ADD still succeeds, with another one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from overlay.control.ipam import mac_of
from overlay.testing.daemon import DaemonCluster, cni
from overlay.testing.netns import Topology

pytestmark = [pytest.mark.root]

BLUE: dict[str, Any] = {"vni": 100, "tenant": "blue", "cidr": "10.244.0.0/16"}


def test_a_container_added_again_gets_its_former_address_unless_taken(
    overlay_topology: Topology, overlay_daemons: Callable[..., DaemonCluster]
) -> None:
    cluster = overlay_daemons(n_nodes=1, networks=[BLUE])
    cluster.start()
    daemon = cluster.daemons[0]
    conf = {"cniVersion": "1.0.0", "name": "blue", "type": "overlay-cni", "vni": 100}
    conf["socket"] = daemon.socket
    pods = {name: overlay_topology.add_netns(name) for name in ("c1", "c2", "c3", "c4")}

    def add(cid: str, cni_args: str = "IgnoreUnknown=1") -> str:
        result = cni("ADD", conf, cid=cid, netns=pods[cid].path, cni_args=cni_args).success()
        mac = result["interfaces"][0]["mac"]
        assert mac == mac_of(result["ips"][0]["address"]) == pods[cid].link_info("eth0").mac
        return str(result["ips"][0]["address"])

    def delete(cid: str) -> None:
        assert cni("DEL", conf, cid=cid, netns=pods[cid].path).success() is None

    first, second, third = (add(cid) for cid in ("c1", "c2", "c3"))
    assert len({first, second, third}) == 3
    delete("c1")  # the lowest address is free now
    delete("c2")
    assert add("c2") == second  # a restart: the address it had, not the lowest free one
    assert add("c4") == first  # a new container: the lowest free one

    # The former address taken meanwhile: the ADD gets another address.
    delete("c2")
    ip = str(ipaddress.ip_interface(second).ip)
    assert add("c1", f"IgnoreUnknown=1;IP={ip}") == second
    other = add("c2")
    assert other not in (first, second, third)
    addresses = {a["container_id"]: a["ips"][0] for a in daemon.client.attachments()}
    assert addresses == {"c1": second, "c2": other, "c3": third, "c4": first}
