"""Envoy RLS config files for ``throttler apply``: envoyproxy/ratelimit's YAML format.

A file holds one domain (as the reference server's files do) or several as YAML documents
separated by ``---``; every problem is reported and nothing is sent. Detected when the
file is a mapping with ``domain`` (a Throttler bulk file is a list), or forced with
``--format envoy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from core.bulk import BulkFileError
from schemas.events import ConfigEvent, SetRlsDomain
from schemas.rls import RlsDomain

__all__ = ["RlsChange", "looks_like_envoy", "parse_envoy_text"]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class RlsChange:
    """One domain to publish (the interface of :class:`core.bulk.BulkChange`)."""

    domain: RlsDomain
    line: int

    @property
    def key(self) -> str:
        return self.domain.domain

    def event(self, actor: str, submitted_at_ms: int) -> ConfigEvent:
        return SetRlsDomain(
            actor=actor,
            submitted_at_ms=submitted_at_ms,
            domain=self.domain.domain,
            config=self.domain,
        )


def _documents(text: str, name: str) -> list[tuple[Any, int]]:
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise BulkFileError([f"{name}: not valid YAML: {exc}"]) from None
    return [(doc, node.start_mark.line + 1) for doc, node in zip(docs, nodes, strict=True)]


def _normalize(node: Any) -> Any:
    """As the reference server reads YAML: units in any case, scalar values as text."""
    if isinstance(node, list):
        return [_normalize(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _normalize(v) for k, v in node.items()}
    if isinstance(out.get("unit"), str):
        out["unit"] = out["unit"].lower()
    for name in ("value", "key", "domain", "name"):
        if isinstance(out.get(name), int | float) and not isinstance(out[name], bool):
            out[name] = str(out[name])
    return out


def looks_like_envoy(text: str) -> bool:
    """True when the text's first YAML document is a mapping with a ``domain``."""
    try:
        first = next(iter(yaml.load_all(text, Loader=_Loader)), None)
    except yaml.YAMLError:
        return False
    return isinstance(first, dict) and "domain" in first


def parse_envoy_text(text: str, name: str) -> list[RlsChange]:
    """Every domain of the file, validated; BulkFileError lists every problem."""
    problems: list[str] = []
    changes: list[RlsChange] = []
    seen: dict[str, int] = {}
    for doc, line in _documents(text, name):
        if doc is None:
            continue
        try:
            domain = msgspec.convert(_normalize(doc), RlsDomain)
        except msgspec.ValidationError as exc:
            problems.append(f"{name}:{line}: {exc}")
            continue
        if domain.domain in seen:
            problems.append(
                f"{name}:{line}: domain {domain.domain!r} is also defined at line "
                f"{seen[domain.domain]} (one document per domain)"
            )
            continue
        seen[domain.domain] = line
        changes.append(RlsChange(domain, line))
    if problems:
        raise BulkFileError(problems)
    if not changes:
        raise BulkFileError([f"{name}: no domain in the file"])
    return changes


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BulkFileError([f"{path}: cannot read: {exc}"]) from None
