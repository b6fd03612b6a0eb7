"""The rules for the values a runtime hands to a pod attachment: one copy, used by
the ``overlay-cni`` plugin and by overlayd's API.

Design notes. The same container ID, interface name and namespace reach
overlay twice: as ``CNI_*`` variables in the plugin and as fields of
``POST /v1/endpoints`` in the daemon (which scripts call directly). Two copies
of the rules drifted apart before (the API took ``..`` as an interface name,
the plugin a container ID ending in a newline because ``$`` matches before a
trailing ``\\n``), so the rules live here once. Each check raises ``Invalid``
with what would be accepted; the caller adds the name its own user knows
(``CNI_IFNAME`` and CNI code 4 in the plugin, ``ifname`` and HTTP 400 in the
API), so the rule is shared and the message still names the right field.

The rules are the CNI spec's (1.1.0, "Parameters" and "Network
configuration"), checked with ``fullmatch`` and bounded in length:

- container ID: non-empty, alphanumeric first, then alphanumerics, ``_``,
  ``.`` and ``-``; at most 255 characters. Runtimes use 64-character IDs;
  the bound is the longest file name Linux allows, as runtimes name files
  after the ID (libcni caches each result in a file named after it).
- network name: the same rule and bound (host-local names a directory after it).
- interface name: the kernel's rule the spec points to: 1-15 bytes
  (IFNAMSIZ less its NUL), not ``.`` or ``..``, no ``/``, ``:``, whitespace
  or NUL.
- network namespace: an absolute path to a file that *is* a network
  namespace (the kernel answers ``NS_GET_NSTYPE`` on it), and never one of
  the namespaces the caller names as forbidden, compared by namespace inode
  (device and inode number), so every path to it is caught: the plugin's
  own namespace (the runtime's, i.e. the host's), and in the daemon its own
  namespace and the node's underlay namespace. A pod given the host's
  namespace would put overlay's TAP, addresses and routes on the host.
- endpoint name and labels (from ``CNI_ARGS`` and the runtime's
  ``args.cni.labels``): bounded, because every API answer, the state file and
  the store carry them.
- a pod's namespace and name: Kubernetes' rules (a namespace is a DNS label
  of RFC 1123, 1-63 characters; a pod's name a DNS subdomain, 1-253), the
  ones the network-policy layer holds a namespace to: a namespace it would
  refuse must not reach it as a label.

JSON from outside (stdin of the plugin, request bodies of the API) is
decoded with ``load_json``, which bounds the nesting: the stdlib parser
raises ``RecursionError`` (not ``ValueError``) around a thousand levels, and
code that walks a decoded document recursively would fail later still.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from overlay import model
from overlay.errors import ConfigError

MAX_ID_CHARS = 255  # container IDs and network names (see the design notes)
MAX_IFNAME_BYTES = 15  # IFNAMSIZ (16) less the terminating NUL
MAX_PATH_BYTES = 4095  # PATH_MAX (4096) less the terminating NUL
# An endpoint's name and labels are stored records: the store's bounds and label
# rule (overlay.model) are the ones a runtime's values are held to here, so what
# the plugin and the API accept is exactly what every node will accept.
MAX_NAME_CHARS = model.ENDPOINT_NAME_MAX
MAX_LABELS = model.LABELS_MAX
MAX_JSON_DEPTH = 64  # attach bodies nest 3 deep, CNI configurations about 5
MAX_NAMESPACE_CHARS = 63  # Kubernetes: a namespace's name is a DNS label
MAX_POD_NAME_CHARS = 253  # Kubernetes: a pod's name is a DNS subdomain

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ID_RULE = (
    f"1-{MAX_ID_CHARS} characters: a letter or digit first, then letters, digits, '_', '.' or '-'"
)

# ioctl(2) NS_GET_NSTYPE = _IO(0xb7, 0x3) (linux/nsfs.h): the CLONE_NEW* type of a
# namespace file; any other file answers ENOTTY.
_NS_GET_NSTYPE = 0xB703
_CLONE_NEWNET = 0x40000000

OWN_NETNS = "/proc/self/ns/net"


class Invalid(ValueError):
    """A value breaks its rule; ``expected`` says what would be accepted."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def clip(value: object, limit: int = 64) -> object:
    """``value`` for an error to echo: a string longer than ``limit`` is cut to its
    start and its length (a 200,000-character name is not sent back whole); any
    other value whose ``repr`` is that long becomes a cut ``repr``."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"
    if isinstance(value, dict | list | tuple | bytes):
        text = repr(value)
        if len(text) > 2 * limit:
            return f"{text[:limit]}... ({type(value).__name__} of {len(value)} items)"
    return value


def shown(value: object, limit: int = 64) -> str:
    """``repr(value)`` for an error message, cut short like ``clip``."""
    text = repr(clip(value, limit))
    return text if len(text) <= 2 * limit else f"{text[:limit]}... ({len(text)} characters)"


def _identifier(value: str) -> None:
    if len(value) > MAX_ID_CHARS or not _ID_RE.fullmatch(value):
        raise Invalid(_ID_RULE)


def container_id(value: str) -> None:
    """The spec's container ID (see the design notes)."""
    _identifier(value)


