"""Talking to Envoy's rate limit service as Envoy does: a standard grpc client and the
protocol's messages (api/rls/proto), plus publishing a domain with `throttler apply`."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from api.rls.proto import rls_pb2 as pb
from api.rls.proto import rls_pb2_grpc
from tests.support.poll import until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import grpc

__all__ = [
    "OK",
    "OVER_LIMIT",
    "apply_domain",
    "apply_domain_file",
    "descriptor",
    "request",
    "stub",
    "wait_loaded",
]

OK = pb.RateLimitResponse.OK
OVER_LIMIT = pb.RateLimitResponse.OVER_LIMIT


def descriptor(
    *entries: tuple[str, str],
    hits: int | None = None,
    override: tuple[int, int] | None = None,
) -> Any:
    """A RateLimitDescriptor: entries, a per-descriptor hits_addend, a limit override
    (requests_per_unit, unit number)."""
    d = pb.RateLimitDescriptor(
        entries=[pb.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        d.hits_addend.value = hits
    if override is not None:
        d.limit.requests_per_unit, d.limit.unit = override
    return d


def request(domain: str, *descriptors: Any, hits: int = 0) -> Any:
    return pb.RateLimitRequest(domain=domain, descriptors=list(descriptors), hits_addend=hits)


def stub(channel: grpc.Channel) -> Any:
    return rls_pb2_grpc.RateLimitServiceStub(channel)


def apply_domain(
    config: dict[str, Any], env: dict[str, str], tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`throttler apply FILE --wait` of one envoyproxy/ratelimit YAML document."""
    path = tmp_path / f"{config['domain']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return apply_domain_file(path, env, *extra)


def apply_domain_file(
    path: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """`throttler apply FILE --wait`."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "throttler",
            "apply",
            str(path),
            "--wait",
            "--timeout",
            "30",
            *extra,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


async def wait_loaded(
    base_url: str, domain: str, check: Callable[[dict[str, Any]], bool] = lambda _: True
) -> dict[str, Any]:
    """Until the server at ``base_url`` has ``domain`` loaded (and ``check`` holds for it)."""

    async def loaded() -> dict[str, Any] | None:
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{base_url}/rls/domains/{domain}")
        if resp.status_code == 200 and check(body := resp.json()):
            return body  # type: ignore[no-any-return]
        return None

    return await until(loaded, 20)
