"""Shared test configuration.

The ``root`` marker, the session-start cleanup of leftover namespaces and the
``topology`` fixture live in the ``overlay.testing.plugin`` pytest plugin,
which pytest loads through the ``pytest11`` entry point once the package is
installed (``pip install -e .``). It is deliberately not listed in
``pytest_plugins`` here: that would register it a second time. Before the
package is installed, run ``PYTHONPATH=. pytest -p overlay.testing.plugin``.
"""
