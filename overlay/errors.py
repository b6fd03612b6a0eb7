"""Exceptions raised at overlay's configuration and API boundaries.

Each message names the field at fault, the bad value and what would be
accepted, so the caller can fix the input without reading the source. The
data plane itself never raises: bad packets are counted drops.
"""

from __future__ import annotations


class OverlayError(Exception):
    """Base class of every error overlay raises on purpose."""


class ConfigError(OverlayError, ValueError):
    """A bad argument or configuration value. Nothing was changed."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}={value!r}: {expected}")


class ConflictError(OverlayError):
    """The request clashes with existing state (a VNI, MAC or address in use)."""


class NotFoundError(OverlayError, KeyError):
    """The object named does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CapacityError(OverlayError):
    """A table of the data plane is full; raise its size in the node's config."""


class EngineError(OverlayError, OSError):
    """The data plane refused an operation for a system reason (errno set)."""
