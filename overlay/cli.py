"""The ``overlay`` command.

``overlay demo`` builds a two-node, two-tenant overlay in namespaces, shows it
working and removes it (no daemon needed). The other subcommands ask a running
overlayd over its Unix socket and print a table, or the API's JSON with
``--json`` (for scripts). When no daemon answers, they say so and how to fix
it, and exit with status 1; bad arguments exit with 2. ``overlay policy`` (a
tenant's network policies: apply, get, status, ...) lives in ``cli_policy``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from overlay import cli_policy
from overlay.cni import install
from overlay.daemon.client import DEFAULT_SOCKET, ApiError, Client, DaemonUnavailable

Row = dict[str, Any]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="overlay", description="userspace VXLAN/Geneve overlay")
    p.add_argument(
        "--socket",
        default=os.environ.get("OVERLAY_SOCKET", DEFAULT_SOCKET),
        help=f"overlayd's API socket (default $OVERLAY_SOCKET or {DEFAULT_SOCKET})",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("status", help="the node, its store and readiness")
    sub.add_parser("networks", help="the networks this node hosts")
    e = sub.add_parser("endpoints", help="pods of the hosted networks (local and remote)")
    e.add_argument("--vni", type=int, help="only this network")
    sub.add_parser("peers", help="other nodes, their networks and probe results")
    f = sub.add_parser("fdb", help="the data plane's forwarding table")
    f.add_argument("--vni", type=int, help="only this network")
    c = sub.add_parser("counters", help="data-plane counters and drops by reason")
    c.add_argument("--all", action="store_true", help="include counters that are zero")
    sub.add_parser("health", help="readiness and reachability of every peer")
    sub.add_parser("reload", help="apply the daemon's configuration file again")
    cli_policy.add_parser(sub)  # overlay policy ...: its own module
    i = sub.add_parser(
        "install-cni",
        help="write the overlay-cni plugin into a runtime's CNI plugin directory",
        description="Write an overlay-cni launcher into DIR (a runtime's CNI_PATH). It runs "
        "this installation's plugin with python -I -S: isolated from PYTHON* variables and "
        "without scanning site-packages, so it starts faster than the console script.",
    )
    i.add_argument(
        "--dir",
        default=install.DEFAULT_BIN_DIR,
        help="the plugin directory (default %(default)s); it must exist",
    )
    i.add_argument(
        "--name", default=install.PLUGIN_NAME, help="the plugin's file name (the conf's type)"
    )
    d = sub.add_parser(
        "demo", help="build a two-node, two-tenant overlay in namespaces and show it"
    )
    d.add_argument("--encap", choices=["vxlan", "geneve"], default="vxlan")
    d.add_argument(
        "--bytes",
        type=int,
        default=50_000_000,
        dest="nbytes",
        help="size of the TCP transfer, bytes (default 50000000)",
    )
    return p


def table(rows: Sequence[Row], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as an aligned text table; ``columns`` are (key, heading)."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, list | tuple):
            return ",".join(str(x) for x in v) or "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _gateway_cell(gw: Row | None) -> str | None:
    """A network's gateway in one cell: "ovg100 10.244.3.1/16 masq", or why it is missing."""
    if not gw:
        return None
    if "error" in gw:
        return f"failed: {gw['error']}"
    where = " isolated" if gw.get("placement") == "isolated" else ""
    return f"{gw['ifname']} {gw['address']}{where}" + (" masq" if gw.get("masquerade") else "")


def _uplink_cell(net: Row) -> str | None:
    """An underlay network's way out in the gateway's cell: "uplink ul0 router
    198.18.1.1", or why the uplink is missing."""
    up = net.get("uplink")
    if not up:
        return None
    if "error" in up:
        return f"uplink failed: {up['error']}"
    router = net.get("router")
    return f"uplink {up['ifname']}" + (f" router {router}" if router else "")


def _status(s: Row) -> str:
    store = s["store"]
    lines = [
        f"node        {s['node']} (overlayd {s['version']}, pid {s['pid']}, "
        f"up {s['uptime_s']:.0f}s)",
        f"ready       {'yes' if s['ready'] else 'no (' + (s.get('reason') or 'starting') + ')'}",
        f"underlay    {s['underlay']} udp/{s['port']} {s['encap']}, mtu {s['mtu']}",
        f"store       {store['kind']} {' '.join(store['endpoints'])}".rstrip()
        + f" — {'connected' if store['connected'] else 'NOT connected'}",
        *([f"store error {store['error']}"] if store.get("error") else []),
        *(
            [f"rejected    {store['rejected_records']} store records (see the log)"]
            if store.get("rejected_records")
            else []
        ),
        f"networks    {s['networks']}",
        f"pods        {s['attachments']} attached here, {s['endpoints']} endpoints known",
        f"peers       {s['peers']} ({s['peers_reachable']} reachable)",
        *_bgp_lines(s.get("bgp")),
    ]
    return "\n".join(lines)


def _bgp_lines(b: Row | None) -> list[str]:
    """The BGP speaker in ``overlay status``: one line, then one per router."""
    if not b:
        return []
    speaker = f"pid {b['pid']}" if b.get("running") else "NOT running"
    announced = ", ".join(b.get("announced") or []) or "nothing"
    lines = [
        f"bgp         as {b['asn']}, router id {b.get('router_id') or '?'}, {speaker}, "
        f"announcing {announced}",
        *([f"bgp error   {b['error']}"] if b.get("error") else []),
    ]
    for p in b.get("peers") or []:
        learned = [r["net"] for r in b.get("learned") or [] if r.get("peer") == p["address"]]
        lines.append(
            f"  router    {p['address']} as {p['asn']}: {p['state']}"
            + (f", {len(learned)} learned ({', '.join(learned)})" if learned else "")
            + (f" — {p['last_error']}" if p.get("last_error") and not p.get("up") else "")
        )
    return lines


