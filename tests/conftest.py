"""The test suite, grouped by what each test needs to run (its fixture regime).

  unit/     pure Python: codecs, config and CNI parsing; no root, no processes
  native/   the C engine in process (fake ports and transports from
            overlay.testing.fakes, loopback UDP), the C harnesses under the
            sanitizers, and real TAPs where a test needs one
  control/  agents, stores and IPAM on asyncio and uvloop, against MemoryStore
            and a real etcd
  e2e/      real nodes and pods in network namespaces: tunnels, offloads, the
            kernel's VXLAN device as a peer, the demo
  daemon/   real overlayd processes, driven through the API, the CLI and the
            real overlay-cni executable
  testing/  the toolkit and the pytest plugin that ship to users

The ``root`` marker, the session-start cleanup of leftover namespaces and the
``overlay_*`` fixtures (``overlay_topology``, ``overlay_daemons``,
``overlay_etcd``, ...) live in the ``overlay.testing.plugin`` pytest plugin,
which pytest loads through the ``pytest11`` entry point once the package is
installed (``pip install -e .``). It is deliberately not listed in
``pytest_plugins`` here: that would register it a second time. Before the
package is installed, run ``PYTHONPATH=. pytest -p overlay.testing.plugin``.
Each folder's own conftest holds what its tests share.
"""
