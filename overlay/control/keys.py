"""The store's key layout, version 1. Two releases that share a cluster agree
on it through the version in the prefix: a later layout lives under
``/overlay/v2/`` beside this one, never on top of it.

    /overlay/v1/version                        b"1"
    /overlay/v1/tenants/<name>                 Tenant (JSON)
    /overlay/v1/networks/<vni>                 NetworkSpec (JSON)
    /overlay/v1/nodes/<name>                   NodeSpec (JSON), under the node's lease
    /overlay/v1/subnets/<vni>/<subnet>         node name; the node's subnet lease of the
                                               network's CIDR (created by compare-and-swap),
                                               under the node's lease; <subnet> is the CIDR
                                               with "/" written as "_"
    /overlay/v1/addrs/<vni>/<ip>               endpoint MAC: the address is taken
                                               (created by compare-and-swap), under the
                                               owning node's lease
    /overlay/v1/endpoints/<vni>/<mac>          Endpoint (JSON), under the node's lease

Keys under a node's lease vanish when the node stops renewing it: its
VTEP, endpoints and addresses leave every peer's tables within the TTL.
"""

from __future__ import annotations

VERSION = 1
PREFIX = b"/overlay/v1/"
VERSION_KEY = PREFIX + b"version"
TENANTS = PREFIX + b"tenants/"
NETWORKS = PREFIX + b"networks/"
NODES = PREFIX + b"nodes/"
SUBNETS = PREFIX + b"subnets/"
ADDRS = PREFIX + b"addrs/"
ENDPOINTS = PREFIX + b"endpoints/"


def tenant(name: str) -> bytes:
    return TENANTS + name.encode()


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


def endpoint(vni: int, mac: str) -> bytes:
    return endpoints(vni) + mac.encode()


def last(key: bytes) -> str:
    """The last path element of a key, decoded ('' if it is not UTF-8)."""
    try:
        return key.rsplit(b"/", 1)[-1].decode()
    except UnicodeDecodeError:
        return ""
