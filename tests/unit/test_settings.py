"""Settings: defaults, every variable, the .env file, invalid values, redaction, start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.errors import SettingsError
from core.settings import (
    Settings,
    ignored_variables,
    load_settings,
    redact_url,
    refuse_exposed_bind,
)

#: Every variable the settings read (field ``x_y`` ↔ variable ``X_Y``).
VARIABLES = frozenset(name.upper() for name in Settings.__struct_fields__)


def load(**env: str) -> Settings:
    """Settings from exactly ``env`` (no process environment, no .env file)."""
    return load_settings(env, env_file=None)


def test_defaults() -> None:
    s = load()
    assert s.bind_address == "127.0.0.1:8080"
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.redis_url is None
    assert s.redis_cluster is False
    assert s.redis_timeout_ms == 500
    assert s.default_capacity == 100
    assert s.default_refill_rate == 10
    assert s.default_limit_rate == (10, 1000)  # 10 tokens per second
    assert s.log_level == "info"
    assert s.log_format == "json"
    assert s.key_prefix == "throttler"
    assert s.apply_wait_ms == 2000
    assert s.max_body_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("BIND_ADDRESS", "0.0.0.0:9000", "bind_address", "0.0.0.0:9000"),
        ("REDIS_URL", "redis://10.0.0.5:6380/2", "redis_url", "redis://10.0.0.5:6380/2"),
        ("REDIS_URL", "rediss://u:p@cache:6379/0", "redis_url", "rediss://u:p@cache:6379/0"),
        ("REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
        ("REDIS_CLUSTER", "true", "redis_cluster", True),
        ("REDIS_TIMEOUT_MS", "250", "redis_timeout_ms", 250),
        ("DEFAULT_CAPACITY", "5", "default_capacity", 5),
        ("DEFAULT_CAPACITY", "1000000000", "default_capacity", 1_000_000_000),
        ("DEFAULT_REFILL_RATE", "2.5", "default_refill_rate", 2.5),
        ("LOG_LEVEL", "debug", "log_level", "debug"),
        ("LOG_LEVEL", "error", "log_level", "error"),
        ("LOG_FORMAT", "console", "log_format", "console"),
        ("KEY_PREFIX", "my-app.v1_x", "key_prefix", "my-app.v1_x"),
        ("APPLY_WAIT_MS", "0", "apply_wait_ms", 0),
        ("MAX_BODY_BYTES", "4096", "max_body_bytes", 4096),
    ],
)
def test_each_variable(variable: str, value: str, attribute: str, expected: Any) -> None:
    assert variable in VARIABLES
    assert getattr(load(**{variable: value}), attribute) == expected


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("[::1]:8081", "::1", 8081),
        ("api.local:65535", "api.local", 65535),
    ],
)
def test_bind_address_host_and_port(bind: str, host: str, port: int) -> None:
    s = load(BIND_ADDRESS=bind)
    assert (s.host, s.port) == (host, port)


@pytest.mark.parametrize(
    ("rate", "pair"),
    [("10", (10, 1000)), ("2.5", (5, 2000)), ("0.5", (1, 2000)), ("0.001", (1, 1_000_000))],
)
def test_refill_rate_is_an_exact_requests_per_window_pair(rate: str, pair: tuple[int, int]) -> None:
    assert load(DEFAULT_REFILL_RATE=rate).default_limit_rate == pair


def test_empty_values_mean_unset_and_other_variables_are_ignored() -> None:
    s = load(DEFAULT_CAPACITY="", REDIS_URL="", PATH="/usr/bin", HOME="/root", default_capacity="7")
    assert s.default_capacity == 100
    assert s.redis_url is None


def test_dotenv_is_read_and_the_real_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment line\n"
        "DEFAULT_CAPACITY=7\n"
        "LOG_LEVEL=debug\n"
        'REDIS_URL="redis://from-dotenv:6379/0"\n'
        "KEY_PREFIX=from-dotenv\n"
    )
    s = load_settings({"DEFAULT_CAPACITY": "9", "KEY_PREFIX": "from-env"}, env_file=env_file)
    assert s.default_capacity == 9  # the real environment wins
    assert s.key_prefix == "from-env"
    assert s.log_level == "debug"  # only in .env
    assert s.redis_url == "redis://from-dotenv:6379/0"  # quotes removed


def test_dotenv_in_the_working_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("DEFAULT_CAPACITY=42\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).default_capacity == 42
    assert load_settings({}, env_file=None).default_capacity == 100


def test_a_missing_dotenv_is_fine(tmp_path: Path) -> None:
    assert load_settings({}, env_file=tmp_path / "absent.env") == load()


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_CAPACITY", "321")
    assert load_settings(env_file=None).default_capacity == 321


def test_an_invalid_dotenv_value_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=loud\n")
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        load_settings({}, env_file=env_file)


INVALID = [
    ("DEFAULT_CAPACITY", "0"),
    ("DEFAULT_CAPACITY", "-1"),
    ("DEFAULT_CAPACITY", "many"),
    ("DEFAULT_CAPACITY", "1000000001"),
    ("DEFAULT_REFILL_RATE", "0"),
    ("DEFAULT_REFILL_RATE", "-2"),
    ("DEFAULT_REFILL_RATE", "nan"),
    ("DEFAULT_REFILL_RATE", "fast"),
    ("LOG_LEVEL", "loud"),
    ("LOG_FORMAT", "xml"),
    ("BIND_ADDRESS", "nope"),
    ("BIND_ADDRESS", ":8080"),
    ("BIND_ADDRESS", "localhost:0"),
    ("BIND_ADDRESS", "localhost:65536"),
    ("BIND_ADDRESS", "localhost:http"),
    ("KEY_PREFIX", "a{b"),
    ("KEY_PREFIX", "a}b"),
    ("KEY_PREFIX", "a b"),
    ("KEY_PREFIX", "x" * 65),
    ("REDIS_URL", "http://localhost:6379"),
    ("REDIS_URL", "redis://localhost:abc/0"),
    ("REDIS_URL", "redis://localhost:70000/0"),
    ("REDIS_URL", "redis://[::1"),
    ("REDIS_URL", "redis://localhost:6379/zero"),
    ("REDIS_URL", "redis://"),
    ("REDIS_CLUSTER", "maybe"),
    ("REDIS_TIMEOUT_MS", "0"),
    ("MAX_BODY_BYTES", "10"),
]


@pytest.mark.parametrize(("variable", "value"), INVALID)
def test_invalid_value_raises_settings_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(**{variable: value})
    message = str(info.value)
    assert variable in message
    assert "\n" not in message
    assert message.strip()


def test_a_redis_url_error_never_shows_the_password() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL") as info:
        load(REDIS_URL="redis://admin:s3cr3t-pw@localhost:notaport/0")
    assert "s3cr3t-pw" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host/0", "redis://:***@host/0"),
        (
            "rediss://u:p%40ss@[::1]:6380/1?ssl_cert_reqs=none",
            "rediss://u:***@[::1]:6380/1?ssl_cert_reqs=none",
        ),
        ("redis://u:pa@ss@host:1/0", "redis://u:***@host:1/0"),
        ("redis://host:6379/0?password=secret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        (None, None),
        ("", ""),
    ],
)
def test_redact_url_hides_passwords(url: str | None, redacted: str | None) -> None:
    assert redact_url(url) == redacted


def test_redact_url_never_raises_on_a_malformed_url() -> None:
    for url in ["redis://u:secret@host:99999/0", "redis://u:secret@[::1", "redis://u:secret@h:x/0"]:
        shown = redact_url(url)
        assert shown is not None
        assert "secret" not in shown


def _clean_env(**extra: str) -> dict[str, str]:
    """The process environment without any Throttler setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEFAULT_CAPACITY", "0"),
        ("LOG_LEVEL", "loud"),
        ("BIND_ADDRESS", "nope"),
        ("KEY_PREFIX", "a{b"),
        ("REDIS_URL", "redis://admin:s3cr3t-pw@localhost:notaport/0"),
    ],
)
def test_serve_with_a_bad_setting_exits_2_with_one_line(
    tmp_path: Path, variable: str, value: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "throttler", "serve"],
        env=_clean_env(**{variable: value}),
        cwd=tmp_path,  # no .env here
        capture_output=True,
        timeout=30,
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert done.stdout == b""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert variable in lines[0]
    assert "Traceback" not in err
    assert "s3cr3t-pw" not in err


