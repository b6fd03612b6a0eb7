"""What the control plane needs from a node, as ``typing.Protocol``s.

Why protocols and not ``overlay.Node``. The agent and its reconcilers program
a node's tables and nothing else; written against these protocols they run
unchanged on the real ``Node`` (a C data plane in a namespace) and on the
recording fake of ``overlay.testing.fakes`` (plain Python, hundreds of agents
in one process), and mypy proves both fit (the ``TYPE_CHECKING`` block at the
bottom). The protocols are the contract a new kind of node (a routed one, a
remote one behind an API) has to meet, and the list of what a reconciler may
touch: what is not here, a reconciler does not call.

- ``NodeTables`` / ``NetworkTables``: what reconcilers read and program
  (networks, member VTEPs, remote endpoints: FDB and neighbours).
- ``HostNode`` / ``HostNetwork``: the agent's own additions for this node's
  pods (``add_port``/``remove_port``). The recording fake has no ports, so it
  satisfies ``NodeTables`` only; the agent's endpoint API runs on real nodes.

Members are read-only properties where the node holds plain attributes: a
protocol attribute would be invariant, and ``Node.networks`` is a
``dict[int, Network]``, not a ``dict[int, NetworkTables]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Protocol, TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class PortInfo(Protocol):
    """A local port as the control plane sees it: its MAC and addresses."""

    @property
    def mac(self) -> str: ...

    @property
    def ips(self) -> Sequence[IPInterface]: ...


class NetworkTables(Protocol):
    """One network (VNI) of a node: the tables the reconcilers program.

    Each call makes one entry equal to its arguments and raises an
    ``OverlayError`` (``ConfigError``, ``ConflictError``, ``NotFoundError``)
    when the node refuses it; the properties show what the node holds now,
    which is what reconcilers compare against (level-triggered)."""

    @property
    def tenant(self) -> str: ...

    @property
    def ports(self) -> Sequence[PortInfo]: ...

    @property
    def vteps(self) -> AbstractSet[IPAddress]:
        """Member VTEPs: flooded to, and accepted as sources."""
        ...

    @property
    def remotes(self) -> Mapping[str, tuple[IPAddress, Sequence[IPAddress]]]:
        """Remote endpoints: MAC -> (its VTEP, its addresses)."""
        ...

    def add_vtep(self, address: str, port: int | None = None) -> None: ...

    def remove_vtep(self, address: str) -> None: ...

    def add_remote(
        self,
        mac: str,
        vtep: str,
        ip: str | Iterable[str] | None = None,
        port: int | None = None,
    ) -> None:
        """FDB (vni, mac) -> vtep and a neighbour entry per address; replaces
        what the node held for mac."""
        ...

    def remove_remote(self, mac: str) -> None: ...


class NodeTables(Protocol):
    """A node as the reconcilers see it: its underlay and its networks."""

    @property
    def underlay(self) -> IPAddress: ...

    @property
    def port(self) -> int | None:
        """The node's UDP port (0 or None: the encapsulation's default)."""
        ...

    @property
    def networks(self) -> Mapping[int, NetworkTables]: ...

    def add_network(
        self,
        vni: int,
        tenant: str,
        *,
        learning: bool = False,
        tunnel: bool = True,
        encap: str | None = None,
    ) -> NetworkTables:
        """Host network vni; ``tunnel=False``: it never encapsulates (routed,
        underlay: no VTEPs, no remotes, pods at the full underlay MTU);
        ``encap``: a tunnel network's ("vxlan", "geneve"; None: the node's)."""
        ...

    def network(self, vni: int) -> NetworkTables: ...


# The node's own port type (``overlay.node.Port``): what ``Agent.add_endpoint``
# hands back, with whatever the node's ports can do beyond ``PortInfo``.
P = TypeVar("P", bound=PortInfo)


class HostNetwork(NetworkTables, Protocol[P]):
    """A network that also takes this node's own pods (the agent's endpoint API)."""

    @property
    def ports(self) -> Sequence[P]: ...

    def add_port(
        self,
        mac: str,
        ips: Sequence[str] = (),
        *,
        ifname: str | None = None,
        netns: str | None = None,
        port_security: bool = True,
        persist: bool = False,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        named_ports: dict[str, tuple[int, str]] | None = None,
    ) -> P: ...

    def remove_port(self, port: P) -> None: ...

    @property
    def gateway(self) -> P | None:
        """The network's gateway on this node (the node's IP stack), or None."""
        ...

    def add_gateway(
        self,
        mac: str,
        ips: Sequence[str],
        *,
        ifname: str | None = None,
        persist: bool = False,
        attach: bool = False,
        mtu: int | None = None,
        netns: str | None = None,
    ) -> P: ...


class HostNode(NodeTables, Protocol[P]):
    """A node whose networks take ports of type P: what ``Agent`` is given."""

    @property
    def networks(self) -> Mapping[int, HostNetwork[P]]: ...

    def add_network(
        self,
        vni: int,
        tenant: str,
        *,
        learning: bool = False,
        tunnel: bool = True,
        encap: str | None = None,
    ) -> HostNetwork[P]: ...

    def network(self, vni: int) -> HostNetwork[P]: ...

    @property
    def netns(self) -> str | None:
        """The namespace that holds the underlay (and the gateways), None: ours."""
        ...


if TYPE_CHECKING:  # mypy proves the real node and the recording fake fit
    from overlay.node import Node, Port
    from overlay.testing.fakes import RecordingNode

    def _node_fits(node: Node) -> HostNode[Port]:
        return node

    def _fake_fits(fake: RecordingNode) -> NodeTables:
        return fake
