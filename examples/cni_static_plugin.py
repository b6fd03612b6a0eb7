#!/usr/bin/env python3
"""static-ipam: a CNI IPAM plugin that hands out the addresses written in its configuration.

An example of a plugin built on ``overlay.cni.spec``: ``run`` parses the
environment and stdin, dispatches on CNI_COMMAND and prints the result or the
error JSON; each verb is a function of ``(env, conf)``; every input problem is
a ``CniError`` with the spec's code and a message naming the key and the fix.
It speaks CNI 1.1.0 (STATUS and GC too: with nothing held, both succeed).

    "ipam": {"type": "static-ipam",
             "addresses": [{"address": "10.244.9.5/24", "gateway": "10.244.9.1"}],
             "routes": [{"dst": "0.0.0.0/0"}]}
"""

from __future__ import annotations

import sys

from overlay.cni.spec import INVALID_CONFIG, CniEnv, CniError, IPConfig, NetConf, Result, Route, run

KEYS = {"type", "addresses", "routes"}


def load(conf: NetConf) -> Result:
    """The ipam section as the result to hand out; code 7 naming what is wrong."""
    unknown = sorted(set(conf.ipam) - KEYS)
    if unknown:
        raise CniError(INVALID_CONFIG, f"ipam.{unknown[0]}: unknown; use {', '.join(sorted(KEYS))}")
    addresses, routes = conf.ipam.get("addresses"), conf.ipam.get("routes", [])
    if not isinstance(addresses, list) or not addresses:
        raise CniError(
            INVALID_CONFIG, 'ipam.addresses: list them, e.g. [{"address": "10.244.9.5/24"}]'
        )
    try:
        ips = [IPConfig(a["address"], a.get("gateway", "")) for a in addresses]
        return Result(
            ips=ips, routes=[Route(r["dst"], r.get("gw", "")) for r in routes], dns=conf.dns
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CniError(
            INVALID_CONFIG, f"ipam: {exc!r} in addresses or routes: see the example"
        ) from None


def cmd_add(env: CniEnv, conf: NetConf) -> Result:
    return load(conf)


def cmd_del(env: CniEnv, conf: NetConf) -> None:
    load(conf)  # nothing is held; a DEL only checks its configuration


def cmd_check(env: CniEnv, conf: NetConf) -> None:
    have = {ip.address for ip in Result.from_dict(conf.prev_result or {}).ips}
    missing = [ip.address for ip in load(conf).ips if ip.address not in have]
    if missing:
        raise CniError(
            100, f"prevResult lacks {', '.join(missing)}: DEL and ADD the container again"
        )


if __name__ == "__main__":
    sys.exit(run({"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}))
