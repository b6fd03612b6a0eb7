"""Pods as overlayd sees them: the attach request (CNI ADD's body), and what the
daemon does or asks inside a pod's network namespace (routes, the interface as
the kernel sees it, removing one, the pod's announcement) — netlink through
pyroute2 and a packet socket, from a thread.

Design notes.
- **Addresses asked for.** ``ips`` in an attach request are either a delegated
  IPAM's (``ipam: "delegated"``, the default when ``ips`` are given: the
  daemon takes them as they are) or one address asked of the node's subnet
  lease (``ipam: "node"``: reserved there as if the node had picked it,
  refused outside the lease or when taken). The CNI plugin sends the latter
  for a runtime's ``IP=`` or ``runtimeConfig.ips`` when no ``ipam`` plugin is
  configured.
- **The pod's identity.** ``namespace`` and ``pod`` name the Kubernetes pod
  (checked by Kubernetes' rules, ``overlay.cni.validate``) and become its
  labels ``NAMESPACE_LABEL`` and ``POD_LABEL`` (``overlay.model``): the
  namespace label is the pod's policy namespace ("default" without it). A
  ``labels`` entry of either with another value is refused, not overridden:
  the request would name two pods. Without a ``name``, the endpoint is named
  "<namespace>/<pod>" (the plugin's name for a pod too). ``named_ports``
  (``{"serve-80-tcp": [80, "TCP"]}``: the pod's named container ports, by
  ``overlay.model.check_named_ports``) are what a policy's named port
  resolves to on the pod, on every node (its endpoint record carries them).
- **A new pod announces itself.** Once its interface is up, the pod sends a
  gratuitous ARP (an RFC 5227 announcement) for each IPv4 address and an
  unsolicited neighbour advertisement (override flag set, to all nodes) for
  each IPv6 address, from inside its namespace through a packet socket on
  its interface, as the bridge plugin's ``arping`` does. The MAC of an
  address is normally the one it derives, so peers' neighbour caches are
  right already; the announcement covers an address that comes back with
  another MAC (one the runtime asked for), which peers would otherwise keep
  sending to the old MAC until their cache entry times out (30-40 s). The
  frames come from the pod's own MAC and addresses, so port security passes
  them, and they are broadcast and multicast, so they reach every member.
  An announcement is best effort: a failure is logged, never the attach's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from overlay.cni import validate
from overlay.daemon.config import get_key
from overlay.errors import ConfigError
from overlay.model import NAMESPACE_LABEL, POD_LABEL, check_named_ports
from overlay.nsenter import call_in, iproute, link_index, netns_path
from overlay.nsenter import delete_link as _delete_link
from overlay.wire import checksum, mac_to_bytes

IPAM_KINDS = ("node", "delegated")


def _check(field: str, value: Any, rule: Callable[..., None], *args: Any) -> None:
    """``rule(value, *args)`` from ``overlay.cni.validate`` (the plugin checks the same
    values by the same rules), its refusal as a ConfigError naming ``field``."""
    try:
        rule(value, *args)
    except validate.Invalid as exc:
        raise ConfigError(field, validate.clip(value), exc.expected) from None


def forbidden_netns(node_netns: str) -> dict[str, str]:
    """The namespaces no pod may be given, each by what it is and a path to it:
    overlayd's own (the host's, usually) and the node's underlay namespace
    (``node.netns``, a name or a path; "" when it is overlayd's own)."""
    out = {"overlayd's own network namespace": validate.OWN_NETNS}
    if node_netns:
        out["the node's underlay namespace (node.netns)"] = netns_path(node_netns)
    return out


@dataclasses.dataclass
class AttachRequest:
    """The body of ``POST /v1/endpoints`` (what the CNI plugin sends on ADD)."""

    container_id: str
    ifname: str
    netns: str
    vni: int
    ips: list[str] | None = None  # given (see ipam); None: the node allocates
    ipam: str = "node"  # "delegated": ips are a delegated IPAM's; "node": asked of the lease
    gateway: str = ""
    routes: list[dict[str, str]] = dataclasses.field(default_factory=list)
    mtu: int = 0  # 0: the node's underlay MTU less the encapsulation overhead
    mac: str | None = None
    name: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    ip_masq: bool = False  # CNI ipMasq: the network must masquerade its egress
    namespace: str = ""  # the pod's Kubernetes namespace: labels[NAMESPACE_LABEL]
    pod: str = ""  # the pod's Kubernetes name: labels[POD_LABEL]
    # The pod's named container ports, name -> (number, protocol).
    named_ports: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, body: Any, forbidden: Mapping[str, str] | None = None) -> AttachRequest:
        """Check ``body`` field by field (the CNI rules of ``overlay.cni.validate`` for
        the IDs, names and namespace); ``forbidden`` maps what each namespace is to a
        path of it: namespaces no pod may be given (``forbidden_netns``)."""
        if not isinstance(body, dict):
            raise ConfigError(
                "body", validate.clip(body), "a JSON object with container_id, ifname, netns, vni"
            )
        known = {f.name for f in dataclasses.fields(cls)} | {"gateways"}
        for k in body:
            if k not in known:
                raise ConfigError(
                    str(validate.clip(k)),
                    validate.clip(body[k]),
                    f"no such field; known: {sorted(known)}",
                )

        def get(key: str, kind: type | tuple[type, ...], expected: str, default: Any) -> Any:
            return get_key(body, key, "", kind, expected, default)

        cid = get("container_id", str, "the container ID", dataclasses.MISSING)
        _check("container_id", cid, validate.container_id)
        ifname = get("ifname", str, "an interface name", dataclasses.MISSING)
        _check("ifname", ifname, validate.ifname)
        netns = get("netns", str, "the pod's namespace path", dataclasses.MISSING)
        _check("netns", netns, validate.netns, forbidden)
        vni = get("vni", int, "a VNI this node hosts", dataclasses.MISSING)
        ips = get("ips", (list, type(None)), "a list of CIDR addresses", None)
        if ips is not None:
            if not ips:
                raise ConfigError("ips", ips, "at least one address, or no ips field")
            for ip in ips:
                try:
                    ipaddress.ip_interface(ip)
                except (ValueError, TypeError):
                    raise ConfigError("ips", ip, "addresses like 10.244.1.2/24") from None
        ipam = get(
            "ipam",
            str,
            '"node" (ips asked of the node\'s subnet lease) or "delegated"',
            "delegated" if ips is not None else "node",
        )
        if ipam not in IPAM_KINDS:
            raise ConfigError(
                "ipam", ipam, '"node" (ips asked of the node\'s subnet lease) or "delegated"'
            )
        if ipam == "delegated" and ips is None:
            raise ConfigError("ipam", ipam, 'ips from the delegated IPAM, or "node" without ips')
        gateway = get("gateway", str, "an IP address", "")
        gws = get("gateways", dict, "a mapping of address to gateway", {})
        if not gateway and gws:
            gateway = str(next(iter(gws.values())))
        if gateway:
            try:
                ipaddress.ip_address(gateway)
            except ValueError:
                raise ConfigError("gateway", gateway, "an IP address") from None
        routes = get("routes", list, 'a list of {"dst": CIDR, "gw": IP}', [])
        for r in routes:
            if not isinstance(r, dict) or "dst" not in r:
                raise ConfigError("routes", r, '{"dst": CIDR, "gw": IP (optional)}')
            try:
                ipaddress.ip_network(r["dst"], strict=False)
                if r.get("gw"):
                    ipaddress.ip_address(r["gw"])
            except (ValueError, TypeError):
                raise ConfigError("routes", r, '{"dst": CIDR, "gw": IP (optional)}') from None
        mtu = get("mtu", int, "an MTU 68-65535, or 0 for the computed one", 0)
        mac = get("mac", (str, type(None)), "a unicast MAC like 02:00:00:00:00:01", None)
        name = get("name", str, "a name", "")
        _check("name", name, validate.endpoint_name)
        labels = dict(get("labels", dict, "a mapping of strings to strings", {}))
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ConfigError("labels", validate.clip(labels), "a mapping of strings to strings")
        _check("labels", labels, validate.labels)
        namespace = get("namespace", str, "the pod's Kubernetes namespace", "")
        pod = get("pod", str, "the pod's Kubernetes name", "")
        for field, value, label, rule in (
            ("namespace", namespace, NAMESPACE_LABEL, validate.namespace_name),
            ("pod", pod, POD_LABEL, validate.pod_name),
        ):
            if not value:
                continue
            _check(field, value, rule)
            if labels.get(label, value) != value:
                raise ConfigError(
                    field,
                    value,
                    f"the value of label {label} in labels ({validate.shown(labels[label])}), "
                    "or leave the label out",
                )
            labels[label] = value
        if not namespace and NAMESPACE_LABEL in labels:
            # The label alone is the pod's policy namespace: held to the same rule.
            try:
                validate.namespace_name(labels[NAMESPACE_LABEL])
            except validate.Invalid as exc:
                raise ConfigError(
                    "labels",
                    {NAMESPACE_LABEL: validate.clip(labels[NAMESPACE_LABEL])},
                    f"label {NAMESPACE_LABEL}: {exc.expected}",
                ) from None
        _check("labels", labels, validate.labels)  # the identity's labels count too
        if not name and pod:
            name = f"{namespace}/{pod}" if namespace else pod
        ip_masq = get("ip_masq", bool, "true or false", False)
        ports = get("named_ports", dict, 'a mapping like {"serve-80-tcp": [80, "TCP"]}', {})
        try:
            named_ports = check_named_ports(ports, "named_ports")
        except ConfigError as exc:  # a hostile name or value is not echoed whole
            raise type(exc)(
                str(validate.clip(exc.field)), validate.clip(exc.value), exc.expected
            ) from None
        return cls(
            cid,
            ifname,
            netns,
            vni,
            list(ips) if ips is not None else None,
            ipam,
            gateway,
            [{k: str(v) for k, v in r.items() if k in ("dst", "gw")} for r in routes],
            mtu,
            mac,
            name,
            labels,
            ip_masq,
            namespace,
            pod,
            named_ports,
        )