def test_serve_reads_a_bad_setting_from_dotenv_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DEFAULT_REFILL_RATE=-1\n")
    done = subprocess.run(
        [sys.executable, "-m", "throttler", "serve"],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1
    assert "DEFAULT_REFILL_RATE" in lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEFAULT_CAPACITY", "abc", "DEFAULT_CAPACITY must be an integer, got 'abc'"),
        ("DEFAULT_CAPACITY", "0", "DEFAULT_CAPACITY must be at least 1, got '0'"),
        ("REDIS_TIMEOUT_MS", "4000000", "REDIS_TIMEOUT_MS must be at most 3600000, got '4000000'"),
        ("DEFAULT_REFILL_RATE", "fast", "DEFAULT_REFILL_RATE must be a number, got 'fast'"),
        ("REDIS_CLUSTER", "maybe", "REDIS_CLUSTER must be true or false, got 'maybe'"),
        (
            "LOG_LEVEL",
            "loud",
            "LOG_LEVEL must be one of debug, info, warning, error, critical, got 'loud'",
        ),
    ],
)
def test_an_invalid_value_is_explained_in_words(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(**{variable: value})
    assert str(info.value) == f"{message} (from the environment)"


def test_an_invalid_value_names_the_file_it_came_from(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DEFAULT_CAPACITY=abc\nKEY_PREFIX=a b\n")
    with pytest.raises(SettingsError) as info:
        load_settings({}, env_file=env_file)
    assert str(info.value) == f"DEFAULT_CAPACITY must be an integer, got 'abc' (from {env_file})"
    with pytest.raises(SettingsError) as info:
        load_settings({"DEFAULT_CAPACITY": "5"}, env_file=env_file)
    assert str(info.value).endswith(f"(got 'a b') (from {env_file})")


def test_the_env_example_lists_every_setting_with_its_default() -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    lines = example.read_text().splitlines()
    listed = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    # The tokens are listed commented out: an empty token is refused (it would turn auth off).
    listed |= {line[1:-1] for line in lines if line in ("#ADMIN_TOKEN=", "#CHECK_TOKEN=")}
    assert listed == VARIABLES
    assert load_settings({}, env_file=example) == load()
    assert ignored_variables({}, env_file=example) == []


def test_variables_meant_for_throttler_that_it_ignores_are_named() -> None:
    env = {
        "RUST_LOG": "debug",
        "THROTTLER_REDIS_URL": "redis://x:1/0",
        "THROTTLER_SERVE_WORKER": "1",  # set by `serve` itself
        "THROTTLER_COLOUR": "blue",
        "LOG_LEVEL": "info",
        "HOME": "/root",
    }
    assert ignored_variables(env, env_file=None) == [
        "RUST_LOG (the original service's; use LOG_LEVEL)",
        "THROTTLER_COLOUR (not a setting: settings have no THROTTLER_ prefix)",
        "THROTTLER_REDIS_URL (not a setting: settings have no THROTTLER_ prefix; "
        "did you mean REDIS_URL?)",
    ]


TOKEN = "t" * 32


@pytest.mark.parametrize("variable", ["ADMIN_TOKEN", "CHECK_TOKEN"])
@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "set but empty"),
        ("x", "at least 32 characters (got 1)"),
        ("t" * 31, "at least 32 characters (got 31)"),
        ("with space" * 4, "printable ASCII without spaces"),
        ("tab\t" * 8, "printable ASCII without spaces"),
    ],
)
def test_an_empty_short_or_unsendable_token_is_refused(
    variable: str, value: str, rule: str
) -> None:
    with pytest.raises(SettingsError, match=rf"^{variable} .*{re.escape(rule)}") as caught:
        load(**{variable: value})
    if len(value) > 1:
        assert value not in str(caught.value)  # a rejected token is still a secret


