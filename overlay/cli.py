"""The ``overlay`` command.

``overlay demo`` builds a two-node, two-tenant overlay in namespaces, shows it
working and removes it. The daemon's subcommands (status, networks, ...) join
this dispatcher when overlayd lands.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="overlay", description="userspace VXLAN/Geneve overlay")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser(
        "demo", help="build a two-node, two-tenant overlay in namespaces and show it"
    )
    d.add_argument(
        "--encap",
        choices=["vxlan", "geneve"],
        default="vxlan",
        help="encapsulation (default vxlan)",
    )
    d.add_argument(
        "--bytes",
        type=int,
        default=50_000_000,
        dest="nbytes",
        help="size of the TCP transfer, bytes (default 50000000)",
    )
    return p


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
    return 2


if __name__ == "__main__":
    sys.exit(main())
