"""The C data plane under the compiler's eyes: warnings as errors, the
standalone harnesses in native/tests/ under AddressSanitizer and
UndefinedBehaviorSanitizer, and the whole cffi module built with both and run
under hostile traffic, on the fake transport, steering flows between several
workers and with tables changing under traffic.

A harness is a C program with its own main() that exits 0 when every check
passed. To add one, write native/tests/check_<room>.c and add one line to
HARNESSES naming it and the native sources it links with. TSAN_HARNESSES are
built with ThreadSanitizer instead (check_engine.c: workers, the learner and
the control plane at once); a canary proves a data race is reported in that
setup, and a compiler without TSan skips them with the reason.

The sanitized module is ``overlay._native`` compiled by ``overlay/_build.py``
with ``-fsanitize=address,undefined -fno-sanitize-recover=all`` into a copy of
the package in a temporary directory, which goes first on ``PYTHONPATH`` of a
pytest subprocess (``python -P``: the checkout itself is not on the path) that
runs the tests in SANITIZED_TESTS (those not marked slow). The ASan runtime
must be the first library in the process, so the subprocess starts with
``LD_PRELOAD`` naming it (a ``sitecustomize`` in that directory drops the
variable again, so programs the tests start, ping or nft, run as they are);
leak detection is off because CPython itself never frees everything;
``PYTHONMALLOC=malloc`` routes Python's allocations (cffi buffers included)
through the intercepted malloc. Any report aborts the process, so the
subprocess fails; its output is searched for reports as well, and a canary
proves that an out-of-bounds read in the module is caught in exactly this
setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


# Every source of the data plane: what a harness of the whole engine links.
ENGINE = tuple(p.name for p in sorted(NATIVE.glob("*.c")))

# counters.c holds the counter readers too, which look networks and ports up
# in the engine's maps: every harness that names counters links map.c.
HARNESSES = [
    Harness("check_wire.c", ("wire.c", "csum.c", "counters.c", "map.c")),
    Harness("check_map.c", ("map.c", "counters.c")),
    Harness("check_offload.c", ("offload.c", "wire.c", "csum.c", "counters.c", "map.c")),
    Harness("check_steer.c", ("steer.c", "wire.c", "csum.c")),
    Harness("check_acl.c", ("acl.c",)),
    Harness("check_conntrack.c", ("conntrack.c", "wire.c", "csum.c", "counters.c", "map.c")),
    # the whole engine, threads and all: under ASan a leak at destroy fails too
    Harness("check_engine.c", ENGINE),
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


# ---- ThreadSanitizer: the engine's threads against each other ----

TSAN = ["-fsanitize=thread", "-g", "-O1"]
TSAN_HARNESSES = [Harness("check_engine.c", ENGINE)]
TSAN_OPTIONS = "halt_on_error=1:second_deadlock_stack=1:exitcode=66"

_RACE = """\
#include <pthread.h>
static int shared;
static void *bump(void *arg) { (void)arg; shared++; return 0; }
int main(void)
{
    pthread_t t;
    pthread_create(&t, 0, bump, 0);
    shared++;
    pthread_join(t, 0);
    return 0;
}
"""


def _tsan_build(sources: list[Path], exe: Path) -> None:
    if shutil.which("gcc") is None or _runtime("libtsan.so") is None:
        pytest.skip("gcc with libtsan is not installed: cannot build with -fsanitize=thread")
    build = subprocess.run(
        [GCC, *WARNINGS, *TSAN, f"-I{NATIVE}", *map(str, sources), "-lpthread", "-o", str(exe)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, f"{sources[0].name} does not compile:\n{build.stderr}"


def _tsan_run(exe: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TSAN_OPTIONS": TSAN_OPTIONS}
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=env)
    if "unexpected memory mapping" in run.stderr:
        # TSan's shadow layout needs fewer random bits of mmap than some kernels
        # use; without address randomisation the same program runs.
        run = subprocess.run(["setarch", os.uname().machine, "-R", str(exe)],
                             capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    return run


def test_thread_sanitizer_reports_a_data_race(tmp_path: Path) -> None:
    # The canary: in exactly this setup a race is a report and a failed run,
    # or the engine's clean run below would prove nothing.
    src = tmp_path / "race.c"
    src.write_text(_RACE)
    _tsan_build([src], tmp_path / "race")
    run = _tsan_run(tmp_path / "race")
    assert run.returncode == 66 and "WARNING: ThreadSanitizer: data race" in run.stderr, run.stderr


@pytest.mark.parametrize("harness", TSAN_HARNESSES, ids=lambda h: h.program)
def test_harness_passes_under_tsan(harness: Harness, tmp_path: Path) -> None:
    exe = tmp_path / Path(harness.program).stem
    _tsan_build([NATIVE / "tests" / harness.program, *(NATIVE / s for s in harness.sources)], exe)
    run = _tsan_run(exe)
    assert run.returncode == 0 and "ThreadSanitizer" not in run.stderr, (
        f"{harness.program} failed under TSan:\n{run.stdout}\n{run.stderr[-8000:]}"
    )


@needs_gcc
@pytest.mark.parametrize("source", sorted(NATIVE.glob("*.c")), ids=lambda p: p.name)
def test_native_source_compiles_without_warnings(source: Path) -> None:
    result = subprocess.run(
        [GCC, *WARNINGS, "-fsyntax-only", f"-I{NATIVE}", str(source)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"{source.name}:\n{result.stderr}"


# ---- the cffi module, sanitized, under hostile traffic ----

# The engine in process under attack, on the fake transport, steering flows to
# their owners, and with several workers while Python threads change every
# table. "not slow": the two-node runs add kernel time, not C coverage.
SANITIZED_TESTS = [
    "tests/native/test_hostile_dataplane.py",
    "tests/native/test_fake_transport.py",
    "tests/native/test_steering.py",
    "tests/native/test_concurrent_tables.py",
    "tests/native/test_policy_engine.py",
    "tests/native/test_policy_probe.py",
]
SANITIZED_SELECTION = ["-m", "not slow"]
BUILDER = ROOT / "overlay" / "_build.py"
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")

_DROP_PRELOAD = """\
# The ASan runtime is loaded already (LD_PRELOAD); programs this process
# starts (ping, nft, ip) need not carry it.
import os

