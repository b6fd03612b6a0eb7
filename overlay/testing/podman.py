"""podman in tests: real containers attached through overlay-cni to overlayd nodes.

Why this module exists
----------------------
A container runtime drives a CNI plugin in ways a hand-written CNI call does
not: it makes the container's namespace itself, caches results, sends DEL
when a container stops and ADD again when it starts, passes ``--ip`` and
``--mac-address`` as ``CNI_ARGS`` and parses the result in the version the
configuration names. ``PodmanNode`` is podman as one node runs it, so tests
can check all of that against the real runtime (Debian 12's podman 4.3 with
its CNI backend and runc) and real overlayd nodes (``overlay.testing.daemon``).

Two nodes on one machine
------------------------
Each node is a ``DaemonCluster`` node: overlayd with its underlay in a
namespace and its API on its own socket. Each ``PodmanNode`` is a podman
with a configuration of its own whose network ``blue`` is an ``overlay-cni``
``.conflist`` naming that node's socket, exactly as each machine of a real
cluster has ``/etc/cni/net.d`` pointing at its local overlayd. A container run
by node 0's podman is attached by node 0's overlayd: its TAP is born in the
namespace podman made (``/run/netns/netns-<uuid>``), and its frames enter node
0's data plane and cross the test underlay to node 1.

Isolation from the machine's podman
-----------------------------------
Everything podman keeps lives under the node's directory: storage (graphroot,
runroot) with the ``vfs`` driver (no mounts but each running container's
``/dev/shm``, which podman removes with the container), its temporary and
static directories, the events log and the locks (``lock_type = "file"``
instead of the machine-wide ``/dev/shm/libpod_lock``). Containers' cgroups go
under a parent named with the run's prefix (``/ovt<pid>-podman-<node>``),
removed at ``close()``. Images are never pulled (``--pull never``): the
busybox image is a tar built once per process from Debian's busybox-static
and imported into each node's storage. podman as root asks the kernel for
1048576 open files per container, which a process without CAP_SYS_RESOURCE
(podman inside a container, as on CI machines) cannot raise to, so the
containers' limits are lowered to ``ULIMITS``.

Three things podman keeps machine-wide: the containers' network namespaces
(``/run/netns/netns-<uuid>``, removed when a container stops), libcni's
result cache (``/var/lib/cni/results/<network>-<id>-<ifname>``, removed by a
successful DEL) and containers/image's cache of layer digests, which an
import writes (``/var/lib/containers/cache``). ``close()`` removes every
container, then whatever of the first two is left of its own containers, and
``leftovers()`` lets a test assert that podman itself removed them; the
digest cache is removed at exit when the process created it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.testing.daemon import CNI_DIR, overlay_cni
from overlay.testing.netns import run_prefix

PODMAN = "podman"
BUSYBOX = "/bin/busybox"
"""Debian's busybox-static: the one binary of the test image."""

IMAGE = "localhost/overlay-busybox:test"
CNI_CACHE = "/var/lib/cni/results"
"""Where libcni (podman's CNI backend) caches each attachment's result."""

IMAGE_CACHE = Path("/var/lib/containers")
"""containers/image keeps its blob-info cache for root in ``cache`` here."""

ULIMITS = ("nofile=4096:4096", "nproc=4096:4096")
IDLE = ("sh", "-c", 'trap "exit 0" TERM; sleep 1000000 & wait')
"""A container command that idles and stops at once on SIGTERM (a PID 1 with no
handler ignores it, and podman stop would wait 10 s before SIGKILL)."""


def unavailable_reason() -> str | None:
    """Why podman containers cannot run here (what to install), or None."""
    missing = [p for p in (PODMAN, "runc", "conmon") if shutil.which(p) is None]
    if not os.access(BUSYBOX, os.X_OK):
        missing.append("busybox-static")
    if missing:
        return f"needs {', '.join(missing)}: apt-get install podman runc busybox-static"
    return None


class PodmanError(RuntimeError):
    """A podman command failed: its argv, exit status and stderr."""

    def __init__(self, argv: Sequence[str], rc: int, stderr: str) -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)} exited with {rc}: {stderr.strip()[-2000:]}")


_image: list[Path] = []
_cache_watched: list[bool] = []


def _remove_image_cache_at_exit() -> None:
    """Before the first import of this process: if containers/image's cache is not
    there yet, remove what the imports create of it at exit."""
    if _cache_watched:
        return
    _cache_watched.append(True)
    made = IMAGE_CACHE if not IMAGE_CACHE.exists() else IMAGE_CACHE / "cache"
    if made.exists():
        return
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(made, ignore_errors=True)

    atexit.register(remove)


