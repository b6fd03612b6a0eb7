"""The ``overlay`` pytest plugin: root-only tests, leftover cleanup, test-bed fixtures.

Why this module exists
----------------------
Tests that build namespaces need root and ``/dev/net/tun``; elsewhere they must
skip with a reason that says what is missing, not fail obscurely. A crashed run
leaves namespaces behind; the next session removes them, but only those of
runs that are over (``ovt<pid>-`` whose pid is gone) and its own, never another
live run's. And most tests just want a :class:`~overlay.testing.netns.Topology`
that is gone after the test, pass or fail: the ``overlay_topology`` fixture.

Every fixture's name starts with ``overlay_``: the plugin loads in every pytest
run where the package is installed, and a generic name (``topology``, ``etcd``)
would collide with a user's own fixture of that name.

People who benchmark overlays with pytest-benchmark want ready-made test beds
of one shape to compare: ``overlay_net`` (our data plane), ``overlay_kernel_net``
(the kernel's VXLAN twin), ``overlay_veth_net`` (no tunnel) and
``overlay_pyforwarder_net`` (a pure-Python forwarder). Each is a factory
fixture (call it, maybe several times, with the shape you want); everything it
built is removed after the test, also when the test fails. The figures and
``compare`` to use with them are in :mod:`overlay.testing.throughput`::

    from overlay.testing.throughput import TCP_GBPS, compare

    def test_tcp(benchmark, overlay_net, overlay_kernel_net):
        sides = {"overlay": overlay_net().side(), "kernel": overlay_kernel_net().side()}
        compare(benchmark, sides, TCP_GBPS)

Control-plane tests want a real etcd (Debian's ``etcd-server``): ``overlay_etcd``
is a fresh one per test (empty, at revision 1; kill and restart it at will) and
``overlay_etcd_session`` one shared by the whole session (faster; keep to your own
key prefix and leave it running). Both skip where there is no etcd binary and
are stopped by PID after use, pass or fail.

The plugin is registered through the ``pytest11`` entry point, so it loads in
*every* pytest run where the package is installed. Its import therefore costs
nothing: no pyroute2, no ``overlay._native``; the netns toolkit is imported
only when a session actually has something to clean or a test asks for a
topology, and aetcd never (the etcd fixtures use plain HTTP). Before the
package is installed use ``pytest -p overlay.testing.plugin``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from overlay.nsenter import pid_alive

if TYPE_CHECKING:
    from overlay.testing.daemon import DaemonCluster
    from overlay.testing.etcd import EtcdServer
    from overlay.testing.netns import Topology
    from overlay.testing.throughput import (
        KernelNet,
        OverlayNet,
        PyForwarderNet,
        Testbeds,
        VethNet,
    )

ROOT_MARKER = "root: needs root / CAP_NET_ADMIN (network namespaces, TAP devices)"

_FAMILY_RE = re.compile(r"^ovt(\d+)-")


def root_unavailable_reason() -> str | None:
    """Why ``root`` tests cannot run here, or ``None`` if they can."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces; run as root as CI does"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (load the tun module or pass the device into the container)"
    return None


def _leftover_prefixes() -> list[str]:
    """Prefixes to clean at session start: this process's own and those of dead runs.

    Uses directory listings only, so a clean machine costs no imports.
    """
    names: list[str] = []
    for directory in ("/var/run/netns", "/sys/class/net"):
        try:
            names += os.listdir(directory)
        except OSError:
            continue
    found: set[str] = set()
    for name in names:
        m = _FAMILY_RE.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or not pid_alive(pid):
            found.add(f"ovt{pid}-")
    return sorted(found)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", ROOT_MARKER)


def pytest_sessionstart(session: pytest.Session) -> None:
    if root_unavailable_reason() is not None:
        return
    prefixes = _leftover_prefixes()
    if not prefixes:
        return
    from overlay.testing.netns import cleanup_leftovers

    for prefix in prefixes:
        cleanup_leftovers(prefix)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = root_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


