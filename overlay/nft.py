"""nftables from Python: libnftables through ctypes, JSON in and out.

Design notes.
- **Why libnftables, and why JSON.** The kernel's netfilter is programmed in
  transactions of netlink messages; libnftables (Debian's ``libnftables1``,
  which the ``nft`` command is a thin front end of) builds them, checks them
  against the kernel and reports errors in words. Its JSON interface is the
  documented machine interface (libnftables-json(5)): a document in, a
  document out, no quoting of rule text. Debian's ``python3-nftables`` module
  is this same binding over ctypes, but it installs into the system's Python
  only, not into a virtualenv; so the few calls are bound here. No process is
  spawned per change, and a whole table is replaced in one transaction.
- **Atomic, so no gap.** ``replace_table`` sends "add table; delete table;
  add table + every chain and rule" as one batch: the kernel applies all of it
  or none of it, so a daemon restarting and re-applying its rules never leaves
  a moment without them (and a bad rule changes nothing).
- **Namespaces.** A libnftables context talks to the kernel through a netlink
  socket of the namespace it was made in; every call makes its context inside
  the target namespace (``overlay.nsenter.call_in``) and frees it there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

from overlay.errors import OverlayError
from overlay.nsenter import call_in, netns_path

__all__ = ["Nft", "NftError", "available"]

# libnftables.h
_NFT_CTX_DEFAULT = 0
_NFT_CTX_OUTPUT_HANDLE = 1 << 3
_NFT_CTX_OUTPUT_JSON = 1 << 4

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lib_lock = threading.Lock()


class NftError(OverlayError):
    """nftables refused a command: the message is libnftables' own, plus what was asked."""


def _load() -> ctypes.CDLL:
    global _lib, _lib_error
    with _lib_lock:
        if _lib is not None:
            return _lib
        if _lib_error is not None:
            raise NftError(_lib_error)
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            _lib_error = (
                f"libnftables is not available ({exc}); install Debian's nftables "
                "(libnftables1) for gateways and masquerading"
            )
            raise NftError(_lib_error) from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib = lib
        return lib


def available() -> str | None:
    """None when libnftables can be used here, else why not."""
    try:
        _load()
    except NftError as exc:
        return str(exc)
    return None


def _run(command: str) -> str:
    """Run one nft command (text or a JSON document) in this thread's namespace."""
    lib = _load()
    ctx = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
    if not ctx:
        raise NftError("libnftables could not make a context")
    try:
        lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, command.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
    finally:
        lib.nft_ctx_free(ctx)
    if rc != 0:
        raise NftError(err.strip() or f"nftables refused the command (status {rc})")
    return out


class Nft:
    """nftables in one network namespace (``netns``: a name or path; None: this one)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns_path(netns) if netns else None

    def run(self, commands: list[dict[str, Any]]) -> None:
        """Apply ``commands`` (libnftables-json(5) command objects) as one transaction."""
        doc = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
        call_in(self.netns, _run, doc)

    def replace_table(self, family: str, name: str, body: list[dict[str, Any]]) -> None:
        """Make table ``family name`` hold exactly ``body`` (chains, sets, rules: "add"
        objects without the table), atomically: before the call the old table is in
        force, after it the new one, and nothing in between."""
        table = {"family": family, "name": name}
        self.run([{"add": {"table": table}}, {"delete": {"table": table}},
                  {"add": {"table": table}}, *body])  # fmt: skip

    def delete_table(self, family: str, name: str) -> bool:
        """Remove the table if it is there; whether it was."""
        if self.table(family, name) is None:
            return False
        self.run([{"delete": {"table": {"family": family, "name": name}}}])
        return True

    def table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The objects of one table as libnftables lists them, or None when it is absent."""
        try:
            out = call_in(self.netns, _run, f"list table {family} {name}")
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        items: list[dict[str, Any]] = json.loads(out).get("nftables", []) if out else []
        return [i for i in items if "metainfo" not in i]

    def counters(self, family: str, name: str) -> dict[str, int]:
        """Packets each counted rule of the table matched, by the rule's comment
        (empty when the table is absent)."""
        out: dict[str, int] = {}
        for obj in self.table(family, name) or []:
            rule = obj.get("rule")
            if not rule:
                continue
            for e in rule.get("expr", []):
                if "counter" in e:
                    out[rule.get("comment", "")] = int(e["counter"].get("packets", 0))
        return out
