"""overlay: a userspace VXLAN/Geneve overlay network for containers.

The embedding API is ``Node`` (see overlay.node); the data plane is C
(native/, reached only through overlay.bindings); the pure-Python codecs in
overlay.wire are the readable reference of the wire formats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Encap", "GeneveOption", "Network", "Node", "Port", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from overlay.node import Encap, GeneveOption, Network, Node, Port


def __getattr__(name: str) -> object:
    # Lazy: importing overlay (e.g. overlay.wire, or the pytest plugin) must
    # not need the compiled data plane.
    if name in ("Encap", "GeneveOption", "Network", "Node", "Port"):
        from overlay import node

        return getattr(node, name)
    raise AttributeError(name)
