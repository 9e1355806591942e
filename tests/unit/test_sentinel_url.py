"""A Sentinel REDIS_URL: parsed, validated with one-line errors, never echoing a password."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import SettingsError
from core.gateway import make_client
from core.sentinel_url import SentinelTarget, is_sentinel_url, parse_sentinel_url
from core.settings import load_settings, redact_url


def test_every_part_of_the_url() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/my-primary/3?socket_keepalive=true"
    )
    assert target == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        service="my-primary",
        db=3,
        tls=False,
        username="app",
        password="p@ss",
        query="socket_keepalive=true",
    )


def test_defaults_and_tls() -> None:
    target = parse_sentinel_url("rediss+sentinel://s1:26379/cache")
    assert (target.db, target.tls, target.username, target.password) == (0, True, None, None)
    assert parse_sentinel_url("redis+sentinel://:secret@s1/cache/0").password == "secret"


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://h:1/s", "REDIS+SENTINEL://h/s", "rediss+sentinel://h/s/0"],
)
def test_is_sentinel_url(url: str) -> None:
    assert is_sentinel_url(url)


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h/0", "unix:///s", "", None])
def test_is_not_sentinel_url(url: str | None) -> None:
    assert not is_sentinel_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://u:s3cr3t@/svc/0", "REDIS_URL needs at least one Sentinel host"),
        ("redis+sentinel://u:s3cr3t@h1:26379", "REDIS_URL needs the service name"),
        ("redis+sentinel://u:s3cr3t@h1:26379/", "REDIS_URL needs the service name"),
        ("redis+sentinel://u:s3cr3t@h1/svc/zero", "REDIS_URL database (after the service name)"),
        ("redis+sentinel://u:s3cr3t@h1/svc/0/more", "REDIS_URL database (after the service name)"),
        ("redis+sentinel://u:s3cr3t@h1:0/svc", "REDIS_URL Sentinel address 'h1:0' must be"),
        ("redis+sentinel://u:s3cr3t@h1:x/svc", "REDIS_URL Sentinel address 'h1:x' must be"),
        ("redis+sentinel://u:s3cr3t@h1,:26379/svc", "REDIS_URL Sentinel address ':26379' has no"),
        ("redis+sentinel://u:s3cr3t@h1/svc?ssl_ca_certs=/ca", "REDIS_URL has ssl_* options"),
    ],
)
def test_unusable_urls_are_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"REDIS_URL": url}, env_file=None)
    text = str(info.value)
    assert text.startswith(message)
    assert text.endswith("(from the environment)")
    assert "\n" not in text
    assert "s3cr3t" not in text


def test_settings_take_a_sentinel_url_and_the_sentinels_own_credentials() -> None:
    settings = load_settings(
        {
            "REDIS_URL": "redis+sentinel://:node@s1:26379,s2:26379/primary/0",
            "REDIS_SENTINEL_USERNAME": "watcher",
            "REDIS_SENTINEL_PASSWORD": "sentinel-pw",
        },
        env_file=None,
    )
    assert settings.redis_sentinel_username == "watcher"
    assert settings.redis_sentinel_password == "sentinel-pw"


def test_a_cluster_cannot_be_found_through_sentinel() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            {"REDIS_URL": "redis+sentinel://s1/primary", "REDIS_CLUSTER": "true"}, env_file=None
        )
    text = str(info.value)
    assert text.startswith("REDIS_CLUSTER must be false with a redis+sentinel:// REDIS_URL")
    assert text.endswith("(from the environment)")


def test_the_password_is_redacted_in_logs() -> None:
    url = "redis+sentinel://app:node-pw@s1:26379,s2:26379/primary/0"
    assert redact_url(url) == "redis+sentinel://app:***@s1:26379,s2:26379/primary/0"


async def _built(url: str, **env: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """The data connections' options, each Sentinel's, and the service name, of the client
    the gateway makes for ``url`` (nothing is connected)."""
    client = make_client(load_settings({"REDIS_URL": url, **env}, env_file=None))
    pool: Any = client.connection_pool
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    built = (dict(pool.connection_kwargs), sentinels, pool.service_name)
    await client.aclose()
    return built


@pytest.mark.anyio
async def test_node_and_sentinel_credentials_stay_apart() -> None:
    nodes, sentinels, service = await _built(
        "redis+sentinel://app:node-pw@s1:26380,s2/primary/2",
        REDIS_SENTINEL_USERNAME="watcher",
        REDIS_SENTINEL_PASSWORD="sentinel-pw",
        REDIS_TIMEOUT_MS="250",
    )
    assert service == "primary"
    assert (nodes["username"], nodes["password"], nodes["db"]) == ("app", "node-pw", 2)
    assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26380), ("s2", 26379)]
    for options in sentinels:
        assert (options["username"], options["password"]) == ("watcher", "sentinel-pw")
        assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.25


@pytest.mark.anyio
async def test_tls_and_query_options_reach_both_kinds_of_node() -> None:
    nodes, sentinels, _ = await _built(
        "rediss+sentinel://:pw@s1/primary/0?ssl_ca_certs=/ca.pem&db=4"
    )
    assert (nodes["ssl_ca_certs"], nodes["db"]) == ("/ca.pem", 4)
    assert all(s["ssl_ca_certs"] == "/ca.pem" for s in sentinels)
