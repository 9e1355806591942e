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

Every bad item is reported with its line and position in the list (all of them, not just
the first), and nothing is sent. A file may change one key only once: two changes to one
key in one file would race each other on the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from core.errors import InvalidKeyError, LimitValidationError
from core.keys import validate_key
from schemas.limits import Algorithm, Burst, Limit, Requests, WindowMs

__all__ = ["BulkChange", "BulkFileError", "parse_bulk_file", "parse_bulk_text"]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BulkFileError(LimitValidationError):
    """A file that cannot be applied; ``problems`` has one line per bad item."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Item(msgspec.Struct, forbid_unknown_fields=True):
    key: str  # checked by validate_key: the API's wording, not msgspec's regex
    delete: bool = False
    requests: Requests | None = None
    window_ms: WindowMs | None = None
    algorithm: Algorithm = "token_bucket"
    burst: Burst | None = None

    def change(self) -> Limit | None:
        validate_key(self.key)
        if self.delete:
            if self.requests is not None or self.window_ms is not None:
                raise ValueError("a delete item takes no requests or window_ms")
            return None
        if self.requests is None or self.window_ms is None:
            raise ValueError("requests and window_ms are required (or delete: true)")
        return Limit(self.requests, self.window_ms, self.algorithm, self.burst)


@dataclass(frozen=True, slots=True)
class BulkChange:
    key: str
    limit: Limit | None  # None: delete
    line: int


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
            limit = item.change()
        except InvalidKeyError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except (msgspec.ValidationError, ValueError) as exc:
            problems.append(f"{where}: {_field_first(str(exc))}")
            continue
        if item.key in seen:
            problems.append(f"{where}: key {item.key!r} already appears in item {seen[item.key]}")
            continue
        seen[item.key] = index
        changes.append(BulkChange(item.key, limit, line))
    if problems:
        raise BulkFileError(problems)
    return changes


def _field_first(message: str) -> str:
    text, sep, where = message.rpartition(" - at `$.")
    return f"{where.rstrip('`')}: {text}" if sep else message