def busybox_tar() -> Path:
    """A root file system tar: busybox-static as /bin/busybox, a symlink per applet
    (sh, ping, wget, httpd, ip, ...) and /tmp; built once per process, removed at exit."""
    if not _image:
        directory = Path(tempfile.mkdtemp(prefix=f"{run_prefix()}busybox-"))
        owner = os.getpid()  # a forked child that exits must not remove it

        def remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)
        applets = subprocess.run(
            [BUSYBOX, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        path = directory / "busybox.tar"
        with tarfile.open(path, "w") as tar:
            for name in ("bin", "tmp", "etc"):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, "bin/busybox")
            for applet in applets:
                if applet != "busybox":
                    info = tarfile.TarInfo(f"bin/{applet}")
                    info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(info)
        _image.append(path)
    return _image[0]


def conflist(
    socket: str, *, network: str = "blue", vni: int = 100, cni_version: str = "1.0.0"
) -> dict[str, Any]:
    """The network list podman 4.3 reads (its CNI backend reads only ``.conflist``
    files, and parses results up to 1.0.0): one overlay-cni plugin for ``vni``,
    attaching through the overlayd at ``socket``."""
    plugin = {"type": "overlay-cni", "vni": vni, "socket": socket}
    return {"cniVersion": cni_version, "name": network, "plugins": [plugin]}


@dataclass
class Container:
    """A container a ``PodmanNode`` runs."""

    node: PodmanNode
    name: str
    id: str

    def exec(self, *argv: str, check: bool = True, timeout: float = 60.0) -> str:
        """Run ``argv`` in the container; its stdout (PodmanError when it fails and ``check``)."""
        return self.node.podman("exec", self.name, *argv, check=check, timeout=timeout).stdout

    def ok(self, *argv: str, timeout: float = 60.0) -> bool:
        """Whether ``argv`` run in the container exits with 0."""
        done = self.node.podman("exec", self.name, *argv, check=False, timeout=timeout)
        return done.returncode == 0

    def inspect(self) -> dict[str, Any]:
        out: list[dict[str, Any]] = json.loads(self.node.podman("inspect", self.name).stdout)
        return out[0]

    def network(self) -> dict[str, Any]:
        """What podman recorded of the container's attachment to the node's network
        (``IPAddress``, ``IPPrefixLen``, ``MacAddress``, ...): the CNI result it parsed."""
        nets: dict[str, Any] = self.inspect()["NetworkSettings"]["Networks"]
        return dict(nets[self.node.network])

    def interface(self, ifname: str = "eth0") -> tuple[str, str]:
        """(address with prefix, MAC) of ``ifname`` as the container's kernel has it."""
        link = self.exec("ip", "-o", "link", "show", ifname).split()
        mac = link[link.index("link/ether") + 1]
        addrs = self.exec("ip", "-o", "-4", "addr", "show", ifname).split()
        return addrs[addrs.index("inet") + 1], mac

    def ping(self, address: str, count: int = 1, wait_s: int = 5) -> bool:
        """``count`` echo requests to ``address``; True when every one is answered
        (each waits up to ``wait_s``: the first packet must arrive, none is resent)."""
        argv = ("ping", "-c", str(count), "-W", str(wait_s), address)
        return self.ok(*argv, timeout=count * wait_s + 30)

    def stop(self) -> None:
        self.node.podman("stop", self.name)

    def start(self) -> None:
        self.node.podman("start", self.name)

    def restart(self) -> None:
        self.node.podman("restart", self.name)

    def rm(self, *, force: bool = False) -> None:
        self.node.podman("rm", *(["-f", "-t", "0"] if force else []), self.name)


class PodmanNode:
    """podman as one node runs it, isolated in ``directory`` (see the module notes):
    containers on network ``network`` are attached by the overlayd at ``socket``.

    ``run()`` starts a container; ``podman()`` runs any podman command with the
    node's configuration; ``close()`` removes every container and all the node
    made. ``cni_path`` is where podman looks for plugins: overlay-cni (installed
    once per process by ``overlay_cni()``), then Debian's plugins.
    """

    def __init__(
        self,
        directory: Path,
        socket: str,
        *,
        name: str = "n0",
        network: str = "blue",
        vni: int = 100,
        cni_version: str = "1.0.0",
        cni_path: Sequence[str] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.network = network
        self.cgroup_parent = f"/{run_prefix()}podman-{name}"
        self.net_dir = self.dir / "net.d"
        self.seen: dict[str, set[str]] = {}  # container ID -> the namespaces it had
        for sub in ("net.d", "tmp", "root", "runroot", "volumes"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if cni_path is None:
            cni_path = (str(Path(overlay_cni()[0]).parent), CNI_DIR)
        self.conflist_path = self.net_dir / f"{network}.conflist"
        self.write_conflist(conflist(socket, network=network, vni=vni, cni_version=cni_version))
        self.cni_path = list(cni_path)
        d = self.dir
        self.conf_path = d / "containers.conf"
        self.conf_path.write_text(self.containers_conf())
        self.storage_path = d / "storage.conf"
        self.storage_path.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f"graphroot = {json.dumps(str(d / 'root'))}\n"
            f"runroot = {json.dumps(str(d / 'runroot'))}\n"
        )
        _remove_image_cache_at_exit()
        self.podman("import", "--quiet", str(busybox_tar()), IMAGE)

    def containers_conf(
        self, network: Mapping[str, Any] | None = None, engine: Mapping[str, Any] | None = None
    ) -> str:
        """The text of a containers.conf with the node's isolation (storage, locks,
        events, cgroups, limits: see the module notes) and its ``[network]``:
        ``network`` and ``engine`` keys replace the node's own (the whole
        ``[network]`` section when ``network`` is given)."""
        d = self.dir
        if network is None:
            network = {
                "network_backend": "cni",
                "network_config_dir": str(self.net_dir),
                "cni_plugin_dirs": self.cni_path,
                "default_network": self.network,
            }
        sections: dict[str, Mapping[str, Any]] = {
            "containers": {"default_ulimits": list(ULIMITS)},
            "engine": {
                "runtime": "runc",
                "cgroup_manager": "cgroupfs",
                "lock_type": "file",
                "events_logger": "file",
                "events_logfile_path": str(d / "events.log"),
                "tmp_dir": str(d / "tmp"),
                "static_dir": str(d / "root" / "libpod"),
                "volume_path": str(d / "volumes"),
                **(engine or {}),
            },
            "network": network,
        }
        # Strings and lists of strings only: their JSON is TOML.
        return "".join(
            f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())
            for name, body in sections.items()
        )

    def write_conflist(self, conf: dict[str, Any]) -> None:
        self.conflist_path.write_text(json.dumps(conf, indent=2) + "\n")

    @property
    def env(self) -> dict[str, str]:
        """The environment podman runs with: this node's configuration files."""
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.dir),
            "CONTAINERS_CONF": str(self.conf_path),
            "CONTAINERS_STORAGE_CONF": str(self.storage_path),
        }

    def podman(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``podman args...`` with this node's configuration, ``env`` over it
        (PodmanError when it fails and ``check``)."""
        argv = [PODMAN, *args]
        environ = {**self.env, **(env or {})}
        done = subprocess.run(
            argv, capture_output=True, text=True, env=environ, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise PodmanError(argv, done.returncode, done.stderr)
        return done

    def run(self, name: str, *options: str, command: Sequence[str] = IDLE) -> Container:
        """``podman run -d`` a busybox container ``name`` on the node's network;
        ``options`` go before the image (``"--ip", "10.244.1.9"``). PodmanError when
        it does not start (its ``stderr`` has podman's message, and the plugin's)."""
        done = self.podman(
            "run",
            "-d",
            "--pull",
            "never",
            "--name",
            name,
            "--cgroup-parent",
            self.cgroup_parent,
            "--network",
            self.network,
            *options,
            IMAGE,
            *command,
        )
        self.remember()
        return Container(self, name, done.stdout.strip())

    def ids(self) -> list[str]:
        """The full IDs of every container this node's podman has (none once closed)."""
        if not self.conf_path.exists():
            return []
        return self.podman("ps", "-a", "-q", "--no-trunc").stdout.split()

    def remember(self) -> None:
        """Note every container's current namespace, for ``leftovers()`` and ``close()``."""
        for cid in self.ids():
            key = self.podman(
                "inspect", "-f", "{{.NetworkSettings.SandboxKey}}", cid, check=False
            ).stdout.strip()
            self.seen.setdefault(cid, set())
            if key:
                self.seen[cid].add(key)

    def leftovers(self) -> list[str]:
        """Namespaces and CNI cache files of this node's removed containers that are
        still there (nothing, when podman cleaned up after itself)."""
        live = set(self.ids())
        out = []
        for cid, namespaces in self.seen.items():
            if cid in live:
                continue
            out += [ns for ns in namespaces if os.path.exists(ns)]
            prefix = f"{self.network}-{cid}-"
            with contextlib.suppress(FileNotFoundError):
                out += [
                    os.path.join(CNI_CACHE, f)
                    for f in os.listdir(CNI_CACHE)
                    if f.startswith(prefix)
                ]
        return sorted(out)

    def close(self) -> None:
        """Remove every container (killed at once), then what podman left of them
        (namespaces, CNI cache files), the node's cgroups and its directory."""
        with contextlib.suppress(PodmanError, subprocess.TimeoutExpired):
            self.remember()
            self.podman("rm", "--all", "--force", "--time", "0", timeout=120)
        for path in self.leftovers():
            if path.startswith(CNI_CACHE):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                subprocess.run(["umount", path], capture_output=True, check=False)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        _remove_cgroups(self.cgroup_parent)
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_cgroups(parent: str) -> None:
    """Remove the (empty, once its containers are gone) cgroup ``parent`` in every
    hierarchy, children first."""
    root = Path("/sys/fs/cgroup")
    tops = [root / parent.lstrip("/")]
    tops += [h / parent.lstrip("/") for h in root.iterdir() if h.is_dir()]
    for top in tops:
        if not top.is_dir():
            continue
        for d in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir():
                with contextlib.suppress(OSError):
                    d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
