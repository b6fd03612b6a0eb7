"""What overlayd keeps on disk: the pods attached on this node.

Design notes. Pod TAPs are persistent devices living in the pods' namespaces,
so the daemon can restart without a pod losing its interface. To re-attach,
a restarted daemon must know which TAP belongs to which pod and network:
that is this file, ``<state_dir>/attachments.json``, rewritten atomically
(write a temporary file, fsync, rename) after every change, so a crash
leaves either the old or the new version, never half of one. It also lets
CNI GC find attachments the runtime no longer knows about.

The file names every pod's container, namespace, addresses and labels, so it
is private: created 0600 whatever the directory's mode and the umask (systemd's
``StateDirectory=`` makes the directory 0755, and the directory's mode is the
operator's, not ours), and a file found looser at start (written by an older
release, or a ``.bad`` copy of one) is tightened to 0600 before anything reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import stat
import time
from typing import Any

from overlay.errors import ConfigError

log = logging.getLogger("overlay.state")

FILE = "attachments.json"
FORMAT = 1
MODE = 0o600  # every file overlayd writes in state_dir


@dataclasses.dataclass
class Attachment:
    """One pod interface: the CNI attachment (container, ifname) and what it got."""

    container_id: str
    ifname: str
    netns: str
    vni: int
    tenant: str
    mac: str
    ips: list[str]
    mtu: int
    ipam: str = "node"  # "node": the node's subnet lease; "delegated": an IPAM plugin
    gateway: str = ""
    routes: list[dict[str, str]] = dataclasses.field(default_factory=list)
    name: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    # The pod's named container ports, name -> (number, protocol), given again
    # on re-attach (a file read back holds each pair as a list, which the
    # checks of ``attach_port`` and ``Endpoint`` take as the pair). A file
    # written before the field has none: the pod had none.
    named_ports: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StateFile:
    """The attachments of this node, loaded from and saved to ``state_dir``."""

    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, FILE)

    def secure(self) -> None:
        """Tighten the files of this state to ``MODE`` (the daemon calls it at start):
        the state file, a ``.bad`` copy kept aside, temporary files a crash left."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name == FILE or name.startswith(FILE + "."):
                path = os.path.join(self.dir, name)
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != MODE:
                        os.chmod(path, MODE)
                        log.warning(
                            "state file %s was mode %o; made %o (it names every pod)",
                            path,
                            stat.S_IMODE(st.st_mode),
                            MODE,
                        )
                except FileNotFoundError:
                    continue

    def load(self) -> list[Attachment]:
        """The saved attachments; [] when there is no file. A damaged file is kept
        aside (``.bad``) and logged: the daemon starts with what it can read."""
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError, RecursionError) as exc:
            bad = self.path + ".bad"
            log.error("state file %s unreadable (%s); moved to %s", self.path, exc, bad)
            os.replace(self.path, bad)
            os.chmod(bad, MODE)
            return []
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ConfigError(
                "node.state_dir", self.path, f"a state file of format {FORMAT} (or none)"
            )
        names = {f.name for f in dataclasses.fields(Attachment)}
        out = []
        for item in raw.get("attachments", []):
            try:
                out.append(Attachment(**{k: v for k, v in item.items() if k in names}))
            except TypeError as exc:
                log.error("state file %s: skipping attachment %r: %s", self.path, item, exc)
        return out

    def save(self, attachments: list[Attachment]) -> None:
        """Write the file whole and atomically, mode ``MODE``: the temporary file is
        created 0600 (O_EXCL, never through a link) and fchmod'ed to 0600, which
        neither the umask nor the directory's mode can widen, before any byte is
        written; the rename keeps that mode."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        data = {"format": FORMAT, "attachments": [a.to_dict() for a in attachments]}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a crash of a process with our PID
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
        try:
            os.fchmod(fd, MODE)
            with open(fd, "w", encoding="utf-8", closefd=False) as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