os.environ.pop("LD_PRELOAD", None)
"""


def _runtime(name: str) -> str | None:
    path = subprocess.run(
        [GCC, f"-print-file-name={name}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="module")
def sanitized_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the overlay package whose _native is built with ASan and UBSan."""
    if shutil.which("gcc") is None or _runtime("libasan.so") is None:
        pytest.skip("gcc with libasan is not installed: cannot build the sanitized module")
    dest = tmp_path_factory.mktemp("sanitized")
    shutil.copytree(
        ROOT / "overlay",
        dest / "overlay",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o", "_native.c"),
    )
    (dest / "sitecustomize.py").write_text(_DROP_PRELOAD)
    build = textwrap.dedent(
        f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("overlay_build", {str(BUILDER)!r})
        b = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(b)
        flags = {[*SANITIZE, "-O1", "-fno-omit-frame-pointer", "-Werror"]!r}
        ffi = b.make_ffi(extra_cflags=flags, extra_ldflags={SANITIZE[:1]!r}, relative=False)
        print(ffi.compile(tmpdir={str(dest)!r}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", build],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"the sanitized module does not build:\n{done.stderr[-4000:]}"
    yield dest


def _sanitized_env(pkg: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(pkg),
        "LD_PRELOAD": str(_runtime("libasan.so")),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:print_summary=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONMALLOC": "malloc",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _run_sanitized(pkg: Path, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", *argv],
        cwd=ROOT,
        env=_sanitized_env(pkg),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_sanitized_module_catches_an_out_of_bounds_read(sanitized_package: Path) -> None:
    # ovl_wire_parse_frame told that a 16-byte buffer holding the start of an IPv6
    # frame is 64 bytes long reads past it: in this setup that must be a report
    # and a failed process, or the hostile run below could not fail either.
    # The one place a test reaches the raw ABI (through the bindings' own
    # door): no binding lets a caller lie about a buffer's length.
    canary = textwrap.dedent(
        """
        import sys
        from overlay.bindings._ffi import ffi, lib
        print("module", sys.modules["overlay._native"].__file__, flush=True)
        buf = ffi.new("uint8_t[]", bytes(12) + b"\\x86\\xdd\\x60\\x00")
        lib.ovl_wire_parse_frame(buf, 64, ffi.new("ovl_frame_t *"))
        print("not caught", flush=True)
        """
    )
    done = _run_sanitized(sanitized_package, ["-c", canary], timeout=120)
    assert f"module {sanitized_package}" in done.stdout, done.stdout + done.stderr
    assert done.returncode != 0 and "not caught" not in done.stdout, done.stdout
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_in_process_engine_tests_pass_on_the_sanitized_module(sanitized_package: Path) -> None:
    tests = [str(ROOT / t) for t in SANITIZED_TESTS]
    argv = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", f"--rootdir={ROOT}",
            *SANITIZED_SELECTION, *tests]  # fmt: skip
    done = _run_sanitized(sanitized_package, argv, timeout=900)
    output = done.stdout + done.stderr
    reports = [r for r in SANITIZER_REPORTS if r in output]
    assert done.returncode == 0 and not reports, f"{reports}\n{output[-6000:]}"
    assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout[-2000:]
