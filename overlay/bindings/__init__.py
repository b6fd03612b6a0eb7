"""The bindings: the only modules of overlay that touch cffi.

Layered as PyNaCl's and pyca/cryptography's bindings are: ``native/overlay.h``
(and ``overlay_tools.h``) is the whole ABI, fed to cffi unchanged, and one
module here mirrors each of its sections: ``engine`` (life cycle and the
``Engine`` class that gathers the rest), ``network``, ``port``, ``fdb``,
``counters``, ``events``, ``policy`` (rule tables, connection tracking),
``wire`` (the C codecs, in ``overlay.wire``'s terms), and ``tools`` for the
test and benchmark tools. Each reads its constants from ``lib`` so they
cannot drift from the C, checks arguments
before the call, and turns return codes into typed exceptions through one
helper (``_ffi.check``); ``_ffi`` is the one module that imports the compiled
``overlay._native`` (tests/unit/test_bindings_boundary.py holds every other
module of overlay, the tests and the benchmarks to that). Everything above
(``overlay.node``, the control plane, overlayd) is plain Python.

This package imports the compiled module when it is imported; ``overlay``,
``overlay.wire`` and the pytest plugin do not import it.
"""

from __future__ import annotations

from overlay.bindings._ffi import addr_bytes, addr_from, mac_bytes, mac_str
from overlay.bindings.counters import COUNTER_HELP, COUNTER_NAMES, DROP_REASONS, OBJ_COUNTER_NAMES
from overlay.bindings.engine import MAX_WORKERS, OFFLOADS, STEERING, VNI_MAX, Engine
from overlay.bindings.events import (
    EVENT_LEARNED,
    EVENT_MAC_SEEN,
    EVENT_MISS,
    EVENT_POLICY,
    Event,
    PolicyVerdict,
)
from overlay.bindings.fdb import FdbEntry
from overlay.bindings.network import ENCAP_GENEVE, ENCAP_VXLAN
from overlay.bindings.policy import (
    RULE_DEFAULT,
    RULE_ISOLATION,
    RULE_PENDING,
    PeerBlock,
    PolicyRule,
    PortRange,
)

__all__ = [
    "COUNTER_HELP",
    "COUNTER_NAMES",
    "DROP_REASONS",
    "ENCAP_GENEVE",
    "ENCAP_VXLAN",
    "EVENT_LEARNED",
    "EVENT_MAC_SEEN",
    "EVENT_MISS",
    "EVENT_POLICY",
    "MAX_WORKERS",
    "OBJ_COUNTER_NAMES",
    "OFFLOADS",
    "RULE_DEFAULT",
    "RULE_ISOLATION",
    "RULE_PENDING",
    "STEERING",
    "VNI_MAX",
    "Engine",
    "Event",
    "FdbEntry",
    "PeerBlock",
    "PolicyRule",
    "PolicyVerdict",
    "PortRange",
    "addr_bytes",
    "addr_from",
    "mac_bytes",
    "mac_str",
]
