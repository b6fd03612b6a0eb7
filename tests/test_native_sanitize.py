"""The C data plane under the compiler's eyes: warnings as errors, and the
standalone harnesses in native/tests/ run under AddressSanitizer and
UndefinedBehaviorSanitizer.

A harness is a C program with its own main() that exits 0 when every check
passed. To add one, write native/tests/check_<room>.c and add one line to
HARNESSES naming it and the native sources it links with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
GCC = shutil.which("gcc") or "gcc"
needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="gcc is not installed: cannot compile native/"
)

WARNINGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]


class Harness(NamedTuple):
    program: str  # under native/tests/
    sources: tuple[str, ...]  # under native/


HARNESSES = [
    Harness("check_wire.c", ("wire.c", "counters.c")),
    Harness("check_fdb.c", ("fdb.c", "counters.c")),
    Harness("check_offload.c", ("offload.c", "wire.c", "counters.c")),
]


@needs_gcc
@pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.program)
def test_harness_passes_under_asan_and_ubsan(harness: Harness, tmp_path: Path) -> None:
    exe = tmp_path / Path(harness.program).stem
    sources = [NATIVE / "tests" / harness.program, *(NATIVE / s for s in harness.sources)]
    build = subprocess.run(
        [GCC, *WARNINGS, *SANITIZE, f"-I{NATIVE}", *map(str, sources), "-o", str(exe)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, f"{harness.program} does not compile:\n{build.stderr}"
    # detect_leaks: the harness frees what it allocates; a leak is a failure too
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, f"{harness.program} failed:\n{run.stdout}\n{run.stderr}"


@needs_gcc
@pytest.mark.parametrize("source", sorted(NATIVE.glob("*.c")), ids=lambda p: p.name)
def test_native_source_compiles_without_warnings(source: Path) -> None:
    result = subprocess.run(
        [GCC, *WARNINGS, "-fsyntax-only", f"-I{NATIVE}", str(source)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"{source.name}:\n{result.stderr}"