def add_routes(netns: str, ifname: str, routes: list[dict[str, str]]) -> None:
    with iproute(netns) as ipr:
        idx = link_index(ipr, ifname, netns)
        for r in routes:
            kw: dict[str, Any] = {"dst": r["dst"], "oif": idx}
            if r.get("gw"):
                kw["gateway"] = r["gw"]
            ipr.route("replace", **kw)


def delete_link(netns: str, ifname: str) -> None:
    _delete_link(netns, ifname)


def link_state(netns: str, ifname: str) -> dict[str, Any]:
    """The pod interface as the kernel sees it (CNI CHECK compares it)."""
    if not os.path.exists(netns):
        return {"exists": False}
    with iproute(netns) as ipr:
        try:
            idx = link_index(ipr, ifname, netns)
        except LookupError:
            return {"exists": False}
        link = ipr.get_links(idx)[0]
        addrs = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=idx)
            if a["scope"] == 0
        ]
        return {
            "exists": True,
            "index": idx,
            "mac": link.get_attr("IFLA_ADDRESS"),
            "mtu": link.get_attr("IFLA_MTU"),
            "up": bool(link["flags"] & 1),
            "addresses": addrs,
        }


# -- the pod's announcement ------------------------------------------------------

_ETH_BROADCAST = b"\xff" * 6
_ALL_NODES = ipaddress.IPv6Address("ff02::1")
_ETH_MIN_BYTES = 60  # an Ethernet frame's minimum, FCS excluded: short frames are padded


