"""The cffi builder for ``overlay._native`` (API mode, out of line).

setup.py names this file in ``cffi_modules``; cffi runs it before the package
exists, so it must not import ``overlay``. ``native/overlay.h`` (the product
ABI) and ``native/overlay_tools.h`` (the test and benchmark tools: traffic
generator, batch codecs, the fake transport) are fed to ``ffi.cdef``
unchanged: they are the whole boundary between C and Python, and the files to
review when it moves.

``OVERLAY_CFLAGS`` adds compiler flags (the tests build with ``-Werror``).
:func:`make_ffi` builds the same module from another source tree or with other
flags: tests/test_native_sanitize.py compiles an AddressSanitizer/UBSan build
of it into a temporary directory and runs the hostile-traffic tests against it.
"""

from __future__ import annotations

import glob
import os
import shlex
from collections.abc import Sequence

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(os.path.dirname(_HERE), "native")

CFLAGS = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-fvisibility=hidden"]


#: The headers cffi reads, in order: the tools use the product's types.
ABI_HEADERS = ("overlay.h", "overlay_tools.h")


def native_sources(native: str = NATIVE) -> list[str]:
    """The data plane's C files, in a stable order (tests compile the same list)."""
    return sorted(glob.glob(os.path.join(native, "*.c")))


def native_depends(native: str = NATIVE) -> list[str]:
    """The files besides the sources whose change rebuilds the module: every
    header and every ``.def`` list (counters.def is included by several rooms)."""
    return sorted(glob.glob(os.path.join(native, "*.h")) + glob.glob(os.path.join(native, "*.def")))


def make_ffi(
    native: str = NATIVE,
    extra_cflags: Sequence[str] = (),
    extra_ldflags: Sequence[str] = (),
    *,
    relative: bool = True,
) -> FFI:
    """An FFI for ``overlay._native`` from the sources in ``native``.

    ``relative`` names the sources relative to the working directory, as
    setuptools wants them; an out-of-tree build (``ffi.compile(tmpdir=...)``)
    passes False.
    """
    ffi = FFI()
    for header in ABI_HEADERS:
        with open(os.path.join(native, header), encoding="utf-8") as f:
            ffi.cdef(f.read())
    sources = native_sources(native)
    ffi.set_source(
        "overlay._native",
        '#include "ovl.h"\n',
        sources=[os.path.relpath(p) for p in sources] if relative else sources,
        include_dirs=[native],
        extra_compile_args=CFLAGS + list(extra_cflags),
        extra_link_args=list(extra_ldflags),
        libraries=["pthread"],
        depends=native_depends(native),
    )
    return ffi


ffibuilder = make_ffi(extra_cflags=shlex.split(os.environ.get("OVERLAY_CFLAGS", "")))

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
