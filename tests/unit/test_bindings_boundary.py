"""overlay.bindings is the only user of cffi's ``ffi`` and ``lib`` (STYLE.md §3).

Every Python file of the package, the tests and the benchmarks is read (not
imported) and its import statements are checked: ``overlay._native`` (the
compiled module) is imported by ``overlay/bindings/_ffi.py`` alone, the
bindings' private door ``overlay.bindings._ffi`` only inside the package, and
cffi only by the bindings and the builder (``overlay/_build.py``, which cffi
runs before the package exists). A reference to the removed
``overlay.engine`` fails too: its names live in ``overlay.bindings``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINDINGS = ROOT / "overlay" / "bindings"
DOOR = BINDINGS / "_ffi.py"
BUILDER = ROOT / "overlay" / "_build.py"


def python_files() -> list[Path]:
    files = [p for d in ("overlay", "tests", "bench") for p in (ROOT / d).rglob("*.py")]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def imported(path: Path) -> set[str]:
    """Every module an import statement of path names (``from a import b``: a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def offenders(allowed: set[Path], forbidden: str) -> list[str]:
    return [
        str(p.relative_to(ROOT))
        for p in python_files()
        if p not in allowed and any(n == forbidden or n.startswith(forbidden + ".")
                                    for n in imported(p))
    ]  # fmt: skip


def test_the_files_checked_include_the_bindings_and_the_tests() -> None:
    files = python_files()
    assert DOOR in files and Path(__file__).resolve() in files
    assert "overlay._native" in imported(DOOR)


def test_only_the_bindings_import_the_compiled_module() -> None:
    assert offenders({DOOR}, "overlay._native") == []


def test_only_the_bindings_use_their_door() -> None:
    inside = {p for p in python_files() if BINDINGS in p.parents}
    assert offenders(inside, "overlay.bindings._ffi") == []


def test_only_the_bindings_and_the_builder_import_cffi() -> None:
    inside = {p for p in python_files() if BINDINGS in p.parents}
    assert offenders(inside | {BUILDER}, "cffi") == []


def test_nothing_imports_the_old_engine_module() -> None:
    assert not (ROOT / "overlay" / "engine.py").exists()
    assert offenders(set(), "overlay.engine") == []
