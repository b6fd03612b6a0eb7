"""What overlayd keeps on disk: the pods attached on this node.

Design notes. Pod TAPs are persistent devices living in the pods' namespaces,
so the daemon can restart without a pod losing its interface. To re-attach,
a restarted daemon must know which TAP belongs to which pod and network:
that is this file, ``<state_dir>/attachments.json``, rewritten atomically
(write a temporary file, fsync, rename) after every change, so a crash
leaves either the old or the new version, never half of one. It also lets
CNI GC find attachments the runtime no longer knows about.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from overlay.errors import ConfigError

log = logging.getLogger("overlay.state")

FILE = "attachments.json"
FORMAT = 1


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

    def load(self) -> list[Attachment]:
        """The saved attachments; [] when there is no file. A damaged file is kept
        aside (``.bad``) and logged: the daemon starts with what it can read."""
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            bad = self.path + ".bad"
            log.error("state file %s unreadable (%s); moved to %s", self.path, exc, bad)
            os.replace(self.path, bad)
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
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        data = {"format": FORMAT, "attachments": [a.to_dict() for a in attachments]}
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
