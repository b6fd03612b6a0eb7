"""The cffi builder for ``overlay._native`` (API mode, out of line).

setup.py names this file in ``cffi_modules``; cffi runs it before the package
exists, so it must not import ``overlay``. ``native/overlay.h`` is fed to
``ffi.cdef`` unchanged: it is the whole ABI, and the one file to review when
the boundary between C and Python moves.

``OVERLAY_CFLAGS`` adds compiler flags (the tests build with ``-Werror``).
"""

from __future__ import annotations

import glob
import os
import shlex

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(os.path.dirname(_HERE), "native")

CFLAGS = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-fvisibility=hidden"]


def native_sources() -> list[str]:
    """The data plane's C files, in a stable order (tests compile the same list)."""
    return sorted(glob.glob(os.path.join(NATIVE, "*.c")))


def _make() -> FFI:
    ffi = FFI()
    with open(os.path.join(NATIVE, "overlay.h"), encoding="utf-8") as f:
        ffi.cdef(f.read())
    extra = shlex.split(os.environ.get("OVERLAY_CFLAGS", ""))
    ffi.set_source(
        "overlay._native",
        '#include "ovl.h"\n',
        sources=[os.path.relpath(p) for p in native_sources()],
        include_dirs=[NATIVE],
        extra_compile_args=CFLAGS + extra,
        libraries=["pthread"],
        depends=[os.path.join(NATIVE, n) for n in ("overlay.h", "ovl.h", "counters.def")],
    )
    return ffi


ffibuilder = _make()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