def announcements(mac: str, ips: Iterable[str]) -> list[bytes]:
    """The frames a pod with ``mac`` sends to announce ``ips`` (see the design notes):
    per IPv4 address an ARP request with sender and target both that address
    (RFC 5227 section 2.3), per IPv6 address (not link-local) a neighbour
    advertisement with the override flag to ff02::1 (RFC 4861 section 7.2.6)."""
    m = mac_to_bytes(mac)
    frames = []
    for text in ips:
        ip = ipaddress.ip_interface(text).ip
        if ip.version == 4:
            arp = bytes.fromhex("0001080006040001") + m + ip.packed + bytes(6) + ip.packed
            frame = _ETH_BROADCAST + m + b"\x08\x06" + arp
        elif not ip.is_link_local:
            dst = _ALL_NODES.packed
            body = bytes([136, 0, 0, 0, 0x20, 0, 0, 0]) + ip.packed + bytes([2, 1]) + m
            pseudo = ip.packed + dst + len(body).to_bytes(4, "big") + bytes([0, 0, 0, 58])
            csum = checksum(pseudo + body)
            body = body[:2] + csum.to_bytes(2, "big") + body[4:]
            head = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2, "big") + bytes([58, 255])
            frame = b"\x33\x33\x00\x00\x00\x01" + m + b"\x86\xdd" + head + ip.packed + dst + body
        else:
            continue
        frames.append(frame.ljust(_ETH_MIN_BYTES, b"\0"))
    return frames


def announce(netns: str, ifname: str, mac: str, ips: Iterable[str]) -> int:
    """Send the pod's announcements (``announcements``) out of its interface
    ``ifname`` in ``netns``, through a packet socket made in that namespace.
    Returns how many frames were sent; OSError when the interface is gone."""
    frames = announcements(mac, ips)
    if not frames:
        return 0
    sock: socket.socket = call_in(netns, socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((ifname, 0))
        for frame in frames:
            sock.send(frame)
    return len(frames)
