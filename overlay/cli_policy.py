"""``overlay policy``: a tenant's network policies, through overlayd or straight
to clusters' stores.

    overlay policy apply -f FILE|DIR|- [--tenant T] [-n NS] [--prune] [--dry-run]
    overlay policy get [--tenant T] [-o yaml|json]
    overlay policy delete (-f FILE | KIND NAME [-n NS]) [--tenant T]
    overlay policy explain SRC DST PORT[/PROTO] [--vni N]
    overlay policy drops [--follow] [--json]
    overlay policy status [--tenant T]
    overlay policy verify [--tenant T]
    overlay policy repair
    overlay policy diff A B [--tenant T]

Design notes.
- **Checked here first, then by the daemon.** ``apply`` and ``delete -f``
  read and check the manifests on this side (``policies.parse``, with the
  file and document named in a refusal) and send the daemon the decoded
  objects, which it checks again before writing anything. A refusal, here
  or there, prints the field and what it takes and exits 2, as bad
  arguments do; a daemon that is not there exits 1.
- **Round trips.** ``get`` prints YAML documents (``---``) or a JSON
  ``List``: either applies again unchanged.
- **Scripts wait on exit statuses.** ``status`` exits 1 while any node is not
  in sync with the store, ``verify`` while any node's tables disagree with
  the policies, ``diff`` when the two sides differ, ``explain`` when the
  tables in force do not do what the policies say, ``repair`` (this node's
  tables set again, then verified) when they still do not.
- **Several clusters.** ``--cluster SPEC`` (repeatable: ``etcd://host:port``
  or an overlayd configuration file with an etcd store) on apply, get,
  status and verify skips the daemon and works on each cluster's store
  directly, through ``overlay.control.clusters`` (imported only then), and
  ``diff A B`` compares two clusters or manifest directories.
- **Light to import.** ``overlay`` imports this module for its parser: the
  policy modules, YAML and the client's work are imported by the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from overlay.daemon.client import ApiError, Client, DaemonUnavailable
from overlay.errors import ConfigError, OverlayError

Row = dict[str, Any]
FOLLOW_INTERVAL_S = 0.5


def _port_proto(text: str) -> tuple[int, str]:
    """``80``, ``80/tcp``, ``53/UDP``, ``0/icmp`` -> (port, protocol as given)."""
    port, _, proto = text.partition("/")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: PORT[/PROTO], a port 0-65535 (80/TCP)")
    return int(port), proto or "TCP"


def add_parser(sub: Any) -> None:
    """``overlay policy`` and its actions, on the ``overlay`` command's subparsers."""
    p = sub.add_parser(
        "policy",
        help="network policies: apply, get, delete, explain, drops, status, verify, diff",
        description="A tenant's network policies (NetworkPolicy, AdminNetworkPolicy, "
        "BaselineAdminNetworkPolicy, Namespace) in the store, which every node programs "
        "into its own ports. Without --tenant: the one tenant of the daemon's networks.",
    )
    acts = p.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")

    def tenant(q: argparse.ArgumentParser) -> None:
        q.add_argument("--tenant", help="the tenant (default: the daemon's networks' one)")

    def clusters(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--cluster",
            action="append",
            default=[],
            metavar="SPEC",
            help="work on this cluster's store instead of the daemon (etcd://host:port"
            "[,host:port] or an overlayd config file with an etcd store); repeatable",
        )

    a = acts.add_parser("apply", help="check manifests and write what differs")
    a.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="a manifest, a directory of them (*.yaml, *.yml, *.json) or - (stdin); repeatable",
    )
    tenant(a)
    a.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="the namespace of NetworkPolicies that name none (default %(default)s)",
    )
    a.add_argument(
        "--prune", action="store_true", help="delete the tenant's records the files do not have"
    )
    a.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")
    clusters(a)

    g = acts.add_parser("get", help="the tenant's policies and namespaces, ready to apply again")
    tenant(g)
    g.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    clusters(g)

    d = acts.add_parser("delete", help="delete the objects a manifest names, or one by name")
    d.add_argument("-f", "--filename", dest="files", action="append", metavar="FILE|DIR|-")
    d.add_argument("target", nargs="*", metavar="KIND NAME", help="e.g. netpol web, anp a, ns x")
    d.add_argument("-n", "--namespace", default="default", help="a NetworkPolicy's namespace")
    tenant(d)

    e = acts.add_parser(
        "explain", help="what the policies and the tables in force decide for a connection"
    )
    e.add_argument("src", help="the address that opens the connection")
    e.add_argument("dst", help="the address it goes to")
    e.add_argument("port", type=_port_proto, metavar="PORT[/PROTO]", help="e.g. 80, 53/udp")
    e.add_argument("--vni", type=int, help="the network (needed when several have the addresses)")

    dr = acts.add_parser("drops", help="policy denies and audited denies the data plane reported")
    dr.add_argument("--follow", action="store_true", help="keep printing new ones")
    dr.add_argument(
        "--json", dest="policy_json", action="store_true", help="one JSON object per line"
    )

    s = acts.add_parser("status", help="per node: in sync with the store (exit 1 when not)")
    tenant(s)
    clusters(s)

    v = acts.add_parser("verify", help="the verification probe's disagreements (exit 1 if any)")
    tenant(v)
    clusters(v)

    acts.add_parser(
        "repair",
        help="set this node's policy tables again, then verify them (exit 1 if still wrong)",
    )

    df = acts.add_parser(
        "diff", help="connections allowed on one side and denied on the other (exit 1 if any)"
    )
    df.add_argument("a", metavar="A", help="a cluster SPEC or a manifest directory")
    df.add_argument("b", metavar="B", help="a cluster SPEC or a manifest directory")
    tenant(df)