def network_name(value: str) -> None:
    """The spec's network name (see the design notes)."""
    _identifier(value)


def ifname(value: str) -> None:
    """An interface name the kernel and the spec accept (see the design notes)."""
    expected = (
        f"1-{MAX_IFNAME_BYTES} bytes, not '.' or '..', without '/', ':' or whitespace (e.g. eth0)"
    )
    if not value or value in (".", ".."):
        raise Invalid(expected)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_IFNAME_BYTES:
        raise Invalid(expected)
    if any(c in "/:\0" or c.isspace() for c in value):
        raise Invalid(expected)


def netns(path: str, forbidden: Mapping[str, str] | None = None) -> None:
    """``path`` names a network namespace that is none of ``forbidden`` (a mapping of
    what each is, e.g. "the host's network namespace", to a path of it).

    The file is stat'ed before it is opened, and opened only when it is a
    regular file (as namespace files are) without blocking and without
    becoming a controlling terminal: a path to a FIFO or a device is refused
    without side effects."""
    expected = (
        "the path of the pod's network namespace (e.g. /var/run/netns/<name> or /proc/<pid>/ns/net)"
    )
    if not path.startswith("/"):
        raise Invalid(f"{expected}: an absolute path")
    if "\0" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise Invalid(f"{expected}: at most {MAX_PATH_BYTES} bytes, without NUL")
    try:
        before = os.stat(path)
    except FileNotFoundError:
        raise Invalid(f"{expected}: nothing is there") from None
    except (OSError, ValueError) as exc:
        raise Invalid(f"{expected}: it cannot be read ({_reason(exc)})") from None
    if not stat.S_ISREG(before.st_mode):
        raise Invalid(f"{expected}: this is not a namespace file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise Invalid(f"{expected}: it cannot be opened ({_reason(exc)})") from None
    try:
        after = os.fstat(fd)
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = 0
    finally:
        os.close(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or kind != _CLONE_NEWNET:
        raise Invalid(f"{expected}: this file is not a network namespace")
    for what, other in (forbidden or {}).items():
        try:
            theirs = os.stat(other)
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == (after.st_dev, after.st_ino):
            raise Invalid(f"{expected}: a namespace of the pod's own, not {what}")


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def endpoint_name(value: str) -> None:
    """An endpoint's name (the pod's "<namespace>/<name>", or the container ID)."""
    if len(value) > MAX_NAME_CHARS:
        raise Invalid(f"at most {MAX_NAME_CHARS} characters")


def namespace_name(value: str) -> None:
    """A pod's Kubernetes namespace: a DNS label (see the design notes)."""
    if len(value) > MAX_NAMESPACE_CHARS or not _DNS_LABEL_RE.fullmatch(value):
        raise Invalid(
            f"a namespace name: 1-{MAX_NAMESPACE_CHARS} lowercase letters, digits or '-', "
            "a letter or digit at both ends"
        )


def pod_name(value: str) -> None:
    """A pod's Kubernetes name: a DNS subdomain (see the design notes)."""
    if len(value) > MAX_POD_NAME_CHARS or not _DNS_SUBDOMAIN_RE.fullmatch(value):
        raise Invalid(
            f"a pod name: 1-{MAX_POD_NAME_CHARS} lowercase letters, digits, '-' or '.', "
            "a letter or digit at both ends and around each '.'"
        )


def label(key: str, value: str) -> None:
    """One label as Kubernetes accepts it (``overlay.model.check_label``)."""
    try:
        model.check_label(key, value)
    except ConfigError as exc:
        raise Invalid(exc.expected) from None


def labels(value: Mapping[str, str]) -> None:
    """An endpoint's labels: at most ``MAX_LABELS``, each one a valid ``label``."""
    if len(value) > MAX_LABELS:
        raise Invalid(f"at most {MAX_LABELS} labels")
    for key, text in value.items():
        label(key, text)


def load_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a JSON document from outside; ``Invalid`` when it is not JSON (bad
    syntax, or bytes that are not UTF-8) or nests deeper than ``max_depth``."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise Invalid(f"JSON nested at most {max_depth} levels deep") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise Invalid(f"JSON ({exc})") from None
    if depth(value, max_depth) > max_depth:
        raise Invalid(f"JSON nested at most {max_depth} levels deep")
    return value


def depth(value: Any, stop: int = MAX_JSON_DEPTH) -> int:
    """How deep ``value`` nests lists and objects (a scalar is 0), counted without
    recursion; the count stops once it passes ``stop``."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > stop:
            break
        todo.extend((child, level + 1) for child in children)
    return deepest
