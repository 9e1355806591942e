"""Rate-limit key validation and the Redis key names built from one prefix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from core.errors import InvalidKeyError
from core.keys import KEY_PATTERN, KeySpace, validate_key

valid_keys = st.from_regex(KEY_PATTERN, fullmatch=True)


@pytest.mark.parametrize(
    "key",
    [
        "free:client-123",
        "a",
        "A-Z_a.z:0-9",
        "user.42",
        "..",
        "x" * 256,
        "bob@example.com",  # issue 10: any UTF-8 text without the few separators
        "café",
        "10.0.0.1",
        "a\\b",
        "a%20b",
        "ｆｕｌｌ",  # fullwidth letters
        "٣",  # Arabic-Indic digit
        "key😀",
        "é" * 128,  # 256 bytes
    ],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "x" * 257,
        "é" * 129,  # 258 bytes of UTF-8
        "a{b",
        "a}b",
        "{tag}",
        "a b",
        "a\tb",
        "a\u00a0b",  # no-break space
        "a/b",
        "a\nb",
        "trailing-newline\n",
        "a\x00b",
        "a\x7fb",
        "a\x85b",  # a C1 control character
        "a*b",
    ],
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key)
    message = str(info.value)
    assert "1-256 characters" in message
    assert "without whitespace, control characters, / { } or *" in message


def test_the_error_names_the_first_bad_character() -> None:
    with pytest.raises(InvalidKeyError, match=r"first invalid character '/'"):
        validate_key("ok/bad{")


@given(valid_keys)
def test_every_key_of_the_pattern_is_accepted(key: str) -> None:
    if len(key.encode()) <= 256:
        assert validate_key(key) == key


@given(st.text(min_size=1, max_size=20).filter(lambda s: any(not _allowed(c) for c in s)))
def test_any_other_character_is_rejected(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)


def _allowed(ch: str) -> bool:
    return not (ch.isspace() or ch in "/{}*" or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F)


def _hash_tag(name: str) -> str:
    """The part of a Redis key that Redis Cluster hashes (its `{tag}` rule)."""
    start = name.find("{")
    end = name.find("}", start + 1)
    if start == -1 or end == -1 or end == start + 1:
        return name
    return name[start + 1 : end]


def test_key_names_share_the_key_hash_tag() -> None:
    keys = KeySpace("throttler")
    assert keys.limit("free:client-123") == "throttler:{free:client-123}"
    assert keys.log("free:client-123") == "throttler:{free:client-123}:l"
    assert keys.leases("free:client-123") == "throttler:{free:client-123}:c"
    assert keys.script_keys("free:client-123") == [
        keys.limit("free:client-123"),
        keys.log("free:client-123"),
        keys.leases("free:client-123"),
    ]


@given(valid_keys, st.from_regex(r"[A-Za-z0-9_\-.]{1,64}", fullmatch=True))
def test_a_limit_s_keys_hash_to_one_cluster_slot(key: str, prefix: str) -> None:
    keys = KeySpace(prefix)
    cfg, state, leases = keys.script_keys(key)
    assert cfg.startswith(prefix + ":")
    assert state.startswith(prefix + ":")
    assert leases.startswith(prefix + ":")
    assert len({cfg, state, leases}) == 3
    assert _hash_tag(cfg) == _hash_tag(state) == _hash_tag(leases) == key
    assert key_slot(cfg.encode()) == key_slot(state.encode()) == key_slot(key.encode())
    assert key_slot(leases.encode()) == key_slot(key.encode())


def test_different_keys_and_prefixes_never_collide() -> None:
    a, b = KeySpace("one"), KeySpace("two")
    names = {
        a.limit("k"),
        a.log("k"),
        a.limit("k2"),
        a.log("k2"),
        b.limit("k"),
        b.log("k"),
        a.leases("k"),
        b.leases("k"),
    }
    assert len(names) == 8


def test_streams_share_the_prefix_hash_tag() -> None:
    keys = KeySpace("tp")
    streams = [keys.config_stream, keys.audit_stream, keys.dead_stream]
    assert {_hash_tag(s) for s in streams} == {"tp"}
    assert len(set(streams)) == 3
    assert keys.notify_channel.startswith("tp")
    assert keys.heartbeat("appliers", "c1").startswith("tp:")
