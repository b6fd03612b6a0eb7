"""``overlayd``: the standalone overlay daemon.

    overlayd --config /etc/overlay/overlayd.toml          run
    overlayd --config FILE --check                        check the file and exit

Signals: SIGHUP reloads networks and peers from the file (a bad file changes
nothing); SIGTERM and SIGINT stop the daemon cleanly, leaving pods' interfaces
in place for the next start. Exit status: 0 after a clean stop, 2 for a bad
configuration (the message names the key), 1 when something the configuration
names cannot be set up (address in use, store unreachable at start, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys

from overlay.daemon import config as cfgmod
from overlay.errors import ConfigError, OverlayError

log = logging.getLogger("overlay.daemon")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="overlayd", description="the overlay daemon")
    p.add_argument(
        "--config",
        default="/etc/overlay/overlayd.toml",
        help="configuration file (TOML; default /etc/overlay/overlayd.toml)",
    )
    p.add_argument("--check", action="store_true", help="check the configuration and exit")
    return p


async def _run(config: cfgmod.DaemonConfig, path: str) -> int:
    from overlay.daemon.service import Daemon

    daemon = Daemon(config, path)
    try:
        await daemon.start()
    except ConfigError as exc:
        print(f"overlayd: {exc}", file=sys.stderr)
        return 2
    except (OverlayError, OSError) as exc:
        print(f"overlayd: cannot start: {exc}", file=sys.stderr)
        return 1
    daemon.handle_signals(asyncio.get_running_loop())
    await daemon.wait_stopped()
    log.info("overlayd: stopped")
    return 1 if daemon.failed else 0


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) as they are.

    Every pod's TAP (one descriptor per queue), every API connection and every
    store and netlink socket is a descriptor, and systemd starts services with a
    soft limit of 1024 under a hard one of 524288. The soft limit exists for
    programs that use select(), which cannot watch descriptors past 1023;
    the daemon's loop uses epoll. An infinite hard limit is capped at the
    kernel's fs.nr_open, the most a process may have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if want == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = int(f.read())
        except (OSError, ValueError):
            want = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("overlayd: cannot raise the descriptor limit to %d: %s", want, exc)
    return soft, hard


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = cfgmod.load(args.config)
    except ConfigError as exc:
        print(f"overlayd: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"overlayd: {args.config}: ok")
        return 0
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("overlay").setLevel(config.log_level.upper())
    soft, _hard = raise_nofile_limit()
    from overlay.daemon.api import MAX_CONNECTIONS

    if soft < 4 * MAX_CONNECTIONS:
        log.warning(
            "overlayd: only %d file descriptors (ulimit -n); the API alone may use %d: "
            "raise LimitNOFILE",
            soft,
            MAX_CONNECTIONS,
        )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(config, args.config))
    return uvloop.run(_run(config, args.config))


if __name__ == "__main__":
    sys.exit(main())
