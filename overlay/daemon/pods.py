"""Pods as overlayd sees them: the attach request (CNI ADD's body), and what the
daemon does or asks inside a pod's network namespace (routes, the interface as
the kernel sees it, removing one) — netlink through pyroute2, from a thread.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any

from overlay.cni import validate
from overlay.daemon.config import get_key
from overlay.errors import ConfigError
from overlay.nsenter import iproute, link_index, netns_path


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
    ips: list[str] | None = None  # given by a delegated IPAM; None: the node allocates
    gateway: str = ""
    routes: list[dict[str, str]] = dataclasses.field(default_factory=list)
    mtu: int = 0  # 0: the node's underlay MTU less the encapsulation overhead
    mac: str | None = None
    name: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

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
        labels = get("labels", dict, "a mapping of strings to strings", {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ConfigError("labels", validate.clip(labels), "a mapping of strings to strings")
        _check("labels", labels, validate.labels)
        return cls(
            cid,
            ifname,
            netns,
            vni,
            list(ips) if ips is not None else None,
            gateway,
            [{k: str(v) for k, v in r.items() if k in ("dst", "gw")} for r in routes],
            mtu,
            mac,
            name,
            dict(labels),
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
    if not os.path.exists(netns):
        return
    with iproute(netns) as ipr:
        try:
            idx = link_index(ipr, ifname, netns)
        except LookupError:
            return  # gone already
        ipr.link("del", index=idx)


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
