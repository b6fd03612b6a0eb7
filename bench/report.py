"""Summarise a pytest-benchmark JSON file of bench/ into a table and a JSON summary.

    python bench/report.py bench/results/bench.json [--out bench/results/summary.json]

End-to-end tests carry their figures in ``extra_info`` (overlay and kernel
min/median/max and the ratio of medians); codec tests carry ns per packet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": data.get("machine_info", {}).get("node"),
        "datetime": data.get("datetime"),
        "end_to_end": {},
        "codec": {},
    }
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "ratio" in info:
            out["end_to_end"][b["name"]] = {
                k: info[k]
                for k in ("unit", "rounds", "overlay", "kernel", "ratio", "ratio_meaning")
            }
        elif "ns_per_packet" in info:
            out["codec"][b["name"]] = {
                "ns_per_packet": info["ns_per_packet"],
                "packets_per_call": info.get("packets_per_call"),
            }
    return out


def table(summary: dict[str, Any]) -> str:
    lines = []
    if summary["end_to_end"]:
        lines.append(
            f"{'end to end':44} {'unit':>9} {'overlay min/med/max':>28} "
            f"{'kernel min/med/max':>28} {'ratio':>6}"
        )
        for name, r in summary["end_to_end"].items():
            o, k = r["overlay"], r["kernel"]
            fmt = "{:.3g}/{:.3g}/{:.3g}"
            lines.append(
                f"{name:44} {r['unit']:>9} "
                f"{fmt.format(o['min'], o['median'], o['max']):>28} "
                f"{fmt.format(k['min'], k['median'], k['max']):>28} {r['ratio']:6.2f}"
            )
    if summary["codec"]:
        lines.append("")
        lines.append(f"{'codec':52} {'ns/packet':>10}")
        for name, r in summary["codec"].items():
            lines.append(f"{name:52} {r['ns_per_packet']:10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
