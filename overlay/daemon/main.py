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
import signal
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

    loop = asyncio.get_running_loop()
    daemon = Daemon(config, path)
    try:
        await daemon.start()
    except ConfigError as exc:
        print(f"overlayd: {exc}", file=sys.stderr)
        return 2
    except (OverlayError, OSError) as exc:
        print(f"overlayd: cannot start: {exc}", file=sys.stderr)
        return 1

    def on_hup() -> None:
        async def go() -> None:
            try:
                await daemon.reload()
            except OverlayError as exc:
                log.error("overlayd: reload refused, nothing changed: %s", exc)
            except Exception:
                log.exception("overlayd: reload failed")

        loop.create_task(go())

    def on_term() -> None:
        loop.create_task(daemon.stop())

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    await daemon.wait_stopped()
    log.info("overlayd: stopped")
    return 1 if daemon.failed else 0


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
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(config, args.config))
    return uvloop.run(_run(config, args.config))


if __name__ == "__main__":
    sys.exit(main())
