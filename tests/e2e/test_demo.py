"""The demo is a newcomer's first look at the product: it must keep passing, and
show what it says it shows."""

from __future__ import annotations

import pytest

from overlay import demo
from overlay.node import Encap

pytestmark = pytest.mark.root


@pytest.mark.parametrize("encap", [Encap.VXLAN, Encap.GENEVE], ids=lambda e: e.name.lower())
def test_the_demo_passes_and_shows_isolation_and_port_security(encap: Encap) -> None:
    lines: list[str] = []
    assert demo.run(encap, transfer_bytes=2_000_000, say=lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "blocked  0/3" in text  # the other tenant's address is unreachable
    assert "spoofed_arp +1" in text and "spoofed_source_ip +1" in text
    assert "sha256 verified" in text
    assert "UNEXPECTED" not in text and "WRONG TENANT" not in text


def test_the_discovery_demo_passes() -> None:
    lines: list[str] = []
    assert demo.run_discovery(Encap.VXLAN, say=lines.append) == 0, "\n".join(lines)
    assert "node2's entries gone" in "\n".join(lines)
