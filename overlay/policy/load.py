"""Manifests in, typed policy objects out: YAML or JSON, as kubectl takes them.

Accepted: one or several YAML documents (``---``), JSON (one object), a
kubectl-style ``List`` (or ``NetworkPolicyList`` ...) with ``items``, a file,
or a directory (its ``*.yaml``, ``*.yml`` and ``*.json`` files in name order).
Each object must be a NetworkPolicy (networking.k8s.io/v1), an
AdminNetworkPolicy or a BaselineAdminNetworkPolicy
(policy.networking.k8s.io/v1alpha1). Empty documents are skipped.

Loading is all-or-nothing: the first bad object raises ``ConfigError`` whose
field names the document and the path inside it, e.g.
``policy.yaml document 2 (NetworkPolicy x/web) spec.ingress[0].from[1]``,
and nothing is returned.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from overlay.errors import ConfigError
from overlay.policy.model import (
    ANP_API,
    NP_API,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    NetworkPolicy,
)

PolicyObject = NetworkPolicy | AdminNetworkPolicy | BaselineAdminNetworkPolicy
KINDS = {
    "NetworkPolicy": NP_API,
    "AdminNetworkPolicy": ANP_API,
    "BaselineAdminNetworkPolicy": ANP_API,
}
MANIFEST_BYTES_MAX = 16 * 1024 * 1024


def _texts(source: str | bytes | os.PathLike[str]) -> list[tuple[str, str]]:
    """(label, text) pairs from a path, a directory or literal text."""
    if isinstance(source, bytes):
        return [("<text>", source.decode("utf-8", errors="replace"))]
    if isinstance(source, str) and (
        "\n" in source or source.lstrip().startswith(("{", "[", "---", "apiVersion:", "kind:"))
    ):
        return [("<text>", source)]
    path = Path(source)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
        )
        return [pair for f in files for pair in _texts(f)]
    if not path.is_file():
        raise ConfigError("path", str(source), "an existing file or directory, or manifest text")
    if path.stat().st_size > MANIFEST_BYTES_MAX:
        raise ConfigError("path", str(source), f"a manifest of at most {MANIFEST_BYTES_MAX} bytes")
    return [(str(path), path.read_text(encoding="utf-8"))]


def _documents(label: str, text: str) -> list[Any]:
    try:
        if text.lstrip().startswith(("{", "[")):
            return [json.loads(text)]
        return list(yaml.safe_load_all(text))
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(label, "<manifest>", f"valid YAML or JSON ({e})") from None


def _describe(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    name = ns = None
    if isinstance(meta, Mapping):
        name, ns = meta.get("name"), meta.get("namespace")
    who = f"{ns}/{name}" if ns else f"{name}"
    return f"{obj.get('kind')} {who}"


def _one(obj: Any, where: str, namespace: str) -> PolicyObject:
    if not isinstance(obj, Mapping):
        raise ConfigError(where, obj, "a Kubernetes object (a mapping with apiVersion and kind)")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where} kind", kind, f"one of {', '.join(KINDS)} (or a List of them)")
    if obj.get("apiVersion") != KINDS[kind]:
        raise ConfigError(f"{where} apiVersion", obj.get("apiVersion"), f"{KINDS[kind]} for {kind}")
    try:
        if kind == "NetworkPolicy":
            return NetworkPolicy.from_dict(obj, namespace=namespace)
        if kind == "AdminNetworkPolicy":
            return AdminNetworkPolicy.from_dict(obj)
        return BaselineAdminNetworkPolicy.from_dict(obj)
    except ConfigError as e:
        raise ConfigError(f"{where} ({_describe(obj)}) {e.field}", e.value, e.expected) from None


def _objects(source: str | bytes | os.PathLike[str] | list[Any]) -> list[tuple[str, Any]]:
    """(where, document) pairs: of text, a file or a directory; or of a list of
    objects already decoded (an API request's), named ``objects[i]``."""
    if isinstance(source, list):
        return [(f"objects[{i}]", o) for i, o in enumerate(source)]
    return [
        (f"{label} document {n}", doc)
        for label, text in _texts(source)
        for n, doc in enumerate(_documents(label, text), start=1)
        if doc is not None
    ]


@dataclasses.dataclass(frozen=True)
class Document:
    """One object of a manifest: where it is (``policy.yaml document 2``, for
    error messages), the mapping as written, and what it parsed to."""

    where: str
    raw: Mapping[str, Any]
    obj: PolicyObject


def documents(
    source: str | bytes | os.PathLike[str] | list[Any],
    *,
    namespace: str = "default",
    extra: Mapping[str, Callable[[Mapping[str, Any], str], Any]] | None = None,
) -> list[Document]:
    """Every object in ``source`` with where it is and its mapping as written
    (``load`` without the mappings). ``extra``: more kinds this caller takes
    (kind -> a parser of (mapping, where) that raises ConfigError); their
    ``obj`` is what the parser returns. All-or-nothing, as ``load``."""
    out: list[Document] = []
    seen: dict[tuple[str, str], str] = {}
    for where, doc in _objects(source):
        items: list[tuple[str, Any]] = [(where, doc)]
        if isinstance(doc, Mapping) and str(doc.get("kind", "")).endswith("List"):
            raw = doc.get("items")
            if not isinstance(raw, list):
                raise ConfigError(f"{where} items", raw, "a list of objects")
            items = [(f"{where} items[{i}]", o) for i, o in enumerate(raw)]
        for w, o in items:
            kind = o.get("kind") if isinstance(o, Mapping) else None
            if extra and isinstance(kind, str) and kind in extra:
                obj: Any = extra[kind](o, w)
                key = (kind, str(getattr(obj, "name", "")))
            else:
                if extra and isinstance(o, Mapping) and kind not in KINDS:
                    known = ", ".join([*KINDS, *extra])
                    raise ConfigError(f"{w} kind", kind, f"one of {known} (or a List of them)")
                obj = _one(o, w, namespace)
                key = (
                    type(obj).__name__,
                    obj.key if isinstance(obj, NetworkPolicy) else obj.name,
                )
            if key in seen:
                raise ConfigError(
                    f"{w} metadata.name", key[1], f"a name not already used ({seen[key]})"
                )
            seen[key] = w
            out.append(Document(w, o, obj))
    return out


def load(
    source: str | bytes | os.PathLike[str], *, namespace: str = "default"
) -> list[PolicyObject]:
    """Every policy object in ``source`` (path, directory, or text), in order.

    ``namespace`` is given to NetworkPolicies whose metadata names none (as
    ``kubectl apply -n``). Two objects of the same kind and name (and
    namespace) are refused: applying them would keep only the last.
    """
    return [d.obj for d in documents(source, namespace=namespace)]


def split(
    objs: list[PolicyObject],
) -> tuple[list[NetworkPolicy], list[AdminNetworkPolicy], BaselineAdminNetworkPolicy | None]:
    """(networkpolicies, admin, baseline) out of ``load``'s list, for ``evaluate``."""
    nps = [o for o in objs if isinstance(o, NetworkPolicy)]
    anps = [o for o in objs if isinstance(o, AdminNetworkPolicy)]
    banps = [o for o in objs if isinstance(o, BaselineAdminNetworkPolicy)]
    return nps, anps, banps[0] if banps else None
