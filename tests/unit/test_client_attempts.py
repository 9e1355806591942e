"""The client's retry policy, error mapping and answer reading (no I/O)."""

from __future__ import annotations

import httpx
import pytest

from throttler_client import calls
from throttler_client import errors as e
from throttler_client.attempts import BACKOFF_S, Attempts, transport_error

ThrottlerError = e.ThrottlerError
ThrottlerUnavailableError = e.ThrottlerUnavailableError
ThrottlerTimeoutError = e.ThrottlerTimeoutError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def unavailable() -> ThrottlerUnavailableError:
    return ThrottlerUnavailableError("down", code="redis_unavailable", status=503)


def test_a_check_that_may_have_been_sent_is_never_sent_again() -> None:
    attempts = Attempts(timeout=5, retries=2, idempotent=False, clock=Clock())
    error = unavailable()
    with pytest.raises(ThrottlerUnavailableError) as raised:
        attempts.after(error, sent=True)
    assert raised.value is error


def test_a_request_that_never_left_is_retried_with_doubling_pauses() -> None:
    clock = Clock()
    attempts = Attempts(timeout=5, retries=2, idempotent=False, clock=clock)
    assert attempts.after(unavailable(), sent=False) == BACKOFF_S
    assert attempts.after(unavailable(), sent=False) == 2 * BACKOFF_S
    with pytest.raises(ThrottlerUnavailableError):  # no retries left
        attempts.after(unavailable(), sent=False)


def test_idempotent_calls_are_retried_after_they_may_have_been_sent() -> None:
    attempts = Attempts(timeout=5, retries=1, idempotent=True, clock=Clock())
    assert attempts.after(unavailable(), sent=True) == BACKOFF_S


@pytest.mark.parametrize(
    "error",
    [e.InvalidKeyError("x", status=400), e.UnauthorizedError("x", status=401), ThrottlerError("x")],
)
def test_refusals_are_never_retried(error: ThrottlerError) -> None:
    attempts = Attempts(timeout=5, retries=3, idempotent=True, clock=Clock())
    with pytest.raises(type(error)):
        attempts.after(error, sent=False)


def test_nothing_runs_past_the_deadline() -> None:
    clock = Clock()
    attempts = Attempts(timeout=1, retries=5, idempotent=True, clock=clock)
    assert attempts.time_left() == 1
    clock.now = 0.97  # a pause would end past the deadline: no retry
    with pytest.raises(ThrottlerUnavailableError):
        attempts.after(unavailable(), sent=False)
    clock.now = 1.0
    with pytest.raises(ThrottlerTimeoutError):
        attempts.time_left()
    with pytest.raises(ThrottlerTimeoutError):  # what failed at the deadline is a timeout
        attempts.after(unavailable(), sent=False)


def test_transport_errors() -> None:
    refused, sent = transport_error(httpx.ConnectError("refused"))
    assert (type(refused), refused.code, refused.status, sent) == (
        ThrottlerUnavailableError,
        "unreachable",
        None,
        False,
    )
    timed_out, sent = transport_error(httpx.ReadTimeout("slow"))
    assert (isinstance(timed_out, ThrottlerTimeoutError), sent) == (True, True)
    assert isinstance(timed_out, TimeoutError)
    assert isinstance(timed_out.__cause__, httpx.ReadTimeout)
    assert transport_error(httpx.PoolTimeout("busy"))[1] is False


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"error": "invalid_key", "message": "m"}, e.InvalidKeyError),
        (400, {"error": "validation_error", "message": "m"}, e.ValidationError),
        (401, {"error": "unauthorized", "message": "m"}, e.UnauthorizedError),
        (404, {"error": "not_found", "message": "m"}, e.NotFoundError),
        (409, {"error": "conflict", "message": "m"}, e.ConflictError),
        (503, {"error": "redis_unavailable", "message": "m"}, ThrottlerUnavailableError),
        (415, {"error": "unsupported_media_type", "message": "m"}, ThrottlerError),
        (502, None, ThrottlerUnavailableError),  # a proxy's HTML page: by status
        (418, "teapot", ThrottlerError),
    ],
)
def test_errors_by_code(status: int, body: object, kind: type[ThrottlerError]) -> None:
    error = e.error_from_answer(status, body)
    assert type(error) is kind
    assert error.status == status
    if isinstance(body, dict):
        assert (error.code, error.message) == (body["error"], "m")


def test_an_answer_outside_the_protocol_is_a_clear_error() -> None:
    call = calls.check("k")
    with pytest.raises(ThrottlerError, match="unexpected answer to POST /rate-limit/k/check"):
        calls.read_answer(call, calls.Answer(200, {}, {"allowed": "yes"}))
    with pytest.raises(ThrottlerError, match="remaining: expected an integer"):
        calls.read_answer(call, calls.Answer(200, {}, {"allowed": True, "remaining": 1.5}))
