"""Fixtures of the client tests: real ``throttler serve`` processes and clients of them."""

from __future__ import annotations

import contextlib
import signal
import uuid
from typing import TYPE_CHECKING, Any, cast

import pytest

from tests.support.service import ServiceProcess, running
from throttler_client import AsyncThrottlerClient, ThrottlerClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from _pytest.fixtures import SubRequest

DAY_MS = 86_400_000


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    # WORKER_BLOCK_MS only makes the in-process worker stop sooner; it changes no answer.
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
    return {**env, "WORKER_BLOCK_MS": "100", **extra}


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One ``throttler serve`` for a module's tests; each test uses keys under its own prefix."""
    proc = ServiceProcess(service_env(redis_url))
    with running([proc], tmp_path_factory.mktemp("client")):
        yield proc


@contextlib.contextmanager
def own_service(env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service of the test's own, to stop or pause; resumed (SIGCONT) and stopped after."""
    proc = ServiceProcess(env).start(tmp_path)
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.signal(signal.SIGCONT)
        proc.stop()


@pytest.fixture
def own(redis_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service of the test's own (see own_service)."""
    with own_service(service_env(redis_url), tmp_path) as proc:
        yield proc


class SyncAsAsync:
    """A ``ThrottlerClient`` behind ``AsyncThrottlerClient``'s surface, so that one test body
    runs against both (the sync calls block the test's event loop, which is harmless here)."""

    def __init__(self, client: ThrottlerClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return attr(*args, **kwargs)

        return call


@contextlib.asynccontextmanager
async def either_client(flavour: str, base_url: str, **options: Any) -> AsyncIterator[Any]:
    """An ``AsyncThrottlerClient``, or a ``ThrottlerClient`` seen through SyncAsAsync."""
    if flavour == "async":
        async with AsyncThrottlerClient(base_url, **options) as client:
            yield client
    else:
        with ThrottlerClient(base_url, **options) as sync_client:
            yield SyncAsAsync(sync_client)


@pytest.fixture(params=["sync", "async"])
def flavour(request: SubRequest) -> str:
    """Which client a test runs with: ``ThrottlerClient`` or ``AsyncThrottlerClient``."""
    return cast("str", request.param)


@pytest.fixture
async def throttler(flavour: str, service: ServiceProcess) -> AsyncIterator[AsyncThrottlerClient]:
    """A client of the module's service (sync or async), typed by the async surface."""
    async with either_client(flavour, service.base_url, timeout=10) as client:
        yield cast("AsyncThrottlerClient", client)
