"""The stores control-plane benches run on."""

from __future__ import annotations

from typing import Any

import pytest

from overlay.control.store import MemoryStore, Store


def bench_store(kind: str, request: pytest.FixtureRequest, **etcd: Any) -> tuple[Store, str]:
    """The store a control-plane bench runs on: the embedded MemoryStore
    (``kind`` "memory"), or a client of a real etcd started for the test
    (``overlay_etcd``; ``etcd``: EtcdStore options). Returns the store and
    the etcd endpoint ("" for memory). Call it on the loop that uses it."""
    if kind == "memory":
        return MemoryStore(), ""
    from overlay.control.etcd import EtcdStore

    server = request.getfixturevalue("overlay_etcd")
    return EtcdStore([server.endpoint], **etcd), server.endpoint