# -- reading manifests ---------------------------------------------------------------


def read_manifests(files: Sequence[str], namespace: str) -> list[Any]:
    """The checked documents of every file, directory or ``-`` (stdin), in order;
    ConfigError naming the file, document and field of the first bad object (or
    of an object named twice across the files)."""
    from pathlib import Path

    from overlay.control import policies

    docs = []
    for f in files:
        if f == "-":
            docs += policies.parse(sys.stdin.read().encode(), namespace=namespace)
        else:
            docs += policies.parse(Path(f), namespace=namespace)
    seen: dict[str, str] = {}
    for d in docs:
        name = policies.object_name(d.obj)
        if name in seen:
            raise ConfigError(
                f"{d.where} metadata.name", name, f"a name not already used ({seen[name]})"
            )
        seen[name] = d.where
    return docs


def _jsonable(value: Any) -> Any:
    """A manifest's object as JSON takes it (YAML may decode a date or a set)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _objects(docs: Sequence[Any]) -> list[Any]:
    return [_jsonable(dict(d.raw)) for d in docs]


# -- rendering -------------------------------------------------------------------------


def _applied(r: Row) -> str:
    lines = [
        f"{name} {what}"
        for what in ("created", "configured", "unchanged", "pruned")
        for name in r.get(what) or ()
    ]
    counts = ", ".join(f"{len(r.get(w) or ())} {w}" for w in ("created", "configured", "pruned"))
    tail = " (dry run: nothing written)" if r.get("dry_run") else ""
    lines.append(f"tenant {r.get('tenant')}: {counts}; set hash {r.get('hash')}{tail}")
    return "\n".join(lines)


def _manifests(items: list[Any], output: str, head: str) -> str:
    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2)
    import yaml

    body = yaml.safe_dump_all(items, sort_keys=False, default_flow_style=False)
    return f"# {head}\n" + body.rstrip("\n")


def _status_table(rows: list[Row]) -> str:
    from overlay.cli import table

    def verify(v: Any) -> str | None:
        if not isinstance(v, dict):
            return None
        count = v.get("count", len(v.get("disagreements") or ()))
        return f"ok ({v.get('checked', 0)} checked)" if not count else f"{count} DISAGREE"

    cells = []
    for r in rows:
        h = r.get("hash")
        if h is not None and h != r.get("desired_hash"):
            h = f"{h} (store {r.get('desired_hash')})"
        cells.append(
            {
                **r,
                "revision": r.get("revision"),
                "hash": h,
                "age": None if r.get("age") is None else f"{r['age']:.1f}s",
                "verify": verify(r.get("verify")),
            }
        )
    out = table(
        cells,
        [
            ("node", "NODE"),
            ("tenant", "TENANT"),
            ("in_sync", "IN-SYNC"),
            ("revision", "REVISION"),
            ("behind", "BEHIND"),
            ("age", "AGE"),
            ("hash", "HASH"),
            ("ports", "PORTS"),
            ("verify", "VERIFY"),
        ],
    )
    why = [f"  {r['node']} {r['tenant']}: {r['reason']}" for r in rows if r.get("reason")]
    return out + ("\n" + "\n".join(why) if why else "")


def _verify_lines(summary: Row) -> list[str]:
    lines = []
    for n in summary.get("nodes") or ():
        who = f"{n['node']} {n['tenant']}"
        found = n.get("disagreements") or []
        for d in found:
            lines.append(f"{who}: {d.get('line', d) if isinstance(d, dict) else d}")
        if n.get("count", 0) > len(found):
            lines.append(f"{who}: ... and {n['count'] - len(found)} more")
        if n.get("checked") is None:
            lines.append(f"{who}: not verified yet")
        elif not n.get("count"):
            age = f", {time.time() - float(n['at']):.0f}s ago" if n.get("at") else ""
            lines.append(f"{who}: ok, {n['checked']} checked{age}")
    total = summary.get("disagreements", 0)
    lines.append(f"{total} disagreement{'s' if total != 1 else ''}")
    return lines


def _end(name: str, at: str, d: Row | None) -> str:
    if d is None:
        return f"  {name:<7} at {at}: not a pod (no say)"
    who = _who(d)
    return f"  {name:<7} at {at}: {'allowed' if d['allowed'] else 'denied'} ({who})"


def _who(d: Row) -> str:
    """``networkpolicy x/web rule 0``, ``networkpolicy x/web isolation``, ``default``."""
    if d.get("policy") is None:
        return str(d.get("tier"))
    if d.get("rule") is None:
        return f"{d['tier']} {d['policy']}" + ("" if d["tier"] == "isolation" else " isolation")
    return f"{d['tier']} {d['policy']} rule {d['rule']}"


def _explained(r: Row) -> str:
    head = (
        f"{r['src']} -> {r['dst']} {r['port']}/{r['protocol']} "
        f"(vni {r['vni']}, tenant {r['tenant']}): {'allowed' if r['allowed'] else 'DENIED'}"
    )
    where = f" at {r['direction']}" if r.get("direction") else ""
    lines = [
        head,
        f"  decided by {_who(r)}{where}",
        _end("egress", r["src"], r.get("egress")),
        _end("ingress", r["dst"], r.get("ingress")),
    ]
    dp = r.get("dataplane")
    if dp is None:
        lines.append("data plane: not probed (this overlayd cannot probe its tables)")
        return "\n".join(lines)
    lines.append(f"data plane (tables in force): {'allowed' if dp['allowed'] else 'DENIED'}")
    for name, at in (("egress", r["src"]), ("ingress", r["dst"])):
        end = dp.get(name)
        if end is None:
            lines.append(f"  {name:<7} at {at}: not a pod of this node (not probed)")
        else:
            lines.append(f"  {name:<7} at {at}: {end['verdict']} ({_who(end)})")
    if r.get("agree") is False:
        lines.append(
            "DISAGREEMENT: the tables in force do not do what the policies say "
            "(see overlay policy verify and overlay policy status)"
        )
    return "\n".join(lines)


def _drop_line(e: Row) -> str:
    when = (
        time.strftime("%H:%M:%S", time.localtime(e["time"]))
        + f".{int(e['time'] * 1000) % 1000:03d}"
    )
    port = e.get("port") or {}
    who = e.get("pod") or port.get("mac") or "?"
    decided = _who({"tier": e["tier"], "policy": e.get("policy"), "rule": e.get("rule")})
    ports = e.get("protocol") in ("TCP", "UDP", "SCTP")
    src = f"{e['src']}:{e['sport']}" if ports else e["src"]
    dst = f"{e['dst']}:{e['dport']}" if ports else e["dst"]
    return (
        f"{when} {e['verdict']:<5} {e['direction']:<7} vni {e['vni']} {who} "
        f"({port.get('ifname', '-')}) {decided} {e.get('protocol')} {src} -> {dst}"
    )


# -- the actions -----------------------------------------------------------------------


def _clusters_module() -> Any:
    from overlay.control import clusters

    return clusters


def _need_tenant(args: argparse.Namespace) -> str:
    if not args.tenant:
        raise _Usage("--cluster needs --tenant (a cluster's store holds every tenant's policies)")
    return str(args.tenant)


class _Usage(Exception):
    """A bad combination of arguments: exit 2, as argparse does."""


async def _with_store(spec: str, work: Callable[[Any], Any]) -> Any:
    store = await _clusters_module().open_store(spec)
    try:
        return await work(store)
    finally:
        await store.close()


def _apply(args: argparse.Namespace, client: Client) -> int:
    docs = read_manifests(args.files, args.namespace)
    if args.cluster:
        return _apply_clusters(args, docs)
    r = client.policy_apply(
        objects=_objects(docs),
        tenant=args.tenant,
        namespace=args.namespace,
        prune=args.prune,
        dry_run=args.dry_run,
    )
    print(json.dumps(r, indent=2, sort_keys=True) if args.json else _applied(r))
    return 0


def _apply_clusters(args: argparse.Namespace, docs: list[Any]) -> int:
    from overlay.control import policies

    tenant = policies.check_tenant(_need_tenant(args))
    if args.dry_run:

        async def dry(store: Any) -> Row:
            p = policies.plan(await policies.read(store, tenant), docs, prune=args.prune)
            return {**p.result, "tenant": tenant, "hash": p.hash, "dry_run": True}

        for spec in args.cluster:
            r = asyncio.run(_with_store(spec, dry))
            print(f"cluster {spec}:\n" + _applied(r))
        return 0
    clusters = _clusters_module()
    results = asyncio.run(clusters.apply_clusters(args.cluster, tenant, docs, args.prune))
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True, default=str))
    else:
        for r in results:
            names = [
                f"  {name} {what}"
                for what, got in (r.get("result") or {}).items()
                for name in got
                if what != "unchanged"
            ]
            if names:
                print(f"{r['cluster']}:\n" + "\n".join(names))
        print(clusters.format_drift(results).rstrip("\n"))
    # A cluster not reached, or one whose records or nodes differ from the set after
    # apply_clusters' wait: scripts see it in the exit status.
    return 1 if any("error" in r or r.get("drift") for r in results) else 0


def _get(args: argparse.Namespace, client: Client) -> int:
    if args.cluster:
        from overlay.control import policies

        tenant = policies.check_tenant(_need_tenant(args))

        async def read(store: Any) -> Any:
            return await policies.read(store, tenant)

        for spec in args.cluster:
            ts = asyncio.run(_with_store(spec, read))
            head = f"cluster {spec}, tenant {tenant}: hash {ts.hash}, revision {ts.newest}"
            print(_manifests(ts.manifests(), args.output, head))
            for k, why in sorted(ts.refused.items()):
                print(f"# refused: {k.decode(errors='replace')}: {why}", file=sys.stderr)
        return 0
    r = client.policy_get(args.tenant)
    if args.json:
        print(json.dumps(r, indent=2, sort_keys=True))
        return 0
    head = f"tenant {r['tenant']}: hash {r['hash']}, revision {r['revision']}"
    print(_manifests(r["items"], args.output, head))
    for ref in r.get("refused") or ():
        print(f"overlay policy get: refused record {ref['key']}: {ref['why']}", file=sys.stderr)
    return 0


def _delete(args: argparse.Namespace, client: Client) -> int:
    if args.files and args.target:
        raise _Usage("either -f FILE or KIND NAME, not both")
    if args.files:
        docs = read_manifests(args.files, args.namespace)
        r = client.policy_delete(objects=_objects(docs), tenant=args.tenant)
    elif len(args.target) == 2:
        kind, name = args.target
        r = client.policy_delete(kind, name, args.namespace, tenant=args.tenant)
    else:
        raise _Usage("name what to delete: -f FILE, or KIND NAME (e.g. netpol web -n x)")
    if args.json:
        print(json.dumps(r, indent=2, sort_keys=True))
    else:
        print("\n".join(f"{name} deleted" for name in r["deleted"]))
        print(f"tenant {r['tenant']}: set hash {r['hash']}")
    return 0


def _explain(args: argparse.Namespace, client: Client) -> int:
    port, protocol = args.port
    r = client.policy_explain(args.src, args.dst, port, protocol, args.vni)
    print(json.dumps(r, indent=2, sort_keys=True) if args.json else _explained(r))
    return 1 if r.get("agree") is False else 0


def _drops(args: argparse.Namespace, client: Client) -> int:
    lines = args.json or args.policy_json
    since = 0
    try:
        while True:
            r = client.policy_drops(since)
            if r.get("missed") and since:
                print(
                    f"overlay policy drops: {r['missed']} reports were overwritten before "
                    "they were read",
                    file=sys.stderr,
                )
            for e in r["events"]:
                print(json.dumps(e, sort_keys=True) if lines else _drop_line(e), flush=True)
            if not args.follow:
                if not r["events"] and not lines:
                    print("(no policy drops reported)")
                return 0
            since = int(r["next"])
            time.sleep(FOLLOW_INTERVAL_S)
    except KeyboardInterrupt:
        return 0


def _status(args: argparse.Namespace, client: Client) -> int:
    if args.cluster:
        from overlay.control import policies

        all_rows: list[Row] = []
        for spec in args.cluster:

            async def rows(store: Any) -> list[Row]:
                return await policies.status(store, args.tenant)

            got = asyncio.run(_with_store(spec, rows))
            all_rows += got
            if not args.json:
                print(f"cluster {spec}:\n" + _status_table(got))
        if args.json:
            print(json.dumps(all_rows, indent=2, sort_keys=True))
        return 0 if all(r.get("in_sync") for r in all_rows) else 1
    r = client.policy_status(args.tenant)
    print(json.dumps(r, indent=2, sort_keys=True) if args.json else _status_table(r["rows"]))
    return 0 if all(row.get("in_sync") for row in r["rows"]) else 1


def _verify(args: argparse.Namespace, client: Client) -> int:
    if args.cluster:
        from overlay.control import policies
        from overlay.daemon.policy import verify_summary

        total = 0
        for spec in args.cluster:

            async def rows(store: Any) -> list[Row]:
                return await policies.status(store, args.tenant)

            summary = verify_summary(asyncio.run(_with_store(spec, rows)))
            total += summary["disagreements"]
            if args.json:
                print(json.dumps({"cluster": spec, **summary}, sort_keys=True))
            else:
                print(f"cluster {spec}:\n" + "\n".join(_verify_lines(summary)))
        return 1 if total else 0
    r = client.policy_verify(args.tenant)
    print(json.dumps(r, indent=2, sort_keys=True) if args.json else "\n".join(_verify_lines(r)))
    return 1 if r.get("disagreements") else 0


def _diff(args: argparse.Namespace, client: Client) -> int:
    from overlay.policy import format_report

    tenant = args.tenant
    if not tenant:
        if not (os.path.exists(args.a) and os.path.exists(args.b)):
            raise _Usage("--tenant is needed to read a cluster's policies")
        tenant = "default"  # two manifest directories: no store to read a tenant from
    clusters = _clusters_module()
    diffs = asyncio.run(clusters.diff(args.a, args.b, tenant))
    if args.json:
        print(json.dumps([d.line() for d in diffs], indent=2))
    else:
        print(format_report(diffs) or "no differences", end="" if diffs else "\n")
    return 1 if diffs else 0


def _repair(args: argparse.Namespace, client: Client) -> int:
    r = client.policy_repair()
    if args.json:
        print(json.dumps(r, indent=2, sort_keys=True))
    bad = 0
    lines = [f"{r.get('node')}: {r.get('tables', 0)} policy tables set again"]
    for tenant, v in sorted((r.get("verify") or {}).items()):
        count = int(v.get("count", 0))
        bad += count
        lines.append(f"  {tenant}: {v.get('checked', 0)} checked, {count} disagreements")
        lines += [f"    {d.get('line')}" for d in v.get("disagreements") or ()]
    if not args.json:
        print("\n".join(lines))
    return 1 if bad else 0


ACTIONS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "apply": _apply,
    "get": _get,
    "delete": _delete,
    "explain": _explain,
    "drops": _drops,
    "status": _status,
    "verify": _verify,
    "repair": _repair,
    "diff": _diff,
}


def run(args: argparse.Namespace) -> int:
    """``overlay policy ACTION``: the action's exit status (see the module's notes)."""
    from overlay.control.store import StoreUnavailable

    name = f"overlay policy {args.policy_cmd}"
    try:
        return ACTIONS[args.policy_cmd](args, Client(args.socket))
    except _Usage as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except DaemonUnavailable as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        if exc.kind == "config":
            _refused(name, exc.field, exc.value, exc.expected or exc.message)
            return 2
        print(f"{name}: {exc.message}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        _refused(name, exc.field, exc.value, exc.expected)
        return 2
    except ImportError as exc:
        print(f"{name}: this installation cannot reach clusters directly ({exc})", file=sys.stderr)
        return 1
    except (StoreUnavailable, OverlayError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1


def _refused(name: str, field: Any, value: Any, expected: Any) -> None:
    """A refusal, with the field at fault and what it takes; nothing was written."""
    if field is None:
        print(f"{name}: refused (nothing was written): {expected}", file=sys.stderr)
        return
    print(
        f"{name}: refused (nothing was written): {field} = {value!r}\n  expected: {expected}",
        file=sys.stderr,
    )


__all__ = ["ACTIONS", "add_parser", "read_manifests", "run"]
