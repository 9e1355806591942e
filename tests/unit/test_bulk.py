"""Bulk limit files (``throttler apply``): everything is validated before anything is sent,
and a bad item is named by its line and its position in the list."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from core.bulk import BulkChange, BulkFileError, parse_bulk_file, parse_bulk_text
from core.errors import LimitValidationError
from schemas.limits import Limit

if TYPE_CHECKING:
    from pathlib import Path

GOOD_YAML = """\
# limits for the partner tier
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
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(LimitValidationError) as info:
        parse_bulk_file(path)
    return str(info.value)


def test_yaml_items_become_changes_with_their_lines(tmp_path: Path) -> None:
    changes = parse_bulk_file(_write(tmp_path, "limits.yaml", GOOD_YAML))
    assert changes == [
        BulkChange("free:client-123", Limit(requests=100, window_ms=3_600_000), 2),
        BulkChange(
            "pro:client-456",
            Limit(requests=10_000, window_ms=3_600_000, algorithm="gcra", burst=500),
            5,
        ),
        BulkChange("retired-client", None, 11),
    ]


def test_json_files_are_read_too(tmp_path: Path) -> None:
    items = [
        {"key": "a", "requests": 5, "window_ms": 1000, "algorithm": "fixed_window"},
        {"key": "b", "delete": True},
    ]
    text = "[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]\n"
    changes = parse_bulk_file(_write(tmp_path, "limits.json", text))
    assert changes == [
        BulkChange("a", Limit(requests=5, window_ms=1000, algorithm="fixed_window"), 2),
        BulkChange("b", None, 3),
    ]


def test_an_empty_file_has_no_changes(tmp_path: Path) -> None:
    assert parse_bulk_file(_write(tmp_path, "empty.yaml", "# nothing yet\n")) == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("  requests: 0\n  window_ms: 1000", "requests: Expected `int` >= 1"),
        ("  requests: ten\n  window_ms: 1000", "requests: Expected `int | null`, got `str`"),
        (
            "  requests: 5\n  window_ms: 1000\n  algorithm: leaky",
            "algorithm: Invalid enum value 'leaky'",
        ),
        (
            "  requests: 5\n  window_ms: 1000\n  colour: red",
            "Object contains unknown field `colour`",
        ),
        ("  requests: 5", "requests and window_ms are required (or delete: true"),
        ("  delete: true\n  requests: 5", "a delete item takes no requests or window_ms"),
        (
            "  requests: 5\n  window_ms: 1000\n  algorithm: sliding_window\n  burst: 2",
            "burst applies to token_bucket and gcra, not sliding_window",
        ),
    ],
)
def test_a_bad_item_is_named_by_line_and_position(tmp_path: Path, item: str, message: str) -> None:
    text = GOOD_YAML + "- key: bad-one\n" + item + "\n- key: after\n  delete: true\n"
    path = _write(tmp_path, "limits.yaml", text)
    error = _error(path)
    assert error.startswith(f"{path}:13: item 4: "), error
    assert message in error
    assert not error.endswith(": "), error


def test_an_invalid_key_is_named_in_the_apis_words(tmp_path: Path) -> None:
    path = _write(tmp_path, "limits.yaml", GOOD_YAML + "- key: 'a{b}'\n  delete: true\n")
    assert _error(path) == (
        f"{path}:13: item 4: key must be 1-256 characters (at most 256 bytes of UTF-8) "
        "without whitespace, control characters, / { } or * "
        "(got 4 bytes, first invalid character '{')"
    )


def test_every_bad_item_is_reported(tmp_path: Path) -> None:
    text = (
        GOOD_YAML
        + "- key: bad key\n  delete: true\n"
        + "- key: ok\n  requests: 0\n  window_ms: 1000\n"
        + "- key: free:client-123\n  delete: true\n"
    )
    path = _write(tmp_path, "limits.yaml", text)
    with pytest.raises(BulkFileError) as info:
        parse_bulk_file(path)
    assert info.value.problems == [
        f"{path}:13: item 4: key must be 1-256 characters (at most 256 bytes of UTF-8) "
        "without whitespace, control characters, / { } or * "
        "(got 7 bytes, first invalid character ' ')",
        f"{path}:15: item 5: requests: Expected `int` >= 1",
        f"{path}:18: item 6: key 'free:client-123' already appears in item 1",
    ]


def test_text_is_parsed_like_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "limits.yaml", GOOD_YAML)
    assert parse_bulk_text(GOOD_YAML, "<stdin>") == parse_bulk_file(path)


def test_a_key_may_appear_only_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "limits.yaml", GOOD_YAML + "- key: free:client-123\n  delete: true\n")
    assert _error(path) == f"{path}:13: item 4: key 'free:client-123' already appears in item 1"


def test_the_whole_file_is_validated_before_anything_is_returned(tmp_path: Path) -> None:
    items = "".join(f"- key: k{i}\n  requests: 1\n  window_ms: 1000\n" for i in range(1, 1000))
    path = _write(tmp_path, "big.yaml", items + "- key: k1000\n  requests: -1\n  window_ms: 1\n")
    assert _error(path).startswith(f"{path}:2998: item 1000: requests:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("key: a\nrequests: 1\n", ":1: expected a list of items"),
        ("- key: a\n  requests: [1\n", "not valid YAML or JSON"),
        ("- 42\n", ":1: item 1: Expected `object`, got `int`"),
    ],
)
def test_files_that_are_not_lists_of_items(tmp_path: Path, text: str, message: str) -> None:
    assert message in _error(_write(tmp_path, "limits.yaml", text))


def test_an_unreadable_file_is_reported(tmp_path: Path) -> None:
    assert "cannot read" in _error(tmp_path / "missing.yaml")


def test_policies_and_keys_with_several_limits_are_changes_too(tmp_path: Path) -> None:
    text = (
        "- key: api:partner\n"
        "  limits:\n"
        "    - {requests: 5, window_ms: 1000}\n"
        "    - {requests: 100, window_ms: 86400000, algorithm: fixed_window}\n"
        "  shadow: true\n"
        "- policy: free-tier\n"
        '  match: ["free:*", "trial:acme"]\n'
        "  limits: [{requests: 10, window_ms: 1000}]\n"
        "- policy: old-tier\n"
        "  delete: true\n"
    )
    changes = parse_bulk_text(text, "f.yaml")
    events = [c.event("cli:test", 1) for c in changes]
    assert [type(e).__name__ for e in events] == ["SetLimits", "SetPolicy", "DeletePolicy"]
    assert events[0].shadow is True  # type: ignore[union-attr]
    assert [c.line for c in changes] == [1, 6, 9]
    policy = changes[1].policy
    assert policy is not None
    assert policy.match == ["free:*", "trial:acme"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("- policy: p\n", "a policy item needs limits"),
        ("- policy: 'bad name'\n  delete: true\n", "policy: a name is 1-64 characters"),
        ("- key: k\n  policy: p\n  delete: true\n", "a key or a policy"),
        ("- key: k\n  match: ['x']\n  limits: [{requests: 1, window_ms: 1}]\n", "match"),
        ("- policy: p\n  limits: [{requests: 1, window_ms: 1}]\n  match: ['a*b']\n", "match"),
        ("- policy: p\n  delete: true\n- policy: p\n  delete: true\n", "already appears"),
    ],
)
def test_bad_policy_items_are_reported(item: str, message: str) -> None:
    with pytest.raises(BulkFileError) as info:
        parse_bulk_text(item, "f.yaml")
    assert message in str(info.value)