def _health(h: Row) -> str:
    head = (
        f"ready: {'yes' if h['ready'] else 'no'}   "
        f"store: {'connected' if h['store_connected'] else 'NOT connected'}   "
        f"probes: {'on' if h['probing'] else 'off'}"
    )
    return head + "\n" + _peers(h["peers"])


def _peers(rows: list[Row]) -> str:
    """The peers' table; then, for routed and auto networks, the path to each peer's
    subnet and why (direct, tunnel or needs-bgp)."""
    out = table(
        [{**r, "paths": [f"{q['vni']}:{q['path']}" for q in r.get("paths") or ()]} for r in rows],
        [
            ("name", "PEER"),
            ("underlay", "UNDERLAY"),
            ("networks", "NETWORKS"),
            ("paths", "PATHS"),
            ("reachable", "REACHABLE"),
            ("rtt_ms", "RTT_MS"),
            ("rtt_avg_ms", "AVG_MS"),
            ("last_reply_age_s", "LAST_REPLY_S"),
        ],
    )
    why = [
        f"  {r['name']} vni {q['vni']} {q['subnet']}: {q['path']} ({q['why']})"
        for r in rows
        for q in r.get("paths") or ()
    ]
    return out + ("\npaths:\n" + "\n".join(why) if why else "")


def _counters(c: Row, show_all: bool) -> str:
    out = []
    node = {k: v for k, v in c.get("node", {}).items() if show_all or v}
    out.append("node:")
    out += [f"  {k:<28} {v}" for k, v in sorted(node.items())] or ["  (all zero)"]
    drops = {k: v for k, v in c.get("drops", {}).items() if show_all or v}
    out.append("drops:")
    out += [f"  {k:<28} {v}" for k, v in sorted(drops.items())] or ["  (none)"]
    nets = c.get("networks", {})
    if nets:
        keys = sorted({k for v in nets.values() for k in v})
        rows = [{"vni": vni, **v} for vni, v in sorted(nets.items(), key=lambda x: int(x[0]))]
        out.append("networks:")
        out.append(table(rows, [("vni", "VNI")] + [(k, k.upper()) for k in keys]))
    return "\n".join(out)


VIEWS: dict[str, tuple[Callable[[Client, argparse.Namespace], Any], Callable[..., str]]] = {
    "status": (lambda c, a: c.status(), _status),
    "networks": (
        lambda c, a: c.networks(),
        lambda rows: table(
            [{**r, "gateway": _gateway_cell(r.get("gateway")) or _uplink_cell(r)} for r in rows],
            [
                ("vni", "VNI"),
                ("tenant", "TENANT"),
                ("cidr", "CIDR"),
                ("mode", "MODE"),
                ("encap", "ENCAP"),
                ("subnet", "NODE_SUBNET"),
                ("pod_mtu", "POD_MTU"),
                ("gateway", "GATEWAY"),
                ("local_endpoints", "LOCAL"),
                ("remote_endpoints", "REMOTE"),
                ("vteps", "VTEPS"),
            ],
        ),
    ),
    "endpoints": (
        lambda c, a: c.endpoints(a.vni),
        lambda rows: table(
            rows,
            [
                ("vni", "VNI"),
                ("mac", "MAC"),
                ("ips", "IPS"),
                ("node", "NODE"),
                ("name", "NAME"),
                ("container_id", "CONTAINER"),
                ("ifname", "IFNAME"),
            ],
        ),
    ),
    "peers": (lambda c, a: c.peers(), _peers),
    "fdb": (
        lambda c, a: c.fdb(a.vni),
        lambda rows: table(
            rows,
            [
                ("vni", "VNI"),
                ("mac", "MAC"),
                ("kind", "KIND"),
                ("vtep", "VTEP"),
                ("port_id", "PORT"),
                ("age_s", "AGE_S"),
            ],
        ),
    ),
    "health": (lambda c, a: c.health(), _health),
    "reload": (
        lambda c, a: c.reload(),
        lambda r: "\n".join(f"{k}: {', '.join(map(str, v)) or '-'}" for k, v in r.items()),
    ),
}


def _install_cni(bin_dir: str, name: str) -> int:
    try:
        path = install.install(bin_dir, name)
    except FileNotFoundError:
        print(
            f"overlay install-cni: --dir {bin_dir}: no such directory; create it, or pass "
            "the directory your runtime's CNI_PATH names (e.g. --dir /usr/lib/cni)",
            file=sys.stderr,
        )
        return 2
    except (ValueError, ModuleNotFoundError) as exc:
        print(f"overlay install-cni: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(
            f"overlay install-cni: {exc.filename or bin_dir}: permission denied; run as root",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "demo":
        from overlay import demo
        from overlay.node import Encap

        if args.nbytes <= 0:
            print("overlay demo: --bytes must be a positive number of bytes", file=sys.stderr)
            return 2
        encap = Encap[args.encap.upper()]
        rc = demo.run(encap, args.nbytes)
        return rc or demo.run_discovery(encap)
    if args.cmd == "install-cni":
        return _install_cni(args.dir, args.name)
    if args.cmd == "policy":
        return cli_policy.run(args)
    client = Client(args.socket)
    try:
        if args.cmd == "counters":
            data: Any = client.counters()
            text = _counters(data, args.all) if not args.json else ""
        else:
            fetch, render = VIEWS[args.cmd]
            data = fetch(client, args)
            text = render(data) if not args.json else ""
    except DaemonUnavailable as exc:
        print(f"overlay {args.cmd}: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"overlay {args.cmd}: {exc.message}{where}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
