"""Running a delegated CNI plugin (an IPAM plugin such as host-local) from a plugin.

Design notes. The spec's delegation is plain process execution: find the
executable named by ``ipam.type`` in ``CNI_PATH``, run it with the caller's
environment (``CNI_COMMAND`` set to the verb wanted) and the caller's *full*
network configuration on stdin, read a result or an error JSON from stdout.
``Delegate`` does exactly that and nothing else; no lock is taken, because
concurrent invocations for different containers must not wait on each other
and IPAM plugins serialise their own stores (host-local locks its data dir).

Versions. A delegate is asked once per invocation (its VERSION verb) which
spec versions it speaks. It gets the configuration's own ``cniVersion`` when
it speaks it. The one deliberate exception: a 1.1.0 configuration is handed
to a delegate that stops at 1.0.0 (Debian's host-local does) as a 1.0.0
configuration, ``prevResult`` included. That is safe because 1.1.0 changed
nothing in ADD, DEL and CHECK: it added the STATUS and GC verbs and some
optional result fields, and a 1.0.0 result is read by the same ``Result``.
Such a delegate is never sent STATUS or GC (it has neither verb); see
``Delegate.speaks``. Any other mismatch is the spec's code 1.

Errors. A delegate's own error keeps its code and message, prefixed with the
delegate's name, so the runtime sees e.g. ``host-local: no IP addresses
available``; one that is missing from ``CNI_PATH`` is code 7, one that dies
without an error JSON is code 999 with its stderr.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from overlay.cni import validate
from overlay.cni.spec import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    PLUGIN_INTERNAL,
    VALID_ATTACHMENTS_KEYS,
    VERB_SINCE,
    CniError,
    Result,
    version_at_least,
)

# The newest version a delegate stopping at 1.0.0 is spoken to in, for a 1.1.0
# configuration (see the module docstring).
_DOWNGRADE = {"1.1.0": "1.0.0"}


def find_plugin(plugin_type: str, cni_path: Sequence[str]) -> str:
    """The executable for ``plugin_type`` in the directories ``cni_path``.

    Code 7 when ``plugin_type`` is not a plain file name or is in none of the
    directories; code 4 when ``cni_path`` is empty.
    """
    if not isinstance(plugin_type, str) or not plugin_type or plugin_type in (".", ".."):
        raise CniError(INVALID_CONFIG, f"ipam.type={plugin_type!r}: name a plugin, e.g. host-local")
    if "/" in plugin_type:
        raise CniError(
            INVALID_CONFIG,
            f"ipam.type={plugin_type!r}: a plugin's file name, not a path; put its directory "
            "in CNI_PATH",
        )
    if not cni_path:
        raise CniError(
            INVALID_ENV,
            f"CNI_PATH is empty: set it to the directories holding CNI plugins (e.g. "
            f"/usr/lib/cni:/opt/cni/bin) so ipam.type={plugin_type!r} can be found",
        )
    for directory in cni_path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        INVALID_CONFIG,
        f"ipam.type={plugin_type!r}: no such executable in CNI_PATH={':'.join(cni_path)}; "
        "install the plugin there, add its directory to CNI_PATH, or fix the name",
    )


class Delegate:
    """A delegated plugin for one invocation of the calling plugin.

    ``conf`` is the caller's full network configuration (the parsed JSON it got
    on stdin); ``environ`` the caller's environment, passed through with
    ``CNI_COMMAND`` (and, for ``delete``, the container) set per call. It
    waits as long as the delegate takes: the runtime bounds the whole invocation.
    """

    def __init__(
        self,
        plugin_type: str,
        conf: Mapping[str, Any],
        cni_path: Sequence[str],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.type = plugin_type
        self.executable = find_plugin(plugin_type, cni_path)
        self.conf = dict(conf)
        self.environ = dict(os.environ if environ is None else environ)
        self._versions: tuple[str, ...] | None = None

    # -- versions --------------------------------------------------------------

    def supported_versions(self) -> tuple[str, ...]:
        """What the delegate's VERSION verb reports (asked once, then remembered)."""
        if self._versions is None:
            answer = self._exec("VERSION", {"cniVersion": self.conf.get("cniVersion", "")})
            versions = answer.get("supportedVersions") if isinstance(answer, dict) else None
            if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
                raise CniError(
                    DECODE_FAILURE,
                    f"{self.type}: its VERSION answer has no supportedVersions list "
                    f"({answer!r}); is {self.executable} a CNI plugin?",
                )
            self._versions = tuple(versions)
        return self._versions

    def version(self) -> str:
        """The cniVersion this delegate is spoken to in (see the module docstring)."""
        wanted = str(self.conf.get("cniVersion", ""))
        supported = self.supported_versions()
        if wanted in supported:
            return wanted
        older = _DOWNGRADE.get(wanted)
        if older is not None and older in supported:
            # 1.1.0 -> 1.0.0: ADD/DEL/CHECK are unchanged between the two, so a
            # delegate that stops at 1.0.0 (host-local) is spoken to in 1.0.0.
            return older
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"{self.type} speaks CNI {', '.join(supported)} and cannot serve cniVersion "
            f"{wanted}: lower cniVersion to one it speaks, or use another {self.type}",
        )

    def speaks(self, verb: str) -> bool:
        """Does the delegate, at the version it is spoken to in, have ``verb``?

        CHECK arrived in 0.4.0, STATUS and GC in 1.1.0; ADD and DEL always exist.
        """
        since = VERB_SINCE.get(verb)
        return since is None or version_at_least(self.version(), since)

    # -- verbs -----------------------------------------------------------------

    def add(self) -> Result:
        """ADD: the delegate's result (an IPAM result: ips, routes, dns)."""
        answer = self._exec("ADD", self._stdin("ADD"))
        if not isinstance(answer, dict):
            raise CniError(DECODE_FAILURE, f"{self.type}: ADD printed no result object")
        return Result.from_dict(answer)

    def delete(self, container_id: str | None = None, ifname: str | None = None) -> None:
        """DEL for this invocation's container, or for ``container_id``/``ifname``
        (used by GC to release what the daemon has just removed)."""
        env: dict[str, str] = {}
        if container_id is not None:
            env["CNI_CONTAINERID"] = container_id
        if ifname is not None:
            env["CNI_IFNAME"] = ifname
        self._exec("DEL", self._stdin("DEL"), env)

    def check(self) -> None:
        self._exec("CHECK", self._stdin("CHECK"))

    def status(self) -> None:
        self._exec("STATUS", self._stdin("STATUS"))

    def gc(self) -> None:
        self._exec("GC", self._stdin("GC"))

    # -- the process -----------------------------------------------------------

    def _stdin(self, verb: str) -> dict[str, Any]:
        """The caller's configuration, in the delegate's version."""
        conf = copy.deepcopy(self.conf)
        version = self.version()
        conf["cniVersion"] = version
        prev = conf.get("prevResult")
        if isinstance(prev, dict) and "cniVersion" in prev:
            # A result carries its own version; keep it in step with the
            # configuration's so a 1.0.0 delegate reads it as its own.
            prev["cniVersion"] = version
        if verb != "GC":
            for key in VALID_ATTACHMENTS_KEYS:
                conf.pop(key, None)
        return conf

    def _exec(
        self, verb: str, stdin: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> Any:
        environ = {**self.environ, "CNI_COMMAND": verb, **(env or {})}
        try:
            done = subprocess.run(
                [self.executable],
                input=json.dumps(stdin).encode(),
                capture_output=True,
                env=environ,
                check=False,
            )
        except OSError as exc:
            raise CniError(
                IO_FAILURE,
                f"{self.type}: cannot run {self.executable} ({exc.strerror}); "
                "reinstall it or fix its permissions",
            ) from None
        if done.stderr:
            # The runtime logs a plugin's stderr: the delegate's belongs there too.
            sys.stderr.write(done.stderr.decode(errors="replace"))
        if done.returncode != 0:
            raise self._error(verb, done)
        if not done.stdout.strip():
            return None
        try:
            return validate.load_json(done.stdout)
        except validate.Invalid:
            raise CniError(
                DECODE_FAILURE,
                f"{self.type}: {verb} succeeded but printed no JSON "
                f"({done.stdout[:80]!r}); is {self.executable} a CNI plugin?",
            ) from None

    def _error(self, verb: str, done: subprocess.CompletedProcess[bytes]) -> CniError:
        try:
            body = validate.load_json(done.stdout)
        except validate.Invalid:
            body = None
        if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"]:
            return CniError(
                body["code"],
                f"{self.type}: {body.get('msg', '')}",
                str(body.get("details", "")),
            )
        tail = done.stderr.decode(errors="replace").strip()[-300:] or "(no stderr)"
        return CniError(
            PLUGIN_INTERNAL,
            f"{self.type}: {verb} failed with exit status {done.returncode} and no CNI error: "
            f"{tail}; run {self.executable} by hand with the same input to see why",
        )
