"""The embedded Redis of `throttler serve` (no REDIS_URL) requires a random password: no
other local process can write the config streams behind ADMIN_TOKEN's back. The URL it
prints carries the password (for `throttler apply`, redis-cli); logs and `ps` do not."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from tests.support.service import ServiceProcess


def test_the_embedded_redis_needs_its_password(tmp_path: Path) -> None:
    service = ServiceProcess({"WORKER_METRICS_PORT": "0"}, embedded=True).start(tmp_path)
    try:
        _, _, url = service.printed()
        parts = urlsplit(url)
        assert parts.password
        assert len(parts.password) >= 32
        assert parts.port is not None
        anonymous = redis.Redis(host="127.0.0.1", port=parts.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.xadd("throttler:config", {"event": "{}"})
        anonymous.close()
        with redis.Redis.from_url(url) as owner:
            assert owner.ping()
        # Not on any command line (`ps` shows those to every user)...
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert parts.password.encode() not in cmdline.read_bytes()
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
        # ...nor in the logs (the first line, printed for its owner, is not a log line).
        lines = service.log().splitlines()
        assert not [line for line in lines if parts.password in line and line.startswith("{")]
    finally:
        service.stop()
