"""Bulk limit files for ``throttler apply``: parse and validate everything before sending.

A file (YAML or JSON) is a list of items::

    - key: free:client-123
      requests: 100
      window_ms: 3600000
    - key: pro:client-456
      requests: 10000
      window_ms: 3600000
      algorithm: gcra
      burst: 500
    - key: retired-client
      delete: true
    - key: api:partner                 # several limits on one key
      limits:
        - {requests: 5, window_ms: 1000}
        - {requests: 10000, window_ms: 86400000, algorithm: fixed_window}
    - policy: free-tier                # a policy: limits for every key a pattern matches
      match: ["free:*"]
      limits:
        - {requests: 10, window_ms: 1000}
    - policy: old-tier
      delete: true

Every bad item is reported with its line and position in the list (all of them, not just
the first), and nothing is sent. A file may change one key (one policy) only once: two
changes to one key in one file would race each other on the stream.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from core.errors import InvalidKeyError, LimitValidationError
from core.keys import validate_key
from schemas.events import ConfigEvent, DeleteLimit, DeletePolicy, SetLimit, SetLimits, SetPolicy
from schemas.limits import (
    POLICY_NAME_PATTERN,
    Algorithm,
    Burst,
    Calendar,
    Limit,
    Limits,
    Pattern,
    Policy,
    Requests,
    WindowMs,
)

__all__ = ["BulkChange", "BulkFileError", "parse_bulk_file", "parse_bulk_text"]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BulkFileError(LimitValidationError):
    """A file that cannot be applied; ``problems`` has one line per bad item."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Item(msgspec.Struct, forbid_unknown_fields=True):
    key: str | None = None  # checked by validate_key: the API's wording, not msgspec's regex
    policy: str | None = None
    delete: bool = False
    requests: Requests | None = None
    window_ms: WindowMs | None = None
    algorithm: Algorithm = "token_bucket"
    burst: Burst | None = None
    calendar: Calendar | msgspec.UnsetType = msgspec.UNSET
    limits: Limits | None = None
    shadow: bool = False
    match: list[Pattern] | None = None

    def change(self) -> BulkChange:
        if (self.key is None) == (self.policy is None):
            raise ValueError("an item names a key or a policy (one of them)")
        single = self.requests is not None or self.window_ms is not None
        if self.delete and (single or self.limits is not None or self.match is not None):
            raise ValueError("a delete item takes no requests or window_ms (no limits)")
        if self.policy is not None:
            if not _POLICY_NAME.fullmatch(self.policy):
                raise ValueError("policy: a name is 1-64 characters of A-Z a-z 0-9 _ - . :")
            if self.delete:
                return BulkChange(self.policy, None, 0, kind="policy")
            if self.limits is None:
                raise ValueError("a policy item needs limits (or delete: true)")
            policy = Policy(self.limits, self.match or [], self.shadow)
            return BulkChange(self.policy, None, 0, kind="policy", policy=policy)
        assert self.key is not None
        validate_key(self.key)
        if self.match is not None:
            raise ValueError("match belongs to policies")
        if self.delete:
            return BulkChange(self.key, None, 0)
        if self.limits is not None:
            if single:
                raise ValueError("give one limit (requests, window_ms, ...) or limits, not both")
            return BulkChange(self.key, None, 0, limits=tuple(self.limits), shadow=self.shadow)
        if self.requests is None or self.window_ms is None:
            raise ValueError("requests and window_ms are required (or delete: true, or limits)")
        limit = Limit(self.requests, self.window_ms, self.algorithm, self.burst, self.calendar)
        return BulkChange(self.key, limit, 0)


_POLICY_NAME = re.compile(POLICY_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class BulkChange:
    key: str  # the key, or the policy's name (kind "policy")
    limit: Limit | None  # None: delete (or several limits, or a policy)
    line: int
    kind: str = "key"
    limits: tuple[Limit, ...] | None = None  # a key with several limits
    shadow: bool = False
    policy: Policy | None = None  # kind "policy": None deletes it

    def event(self, actor: str, submitted_at_ms: int) -> ConfigEvent:
        """The config event that makes this change."""
        common: dict[str, Any] = {"actor": actor, "submitted_at_ms": submitted_at_ms}
        if self.kind == "policy":
            if self.policy is None:
                return DeletePolicy(**common, name=self.key)
            return SetPolicy(**common, name=self.key, policy=self.policy)
        if self.limits is not None:
            return SetLimits(**common, key=self.key, limits=list(self.limits), shadow=self.shadow)
        if self.limit is None:
            return DeleteLimit(**common, key=self.key)
        return SetLimit(**common, key=self.key, limit=self.limit)


def parse_bulk_file(path: str | Path) -> list[BulkChange]:
    """Every change in the file, validated; BulkFileError lists every bad item."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BulkFileError([f"{path}: cannot read: {exc}"]) from None
    return parse_bulk_text(text, str(path))


def parse_bulk_text(text: str, name: str) -> list[BulkChange]:
    """The changes in ``text`` (YAML or JSON, read from ``name``), validated."""
    try:
        root = yaml.compose(text, Loader=_Loader)  # nodes, for line numbers
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise BulkFileError([f"{name}: not valid YAML or JSON: {exc}"]) from None
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise BulkFileError([f"{name}:{root.start_mark.line + 1}: expected a list of items"])
    changes = []
    problems = []
    seen: dict[str, int] = {}
    for index, (node, raw) in enumerate(zip(root.value, data, strict=True), start=1):
        line = node.start_mark.line + 1
        where = f"{name}:{line}: item {index}"
        try:
            item = msgspec.convert(raw, _Item)
            change = dataclasses.replace(item.change(), line=line)
        except InvalidKeyError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except (msgspec.ValidationError, ValueError) as exc:
            problems.append(f"{where}: {_field_first(str(exc))}")
            continue
        label = f"{change.kind} {change.key!r}"
        if label in seen:
            problems.append(f"{where}: {label} already appears in item {seen[label]}")
            continue
        seen[label] = index
        changes.append(change)
    if problems:
        raise BulkFileError(problems)
    return changes


def _field_first(message: str) -> str:
    text, sep, where = message.rpartition(" - at `$.")
    return f"{where.rstrip('`')}: {text}" if sep else message
