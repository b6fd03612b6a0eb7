"""Running a test's coroutine on the stdlib event loop or on uvloop.

Each control-plane test is written once and run on both loops (as uvloop's
own suite does); ``run`` also fails the test when the loop reported an
unhandled error (a callback that raised, a task whose exception nobody read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

LOOPS = ["asyncio", "uvloop"]


def run(loop_kind: str, main: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    """Run ``main()`` to completion on a new loop of ``loop_kind`` ("asyncio" or "uvloop")."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(str(ctx.get("message"))))
    try:
        loop.run_until_complete(asyncio.wait_for(main(), timeout))
    finally:
        loop.close()
    assert not errors, f"the loop reported unhandled errors: {errors}"


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``pred()`` holds, polling; AssertionError after ``timeout`` seconds."""
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
