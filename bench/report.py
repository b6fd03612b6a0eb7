"""Summarise a pytest-benchmark JSON file of bench/ into a table and a JSON summary.

    python bench/report.py bench/results/bench.json [--out bench/results/summary.json]

End-to-end tests carry their figures in ``extra_info`` as written by
``overlay.testing.throughput.compare``: ``sides`` (min/median/max per side),
``baseline``, ``primary``, ``ratio`` (primary vs baseline), ``ratios`` (every
``A_vs_B``) and ``ratio_meaning``; ratios are oriented so that > 1 means the
first side is better, whether higher (Gbit/s) or lower (ms, CPU s/GB) is
better. Older files with only ``overlay``/``kernel``/``ratio`` are read too.
Codec tests carry ns per packet. CNI latency tests (``bench/test_cni_latency.py``)
carry ``cni_latency`` ({side: {verb: {n, p50, p90, max[, all]}}} in ms) and
``ratios`` of overlay ms over bridge ms (there > 1 means overlay is slower).
Policy distribution (``bench/test_policy_distribution.py``) carries
``policy_distribution``: per store, nodes and policies, the ``first`` apply
and the ``change`` trials, each with p50/p99/max in ms and the ``baseline``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

_E2E_KEYS = (
    "metric",
    "unit",
    "rounds",
    "higher_is_better",
    "primary",
    "baseline",
    "sides",
    "overlay",
    "kernel",
    "ratio",
    "ratio_meaning",
    "ratios",
    "node_options",
)


def _end_to_end(info: dict[str, Any]) -> dict[str, Any]:
    entry = {k: info[k] for k in _E2E_KEYS if k in info}
    if "sides" not in entry:  # the older shape: overlay vs kernel only
        entry["sides"] = {k: info[k] for k in ("overlay", "kernel") if k in info}
        entry.setdefault("primary", "overlay")
        entry.setdefault("baseline", "kernel")
        entry.setdefault("ratios", {"overlay_vs_kernel": info["ratio"]})
    return entry


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": data.get("machine_info", {}).get("node"),
        "datetime": data.get("datetime"),
        "end_to_end": {},
        "codec": {},
        "convergence": {},
        "cni_latency": {},
        "control_scale": {},
        "policy_distribution": {},
    }
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "policy_distribution" in info:  # bench/test_policy_distribution.py
            out["policy_distribution"][b["name"]] = info["policy_distribution"]
        elif "control_scale" in info:  # bench/test_control_scale.py
            out["control_scale"][b["name"]] = info["control_scale"]
        elif "cni_latency" in info:
            out["cni_latency"][b["name"]] = {
                k: info[k]
                for k in ("test", "pods", "unit", "baseline", "ratios", "ratio_meaning")
                if k in info
            } | {"sides": info["cni_latency"]}
        elif "ratio" in info:
            out["end_to_end"][b["name"]] = _end_to_end(info)
        elif "per_node_ms" in info:
            out["convergence"][b["name"]] = {
                k: info[k]
                for k in (
                    "store",
                    "nodes",
                    "trials",
                    "per_node_ms",
                    "all_nodes_ms",
                    "store_keys_per_node",
                    "store_bytes_per_node",
                )
            }
        elif "ns_per_packet" in info:
            out["codec"][b["name"]] = {
                "ns_per_packet": info["ns_per_packet"],
                "packets_per_call": info.get("packets_per_call"),
            }
    return out


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}"


def table(summary: dict[str, Any]) -> str:
    lines = []
    e2e = summary["end_to_end"]
    if e2e:
        labels = {name: f"{name} ({r.get('rounds', '?')} rounds)" for name, r in e2e.items()}
        w = max(len("end to end"), *(len(x) for x in labels.values()))
        lines.append(
            f"{'end to end':{w}} {'unit':>9} {'side':>12} {'min':>9} {'median':>9} {'max':>9}"
            f" {'vs base':>8}"
        )
        for name, r in e2e.items():
            base, ratios = r["baseline"], r.get("ratios", {})
            label, unit = labels[name], r["unit"]
            for side, s in r["sides"].items():
                vs = "base" if side == base else _num(ratios.get(f"{side}_vs_{base}"))
                lines.append(
                    f"{label:{w}} {unit:>9} {side:>12} {_num(s['min']):>9}"
                    f" {_num(s['median']):>9} {_num(s['max']):>9} {vs:>8}"
                )
                label = unit = ""
        lines.append("vs base: ratio of medians against the baseline side; > 1: better than it.")
    if summary["codec"]:
        lines.append("")
        lines.append(f"{'codec':52} {'ns/packet':>10}")
        for name, r in summary["codec"].items():
            lines.append(f"{name:52} {r['ns_per_packet']:10.1f}")
    if summary.get("convergence"):
        lines.append("")
        lines.append(
            f"{'convergence':8} {'nodes':>6} {'per-node p50':>13} {'p99 ms':>8}"
            f" {'all-nodes p50':>14} {'p99 ms':>8} {'keys/node':>10} {'bytes/node':>11}"
        )
        for r in summary["convergence"].values():
            lines.append(
                f"{r['store']:11} {r['nodes']:>6} {_num(r['per_node_ms']['p50']):>13}"
                f" {_num(r['per_node_ms']['p99']):>8} {_num(r['all_nodes_ms']['p50']):>14}"
                f" {_num(r['all_nodes_ms']['p99']):>8} {_num(r['store_keys_per_node']):>10}"
                f" {_num(r['store_bytes_per_node']):>11}"
            )
    for r in summary.get("control_scale", {}).values():
        if lines:
            lines.append("")
        o, k = r["overlay"], r["kernel"]
        lines.append(
            f"{'programming ' + str(r['remotes']) + ' remotes':32} {'overlay':>9} {'kernel':>9}"
        )
        lines.append(
            f"{'all, from the store (s)':32} {_num(o['program_s']):>9} {_num(k['program_s']):>9}"
        )
        lines.append(f"{'all, embedding API (s)':32} {_num(o['api_program_s']):>9} {'':>9}")
        for what in ("add_p50", "add_p99", "del_p50"):
            lines.append(
                f"{'one more, ' + what + ' (ms)':32} {_num(o['change_ms'][what]):>9}"
                f" {_num(k['change_ms'][what]):>9}"
            )
        lines.append(f"{'agent reconcile p50 (ms)':32} {_num(o['change_ms']['reconcile_p50']):>9}")
        rss = o["rss_mb"]
        lines.append(
            f"RSS MB: {_num(rss['start'])} at start, {_num(rss['store_filled'])} with the store"
            f" filled, {_num(rss['programmed'])} programmed; kernel: {r['baseline']}."
        )
    if summary.get("policy_distribution"):
        if lines:
            lines.append("")
        lines.append(
            f"{'policy distribution ms':22} {'nodes':>5} {'pols':>5} {'first':>8} {'base':>7}"
            f" {'1st node':>8} {'node p50':>8} {'p99':>7} {'all p50':>8} {'p99':>7}"
            f" {'busy':>6} {'base':>6} {'base all':>8} {'swap x':>6}"
        )
        for r in summary["policy_distribution"].values():
            f, c = r["first"], r["change"]
            fb, cb = f.get("baseline", {}), c.get("baseline", {})
            lines.append(
                f"{r['store']:22} {r['nodes']:>5} {r['policies']:>5}"
                f" {_num(f['all_nodes_ms']['p50']):>8}"
                f" {_num(fb.get('all_nodes_ms', {}).get('p50')):>7}"
                f" {_num(c.get('first_node_ms', {}).get('p50')):>8}"
                f" {_num(c['per_node_ms']['p50']):>8} {_num(c['per_node_ms']['p99']):>7}"
                f" {_num(c['all_nodes_ms']['p50']):>8} {_num(c['all_nodes_ms']['p99']):>7}"
                f" {_num(c['agent_busy_ms']['p50']):>6}"
                f" {_num(cb.get('per_node_ms', {}).get('p50')):>6}"
                f" {_num(cb.get('all_nodes_ms', {}).get('p50')):>8}"
                f" {f['swap_mismatch'] + c['swap_mismatch']:>6}"
            )
        lines.append(
            "first: the whole set applied, until the last node enforces it; then one policy"
            " changed: delay of the 1st node, per node (p50, p99) and of the last (all), from"
            " apply's return;"
        )
        lines.append(
            "busy: an agent's own work on the change (p50); base: Network.apply_policies on"
            " every node in turn (first: all; change: per node, all); swap x: nodes whose"
            " tables changed not as the change selects."
        )
    if summary.get("cni_latency"):
        if lines:
            lines.append("")
        lines.append(
            f"{'cni latency ms':24} {'side':>8} {'verb':>4} {'n':>3} {'p50':>7} {'p90':>7}"
            f" {'max':>7} {'all':>7} {'p50 x':>6} {'VERSION':>8}"
        )
        for name, r in summary["cni_latency"].items():
            label = f"{r.get('test', name)} ({r.get('pods', '?')} pods)"
            base, ratios = r.get("baseline"), r.get("ratios", {})
            for side, verbs in r["sides"].items():
                for verb in ("add", "del"):
                    v = verbs.get(verb)
                    if v is None:
                        continue
                    x = "base" if side == base else _num(ratios.get(f"{verb}_p50"))
                    floor = _num(verbs.get("version_p50")) if verb == "add" else ""
                    lines.append(
                        f"{label:24} {side:>8} {verb:>4} {v['n']:>3} {_num(v['p50']):>7}"
                        f" {_num(v['p90']):>7} {_num(v['max']):>7} {_num(v.get('all')):>7}"
                        f" {x:>6} {floor:>8}"
                    )
                    label = ""
            for side, verbs in r["sides"].items():
                if verbs.get("version_console_p50") is not None:
                    lines.append(
                        f"{'':24} {side} VERSION as pip's console script:"
                        f" {_num(verbs['version_console_p50'])} ms"
                        " (as `overlay install-cni` writes it:"
                        f" {_num(verbs.get('version_p50'))} ms)"
                    )
        lines.append(
            "all: first start to last exit of processes started at once; p50 x: p50 over the"
            " baseline's (> 1: slower); VERSION: a plugin process that does nothing."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("json", type=Path)
    p.add_argument("--out", type=Path, help="write the summary JSON here")
    args = p.parse_args(argv)
    summary = summarise(json.loads(args.json.read_text()))
    print(table(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
