"""Envoy RLS configs without I/O: envoyproxy/ratelimit YAML parsed and validated, the
descriptor lookup of the reference server (config_impl.go GetLimit), counter keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from api.rls.table import RuleTable
from core.bulk import BulkFileError
from core.errors import SettingsError
from core.keys import KeySpace
from core.settings import load_settings
from schemas.events import SetRlsDomain, config_event_decoder
from schemas.rls import RlsDomain
from throttler.cli import main
from throttler.rls_file import looks_like_envoy, parse_envoy_text

if TYPE_CHECKING:
    from pathlib import Path

README_EXAMPLE = """\
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5
  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: DAY
      requests_per_unit: 100
  - key: to_number
    value: 2065550000
    rate_limit:
      unlimited: true
  - key: path
    value: /admin/*
    shadow_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 2
      name: admin
  - key: path
    value: /admin/keys*
    rate_limit:
      unit: second
      requests_per_unit: 1
"""


def table(text: str = README_EXAMPLE) -> RuleTable:
    changes = parse_envoy_text(text, "t.yaml")
    t = RuleTable()
    t.load({c.domain.domain: c.domain for c in changes}, 1)
    return t


def test_readme_example_parses_with_units_in_any_case_and_numbers_as_text() -> None:
    [change] = parse_envoy_text(README_EXAMPLE, "t.yaml")
    domain = change.domain
    assert domain.domain == "messaging"
    units = [d.rate_limit.unit for d in domain.descriptors if d.rate_limit is not None]
    assert units == ["day", None, "minute", "second"]
    assert domain.descriptors[2].value == "2065550000"
    assert looks_like_envoy(README_EXAMPLE)
    assert not looks_like_envoy("- key: a\n  requests: 1\n  window_ms: 1000\n")


def test_lookup_follows_the_reference_server() -> None:
    t = table()
    rule = t.lookup("messaging", [("message_type", "marketing"), ("to_number", "1")])
    assert rule is not None
    assert (rule.requests_per_unit, rule.window_ms, rule.path) == (
        5,
        86_400_000,
        "message_type_marketing.to_number",
    )
    top = t.lookup("messaging", [("to_number", "1")])
    assert top is not None
    assert top.requests_per_unit == 100
    # An exact value beats the key-only node.
    exact = t.lookup("messaging", [("to_number", "2065550000")])
    assert exact is not None
    assert exact.unlimited
    # A node without a limit, a deeper request than the config, unknowns: no rule.
    assert t.lookup("messaging", [("message_type", "marketing")]) is None
    assert t.lookup("messaging", [("to_number", "1"), ("more", "x")]) is None
    assert t.lookup("messaging", [("message_type", "other"), ("to_number", "1")]) is None
    assert t.lookup("messaging", [("nothing", "x")]) is None
    assert t.lookup("other-domain", [("to_number", "1")]) is None


def test_wildcards_match_by_prefix_first_listed_first() -> None:
    t = table()
    admin = t.lookup("messaging", [("path", "/admin/users")])
    assert admin is not None
    assert (admin.name, admin.shadow) == ("admin", True)
    # Both wildcards match /admin/keys/1: the first listed wins (the reference's order).
    first = t.lookup("messaging", [("path", "/admin/keys/1")])
    assert first is not None
    assert first.name == "admin"
    assert t.lookup("messaging", [("path", "/public")]) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 1}\n", "unit"),
        (
            "domain: d\ndescriptors:\n  - key: k\n"
            "    rate_limit: {unit: year, requests_per_unit: 1}\n",
            "unit",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n"
            "    rate_limit: {unlimited: true, unit: second}\n",
            "unlimited",
        ),
        ("domain: d\ndescriptors:\n  - key: k\n  - key: k\n", "duplicate"),
        ("domain: d\ndescriptors:\n  - value: v\n", "key"),
        ("domain: ''\n", "domain"),
        ("domain: d\ndescriptors:\n  - key: k\n    colour: red\n", "colour"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n"
            "      requests_per_unit: 1\n      name: a\n      replaces: [{name: a}]\n",
            "replaces",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: month\n"
            "      requests_per_unit: 200000\n      algorithm: sliding_window\n",
            "100000",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n"
            "      requests_per_unit: 2\n      algorithm: concurrency\n",
            "leases",
        ),
        ("domain: d\n---\ndomain: d\n", "also defined"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(BulkFileError) as caught:
        parse_envoy_text(text, "bad.yaml")
    assert problem in str(caught.value)
    assert "bad.yaml:" in str(caught.value)


def test_extensions_any_window_and_algorithm() -> None:
    text = (
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      requests_per_unit: 30\n"
        "      window_ms: 30000\n      algorithm: token_bucket\n      burst: 5\n"
    )
    rule = table(text).lookup("d", [("k", "v")])
    assert rule is not None
    assert rule.limit is not None
    assert (rule.limit.window_ms, rule.limit.algorithm, rule.limit.burst, rule.unit) == (
        30_000,
        "token_bucket",
        5,
        0,
    )


def test_a_domain_event_round_trips_and_must_name_its_domain() -> None:
    [change] = parse_envoy_text(README_EXAMPLE, "t.yaml")
    event = change.event("cli", 1)
    decoded = config_event_decoder.decode(msgspec.json.encode(event))
    assert isinstance(decoded, SetRlsDomain)
    assert decoded.config == change.domain
    wrong = msgspec.json.encode(event).replace(b'"domain":"messaging",', b'"domain":"x",', 1)
    with pytest.raises(msgspec.ValidationError):
        config_event_decoder.decode(wrong)


def test_counter_keys_are_per_descriptor_and_cannot_meet_http_keys() -> None:
    keys = KeySpace("p")
    a = keys.descriptor_key("d", [("k", "a/b"), ("x", "{y}")])
    assert a == "rls/d/k=a%2Fb/x=%7By%7D"
    assert keys.descriptor_key("d", [("k", "a")]) != keys.descriptor_key("d", [("k", "b")])
    assert keys.descriptor_key("d", [("k=a", "")]) != keys.descriptor_key("d", [("k", "a")])
    # One hash tag per descriptor: braces inside values are escaped.
    assert keys.script_keys(a)[0].count("{") == 1


def test_rls_settings() -> None:
    default = load_settings({}, env_file=None)
    assert (default.rls_bind_address, default.rls_enabled) == ("127.0.0.1:8081", True)
    off = load_settings({"RLS_BIND_ADDRESS": "off"}, env_file=None)
    assert not off.rls_enabled
    assert load_settings(
        {"RLS_RESPONSE_HEADERS": "X-RateLimit"}, env_file=None
    ).rls_response_headers == ("x-ratelimit")
    with pytest.raises(SettingsError, match="RLS_BIND_ADDRESS must be HOST:PORT"):
        load_settings({"RLS_BIND_ADDRESS": "8081"}, env_file=None)


def test_stored_domains_decode() -> None:
    domain = msgspec.convert({"domain": "d", "descriptors": [{"key": "k"}]}, RlsDomain)
    assert msgspec.json.decode(msgspec.json.encode(domain), type=RlsDomain) == domain


def test_apply_check_detects_the_format_and_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "rl.yaml"
    good.write_text(README_EXAMPLE)
    assert main(["apply", "--check", str(good)]) == 0
    assert "1 Envoy RLS domains, all valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight}\n")
    assert main(["apply", "--check", "--format", "envoy", str(bad)]) == 2
    assert "bad.yaml:1:" in capsys.readouterr().err
    # A bulk file forced as Envoy's format is refused, not misread.
    bulk = tmp_path / "bulk.yaml"
    bulk.write_text("- key: a\n  requests: 1\n  window_ms: 1000\n")
    assert main(["apply", "--check", "--format", "envoy", str(bulk)]) == 2
    assert main(["apply", "--check", str(bulk)]) == 0