@pytest.mark.parametrize("variable", ["ADMIN_TOKEN", "CHECK_TOKEN"])
def test_allow_insecure_accepts_a_short_token_and_an_empty_one_means_none(variable: str) -> None:
    attribute = variable.lower()
    assert getattr(load(**{variable: "x", "ALLOW_INSECURE": "true"}), attribute) == "x"
    assert getattr(load(**{variable: "", "ALLOW_INSECURE": "true"}), attribute) is None
    assert getattr(load(**{variable: TOKEN}), attribute) == TOKEN


@pytest.mark.parametrize(
    ("bind", "admin_token", "insecure", "refused"),
    [
        ("0.0.0.0:8080", None, False, True),
        ("[::]:8080", None, False, True),
        ("api.internal:8080", None, False, True),
        ("0.0.0.0:8080", TOKEN, False, False),
        ("0.0.0.0:8080", None, True, False),
        ("127.0.0.1:8080", None, False, False),
        ("127.0.0.2:8080", None, False, False),
        ("[::1]:8080", None, False, False),
        ("localhost:8080", None, False, False),
    ],
)
def test_a_non_loopback_bind_needs_an_admin_token(
    bind: str, admin_token: str | None, insecure: bool, refused: bool
) -> None:
    env = {"BIND_ADDRESS": bind, "ALLOW_INSECURE": str(insecure).lower()}
    if admin_token:
        env["ADMIN_TOKEN"] = admin_token
    settings = load(**env)
    if refused:
        with pytest.raises(SettingsError, match="not a loopback address and ADMIN_TOKEN"):
            refuse_exposed_bind(settings)
    else:
        refuse_exposed_bind(settings)


@pytest.mark.parametrize("command", [["serve"], ["worker", "--check"], ["dead-letters", "list"]])
@pytest.mark.parametrize(
    "url", ["redis://:s3cr3t-pw@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=s3cr3t-pw"]
)
def test_a_password_on_the_command_line_is_refused(
    tmp_path: Path, command: list[str], url: str
) -> None:
    """`ps` shows every user the command line: a password goes in REDIS_URL instead."""
    done = subprocess.run(
        [sys.executable, "-m", "throttler", *command, "--redis-url", url],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "--redis-url must not hold a password" in err
    assert "s3cr3t-pw" not in err


def test_the_help_says_where_a_password_goes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "throttler", "worker", "--help"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert "without a password" in " ".join(done.stdout.decode().split())
