"""The store's key layout, version 1. Two releases that share a cluster agree
on it through the version in the prefix: a later layout lives under
``/overlay/v2/`` beside this one, never on top of it.

    /overlay/v1/version                        b"1"
    /overlay/v1/networks/<vni>                 NetworkSpec (JSON)
    /overlay/v1/nodes/<name>                   NodeSpec (JSON), under the node's lease
    /overlay/v1/subnets/<vni>/<subnet>         node name; the node's subnet lease of the
                                               network's CIDR (created by compare-and-swap),
                                               under the node's lease; <subnet> is the CIDR
                                               with "/" written as "_"
    /overlay/v1/addrs/<vni>/<ip>               endpoint MAC: the address is taken
                                               (created by compare-and-swap), under the
                                               owning node's lease
    /overlay/v1/endpoints/<vni>/<node>/<mac>   Endpoint (JSON), under the node's lease;
                                               its "ports" (named container ports) is
                                               left out while empty, so agents of the
                                               release before it read those records
    /overlay/v1/policies/<tenant>/<kind>/<name>
                                               a policy of the tenant's networks: the
                                               Kubernetes manifest (JSON); <kind> is
                                               networkpolicy (<name> is <namespace>/<name>),
                                               adminnetworkpolicy or
                                               baselineadminnetworkpolicy (<name> default)
    /overlay/v1/namespaces/<tenant>/<name>     {"labels": {...}}: a Kubernetes namespace
                                               of the tenant and its labels
    /overlay/v1/policy-status/<node>           what the node realised of each tenant's
                                               policies (revision, hash) and what its
                                               verification probe found, under the node's lease

Keys under a node's lease vanish when the node stops renewing it: its
VTEP, endpoints and addresses leave every peer's tables within the TTL.

Why the node is in an endpoint's key. Every record is a *claim* (see
``overlay.control.claims``): a MAC, addresses, an underlay. With one key per
MAC, a second writer of a MAC overwrote the first, and nobody could tell
which came first; with the node in the key, two claims of one MAC are two
keys, and the store's own order (create revisions) says which is first, the
same on every node. It also lets store permissions give each node its own
key space (``endpoints/<vni>/<node>/``). Records of the earlier layout,
``endpoints/<vni>/<mac>``, are still read during a rolling upgrade (their
owner is the node the value names) but never written.

Retired: ``/overlay/v1/tenants/<name>``. A tenant is the ``tenant`` field of
a network's definition; the separate record was written by nobody and read by
nobody. A store that still holds such keys is harmless: no agent watches the
prefix, and ``kind`` maps it to no checker (``overlay.control.claims``).
"""

from __future__ import annotations

VERSION = 1
PREFIX = b"/overlay/v1/"
VERSION_KEY = PREFIX + b"version"
NETWORKS = PREFIX + b"networks/"
NODES = PREFIX + b"nodes/"
SUBNETS = PREFIX + b"subnets/"
ADDRS = PREFIX + b"addrs/"
ENDPOINTS = PREFIX + b"endpoints/"
POLICIES = PREFIX + b"policies/"
NAMESPACES = PREFIX + b"namespaces/"
POLICY_STATUS = PREFIX + b"policy-status/"


def kind(key: bytes) -> bytes:
    """The kind of record a key (or a prefix) is, as its top-level prefix
    (``NODES`` for ``nodes/a``, ``ENDPOINTS`` for ``endpoints/7/``), or b""
    outside this layout: what the checkers' dispatch tables are keyed on."""
    if not key.startswith(PREFIX):
        return b""
    head, slash, _ = key[len(PREFIX) :].partition(b"/")
    return PREFIX + head + slash if slash else b""


def network(vni: int) -> bytes:
    return NETWORKS + str(vni).encode()


def node(name: str) -> bytes:
    return NODES + name.encode()


def subnets(vni: int) -> bytes:
    return SUBNETS + f"{vni}/".encode()


def subnet(vni: int, cidr: str) -> bytes:
    return subnets(vni) + cidr.replace("/", "_").encode()


def addrs(vni: int) -> bytes:
    return ADDRS + f"{vni}/".encode()


def addr(vni: int, ip: str) -> bytes:
    return addrs(vni) + ip.encode()


def endpoints(vni: int) -> bytes:
    return ENDPOINTS + f"{vni}/".encode()


def endpoint(vni: int, node: str, mac: str) -> bytes:
    return endpoints(vni) + f"{node}/{mac}".encode()


def policies(tenant: str) -> bytes:
    return POLICIES + f"{tenant}/".encode()


def policy(tenant: str, kind: str, name: str) -> bytes:
    """A policy's key; ``kind`` in lower case, ``name`` "<namespace>/<name>" for a
    NetworkPolicy."""
    return policies(tenant) + f"{kind}/{name}".encode()


def namespaces(tenant: str) -> bytes:
    return NAMESPACES + f"{tenant}/".encode()


def namespace(tenant: str, name: str) -> bytes:
    return namespaces(tenant) + name.encode()


def policy_status(node: str) -> bytes:
    return POLICY_STATUS + node.encode()


def tenant_of(key: bytes, prefix: bytes) -> str | None:
    """The tenant right after prefix in key (``policies/<tenant>/...``), or None."""
    head, slash, _ = key[len(prefix) :].partition(b"/")
    try:
        return head.decode() if slash and head else None
    except UnicodeDecodeError:
        return None


def parse_endpoint(key: bytes) -> tuple[int, str | None, str] | None:
    """(vni, node, mac) of an endpoint key; node is None for the earlier layout
    ``endpoints/<vni>/<mac>``; None when the key follows neither."""
    if not key.startswith(ENDPOINTS):
        return None
    try:
        parts = key[len(ENDPOINTS) :].decode().split("/")
    except UnicodeDecodeError:
        return None
    if not (parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 8) or not all(parts):
        return None
    if len(parts) == 3:
        return int(parts[0]), parts[1], parts[2]
    if len(parts) == 2:
        return int(parts[0]), None, parts[1]
    return None


def vni_of(key: bytes, prefix: bytes) -> int | None:
    """The VNI right after prefix in key (``subnets/<vni>/...``), or None."""
    head = key[len(prefix) :].split(b"/", 1)[0]
    return int(head) if head.isdigit() and len(head) <= 8 else None


def last(key: bytes) -> str:
    """The last path element of a key, decoded ('' if it is not UTF-8)."""
    try:
        return key.rsplit(b"/", 1)[-1].decode()
    except UnicodeDecodeError:
        return ""
