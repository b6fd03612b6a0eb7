"""Installing overlay-cni into a runtime's plugin directory (``overlay install-cni``).

A container runtime executes a CNI plugin once per pod and verb, so the
plugin's start-up is on every pod's critical path. The ``overlay-cni`` console
script pip makes starts a full interpreter: ``site`` scans site-packages and
runs every ``.pth`` file in it, and honours ``PYTHONPATH``, ``PYTHONHOME`` and
the user's site directory. The launcher written here runs the same
``overlay.cni.plugin.main`` with ``python -I -S`` instead:

* isolated (``-I``): no ``PYTHON*`` variable and no user site reach a plugin
  that runs as root with the runtime's environment;
* no ``site`` (``-S``): the directories that hold the ``overlay`` package and
  the one dependency the plugin imports are put on ``sys.path`` by the
  launcher itself, so nothing else is scanned or run at start-up.

The file is written next to itself and renamed into place, so a runtime
executing the plugin at that moment sees the old file or the new one, never
half of one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import overlay

#: Where runtimes look for plugins unless configured otherwise (containerd,
#: CRI-O, and Kubernetes' own docs); Debian's plugins live in /usr/lib/cni.
DEFAULT_BIN_DIR = "/opt/cni/bin"
PLUGIN_NAME = "overlay-cni"


#: The packages outside the standard library that the plugin imports: overlay
#: itself, and pyroute2 (CHECK reads the pod's interface over netlink).
PLUGIN_IMPORTS = ("overlay", "pyroute2")


def import_path() -> list[str]:
    """The directories to put on ``sys.path`` so that the plugin imports the same
    copies of its packages as this interpreter does (an editable install of
    overlay and its dependencies' site-packages are two places)."""
    dirs: list[str] = []
    for name in PLUGIN_IMPORTS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"{name} is not importable by {sys.executable}: install overlay's "
                "dependencies into this interpreter first (pip install overlay)"
            )
        where = str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)
        if where not in dirs:
            dirs.append(where)
    return dirs


def launcher() -> str:
    """The launcher script's text: this interpreter runs the plugin."""
    python, path = sys.executable, import_path()
    if any(c.isspace() for c in python):
        # A shebang line splits at the first blank: the path must have none.
        raise ValueError(f"interpreter path {python!r} has a blank; a shebang cannot hold it")
    return (
        f"#!{python} -IS\n"
        f"# overlay-cni, written by `overlay install-cni` (overlay {overlay.__version__}).\n"
        "# Runs overlay.cni.plugin isolated from PYTHON* variables and without\n"
        "# site's scan of site-packages; run the command again after upgrading.\n"
        "import sys\n"
        f"sys.path[:0] = {path!r}\n"
        "from overlay.cni.plugin import main\n"
        "main()\n"
    )


def install(bin_dir: str | os.PathLike[str], name: str = PLUGIN_NAME) -> Path:
    """Write the launcher as ``bin_dir/name`` (mode 0755) atomically; return its path.

    ``FileNotFoundError`` when ``bin_dir`` does not exist: a runtime's plugin
    directory is the operator's to create, so a typo does not become a new one.
    """
    directory = Path(bin_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"plugin name {name!r} must be a plain file name")
    target = directory / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(launcher())
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
