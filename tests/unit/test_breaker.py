"""The circuit breaker on its own: a clock the test moves, calls that succeed or fail."""

from __future__ import annotations

import anyio
import pytest

from core.breaker import CircuitBreaker
from core.errors import RedisUnavailableError
from core.metrics import Metrics

pytestmark = pytest.mark.anyio


class Clock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Stands in for Redis: answers, or fails as an unavailable Redis does; counts calls."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if not self.up:
            raise RedisUnavailableError("redis: ConnectionError: refused")
        return "PONG"


async def fail(breaker: CircuitBreaker, backend: Backend, times: int) -> None:
    for _ in range(times):
        with pytest.raises(RedisUnavailableError):
            await breaker.call(backend)


def is_open(breaker: CircuitBreaker) -> bool:
    """(A call, so that mypy does not narrow the property between two asserts.)"""
    return breaker.is_open


def gauge(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("throttler_circuit_open")
    assert value is not None
    return value


async def test_passes_calls_through_while_closed() -> None:
    breaker, backend = CircuitBreaker(3, 0.5, clock=Clock()), Backend()
    assert [await breaker.call(backend) for _ in range(5)] == ["PONG"] * 5
    assert backend.calls == 5
    assert not is_open(breaker)


async def test_opens_after_consecutive_failures_and_then_fails_without_calling() -> None:
    metrics = Metrics()
    breaker, backend = CircuitBreaker(3, 0.5, metrics, clock=Clock()), Backend()
    backend.up = False
    await fail(breaker, backend, 2)
    assert not is_open(breaker)
    assert gauge(metrics) == 0
    await fail(breaker, backend, 1)
    assert is_open(breaker)
    assert gauge(metrics) == 1
    assert backend.calls == 3

    backend.up = True  # even a healthy backend is not asked until the cooldown is over
    with pytest.raises(RedisUnavailableError, match="circuit open"):
        await breaker.call(backend)
    assert backend.calls == 3


async def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker, backend = CircuitBreaker(3, 0.5, clock=Clock()), Backend()
    for _ in range(3):
        backend.up = False
        await fail(breaker, backend, 2)
        backend.up = True
        assert await breaker.call(backend) == "PONG"
    assert not is_open(breaker)
    assert backend.calls == 9


async def test_after_the_cooldown_one_probe_closes_the_circuit() -> None:
    clock, metrics = Clock(), Metrics()
    breaker, backend = CircuitBreaker(2, 0.5, metrics, clock=clock), Backend()
    backend.up = False
    await fail(breaker, backend, 2)
    clock.now += 0.499
    await fail(breaker, backend, 1)  # still cooling down: refused without a call
    assert backend.calls == 2

    clock.now += 0.002
    backend.up = True
    assert await breaker.call(backend) == "PONG"  # the probe
    assert backend.calls == 3
    assert not is_open(breaker)
    assert gauge(metrics) == 0
    assert await breaker.call(backend) == "PONG"


async def test_a_failed_probe_opens_the_circuit_for_another_cooldown() -> None:
    clock = Clock()
    breaker, backend = CircuitBreaker(2, 0.5, clock=clock), Backend()
    backend.up = False
    await fail(breaker, backend, 2)
    clock.now += 0.6
    await fail(breaker, backend, 1)  # the probe reaches the backend, and fails
    assert backend.calls == 3
    assert is_open(breaker)
    clock.now += 0.4  # a new cooldown started at the failed probe
    await fail(breaker, backend, 1)
    assert backend.calls == 3
    clock.now += 0.2
    backend.up = True
    assert await breaker.call(backend) == "PONG"
    assert not is_open(breaker)


async def test_only_one_probe_at_a_time_while_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 0.5, clock=clock)
    backend = Backend()
    backend.up = False
    await fail(breaker, backend, 1)
    clock.now += 1
    release = anyio.Event()
    probes = 0

    async def slow_probe() -> str:
        nonlocal probes
        probes += 1
        await release.wait()
        return "PONG"

    results: list[str] = []
    async with anyio.create_task_group() as tg:

        async def probe() -> None:
            results.append(await breaker.call(slow_probe))

        tg.start_soon(probe)
        await anyio.wait_all_tasks_blocked()
        # While the probe is out, every other call is refused at once.
        for _ in range(5):
            with pytest.raises(RedisUnavailableError, match="circuit open"):
                await breaker.call(slow_probe)
        release.set()
    assert (probes, results) == (1, ["PONG"])
    assert not is_open(breaker)


async def test_errors_that_are_not_about_redis_do_not_count() -> None:
    breaker = CircuitBreaker(2, 0.5, clock=Clock())

    async def bug() -> str:
        raise ValueError("a bug, not an outage")

    for _ in range(5):
        with pytest.raises(ValueError, match="a bug"):
            await breaker.call(bug)
    assert not is_open(breaker)


async def test_a_cancelled_probe_does_not_wedge_the_breaker_half_open() -> None:
    clock = Clock()
    breaker, backend = CircuitBreaker(1, 0.5, clock=clock), Backend()
    backend.up = False
    await fail(breaker, backend, 1)
    clock.now += 1

    async def hangs() -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with anyio.move_on_after(0.01):
        await breaker.call(hangs)  # the probe is cancelled (the request went away)
    backend.up = True
    assert await breaker.call(backend) == "PONG"  # the next call may probe again
    assert not is_open(breaker)


async def test_the_gauge_counts_the_open_breakers_of_a_process() -> None:
    """One breaker per Redis node: the gauge is how many are open, not the last one's state."""
    metrics, clock = Metrics(), Clock()
    first, second = (CircuitBreaker(1, 0.5, metrics, clock=clock) for _ in range(2))
    backend = Backend()
    backend.up = False
    await fail(first, backend, 1)
    await fail(second, backend, 1)
    assert gauge(metrics) == 2
    clock.now += 1  # both half-open: a failed probe keeps the count, a success lowers it
    await fail(first, backend, 1)
    assert gauge(metrics) == 2
    backend.up = True
    await second.call(backend)
    assert gauge(metrics) == 1
    first.forget()  # its node left the cluster's layout
    assert gauge(metrics) == 0
    assert not is_open(first)
    first.forget()
    assert gauge(metrics) == 0
