"""The control plane: agents, stores, IPAM and claims, each test written once and
run on the stdlib event loop and on uvloop (``loop_kind``), against the
in-process MemoryStore and a real etcd (the plugin's ``overlay_etcd`` /
``overlay_etcd_session``). Nodes are recording fakes unless the data plane is
the point, then real ``Node``s in namespaces."""

from __future__ import annotations

import pytest

from overlay.testing.aio import LOOPS


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop a test's coroutine runs on: "asyncio" or "uvloop"."""
    return str(request.param)