@pytest.fixture
def overlay_topology() -> Iterator[Topology]:
    """A :class:`~overlay.testing.netns.Topology` with this run's prefix, removed after the test.

    Skips the test (with the reason) where namespaces cannot be made. A
    teardown that cannot remove everything fails the test as an error.
    """
    reason = root_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from overlay.testing.netns import Topology

    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()


@pytest.fixture
def overlay_daemons(
    overlay_topology: Topology, tmp_path: Path
) -> Iterator[Callable[..., DaemonCluster]]:
    """Factory: ``overlay_daemons(n_nodes=2, store="memory" | etcd URL, networks=[...])``
    builds node namespaces running real ``overlayd`` processes (not yet started:
    call ``.start()``). Daemons are stopped by PID after the test, then the
    namespaces are removed."""
    from overlay.testing.daemon import DaemonCluster

    made: list[DaemonCluster] = []

    def make(**kw: Any) -> DaemonCluster:
        c = DaemonCluster(overlay_topology, tmp_path / f"cluster{len(made)}", **kw)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


@contextlib.contextmanager
def _testbeds() -> Iterator[Testbeds]:
    reason = root_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from overlay.testing.throughput import Testbeds

    beds = Testbeds()
    try:
        yield beds
    finally:
        beds.close()


@pytest.fixture
def overlay_net() -> Iterator[Callable[..., OverlayNet]]:
    """Factory: ``overlay_net(nodes=2, pods_per_node=1, encap=Encap.VXLAN, mtu=1500,
    node_options={}, vni=100, cidr="10.244.1.0/24")`` -> a started
    :class:`~overlay.testing.throughput.OverlayNet` (``.cluster``, ``.pods``,
    ``.pair()``, ``.side()``). ``node_options`` go to every ``Node`` unchanged.
    Removed after the test, pass or fail.
    """
    with _testbeds() as beds:
        yield beds.overlay


@pytest.fixture
def overlay_kernel_net() -> Iterator[Callable[..., KernelNet]]:
    """Factory: ``overlay_kernel_net(nodes=2, pods_per_node=1, mtu=1500, vni=100,
    cidr="10.244.1.0/24")`` -> a :class:`~overlay.testing.throughput.KernelNet`:
    the same shape on the kernel's VXLAN device (VXLAN only). Removed after the test.
    """
    with _testbeds() as beds:
        yield beds.kernel


@pytest.fixture
def overlay_veth_net() -> Iterator[Callable[..., VethNet]]:
    """Factory: ``overlay_veth_net(mtu=1450, cidr="10.244.1.0/24")`` -> a
    :class:`~overlay.testing.throughput.VethNet`: two pods on one plain veth
    (10.244.1.2 <-> 10.244.1.3), the no-tunnel baseline. Removed after the test.
    """
    with _testbeds() as beds:
        yield beds.veth


@pytest.fixture
def overlay_pyforwarder_net() -> Iterator[Callable[..., PyForwarderNet]]:
    """Factory: ``overlay_pyforwarder_net(mtu=1500, vni=100, cidr="10.244.1.0/24",
    use_uvloop=None)`` -> a started :class:`~overlay.testing.throughput.PyForwarderNet`:
    two nodes running the pure-Python asyncio forwarder. Removed after the test.
    """
    with _testbeds() as beds:
        yield beds.pyforwarder


def _etcd_server(directory: Path) -> Iterator[EtcdServer]:
    from overlay.testing.etcd import EtcdServer, etcd_unavailable_reason

    reason = etcd_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = EtcdServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def overlay_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh :class:`~overlay.testing.etcd.EtcdServer` for this test (empty, revision 1).

    ``.endpoint`` is its client URL; ``.kill()`` and ``.start()`` take it away
    and bring it back on the same ports and data. Stopped after the test.
    """
    yield from _etcd_server(tmp_path / "etcd")


@pytest.fixture(scope="session")
def overlay_etcd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One :class:`~overlay.testing.etcd.EtcdServer` for the whole session.

    Shared: use keys under a prefix of your own test, do not assume absolute
    revisions, and do not kill, restart or compact it (use ``overlay_etcd`` for that).
    """
    yield from _etcd_server(tmp_path_factory.mktemp("etcd"))
