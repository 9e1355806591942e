"""The service's HTTP operations as data, with no I/O.

Each builder returns a :class:`Call`: method, path, JSON body, which token it needs, whether
sending it twice is harmless, and how to read the answer into a typed result. The sync and
async clients run the same calls, so they cannot drift apart.

Adding an operation: write its builder here, then a method
of one line in ``ThrottlerClient`` and in ``AsyncThrottlerClient``
(tests/unit/test_client_surface.py checks that both have the same methods and signatures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar
from urllib.parse import quote

from throttler_client.errors import ThrottlerError, error_from_answer
from throttler_client.models import (
    CheckManyResult,
    Decision,
    Lease,
    Limit,
    LimitChange,
    Policy,
    PolicyChange,
    as_int,
    forwarded_headers,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from throttler_client.models import ChangeStatus

__all__ = [
    "Answer",
    "Call",
    "acquire",
    "check",
    "check_many",
    "delete_limit",
    "delete_policy",
    "get_policy",
    "list_policies",
    "put_policy",
    "read_answer",
    "refund",
    "release",
    "reset",
    "set_limit",
    "set_limits",
]

T = TypeVar("T")
#: An item of :meth:`check_many`: a key (one token), or ``(key, tokens)``.
CheckItem = str | tuple[str, int]


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, headers, and the body decoded as JSON (``None`` if it is not)."""

    status: int
    headers: Mapping[str, str]
    body: object


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer.

    ``idempotent``: sending it again after it may have reached the service changes nothing
    (a peek, setting a limit, a reset); a check that spends is never sent twice. ``admin``:
    it needs the admin token rather than the check token.
    """

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    read: Callable[[Answer], T]
    body: object = None
    admin: bool = False
    idempotent: bool = False


def read_answer(call: Call[T], answer: Answer) -> T:
    """``call.read(answer)``; a body that does not match the protocol is a ThrottlerError."""
    try:
        return call.read(answer)
    except (ValueError, KeyError, TypeError) as exc:
        raise ThrottlerError(
            f"unexpected answer to {call.method} {call.path}: {exc}",
            code="bad_answer",
            status=answer.status,
        ) from exc


def _path(key: str, suffix: str = "") -> str:
    return f"/rate-limit/{quote(key, safe=':')}{suffix}"


def _body(answer: Answer, *ok: int) -> Mapping[str, object]:
    """The JSON object of an answer whose status is one of ``ok``; else its error."""
    if answer.status not in ok:
        raise error_from_answer(answer.status, answer.body)
    if not isinstance(answer.body, dict):
        raise TypeError(f"expected a JSON object, got {answer.body!r}")
    return answer.body


def _decision(key: str, body: Mapping[str, object], headers: Mapping[str, str]) -> Decision:
    allowed = body["allowed"]
    if not isinstance(allowed, bool):
        raise TypeError(f"allowed: expected a boolean, got {allowed!r}")
    error, message = body.get("error"), body.get("message")
    item_error = None if allowed or error == "rate_limit_exceeded" else error
    return Decision(
        key=key,
        allowed=allowed,
        remaining=as_int(body, "remaining"),
        limit=as_int(body, "limit"),
        reset_after_ms=as_int(body, "reset_after_ms"),
        retry_after_ms=0 if body.get("retry_after_ms") is None else as_int(body, "retry_after_ms"),
        enforced=body.get("enforced", True) is not False,
        headers=headers,
        error=None if item_error is None else str(item_error),
        message=None if item_error is None else str(message),
        wait_ms=0 if body.get("wait_ms") is None else as_int(body, "wait_ms"),
    )


def check(key: str, tokens: int = 1, max_wait_ms: int = 0) -> Call[Decision]:
    """``POST /rate-limit/{key}/check``: spend ``tokens`` (0 peeks). 200 and 429 are both
    decisions. With ``max_wait_ms``, a check whose tokens come within that time reserves
    them: allowed, with ``wait_ms``."""

    def read(answer: Answer) -> Decision:
        return _decision(key, _body(answer, 200, 429), forwarded_headers(answer.headers))

    body: dict[str, object] = {"tokens": tokens}
    if max_wait_ms:
        body["max_wait_ms"] = max_wait_ms
    return Call("POST", _path(key, "/check"), read, body=body, idempotent=not tokens)


def acquire(key: str, ttl_ms: int | None = None) -> Call[Lease]:
    """``POST /rate-limit/{key}/acquire``: take a lease (200) or be denied (429)."""

    def read(answer: Answer) -> Lease:
        body = _body(answer, 200, 429)
        headers = forwarded_headers(answer.headers)
        allowed = body["allowed"] is True
        retry = body.get("retry_after_ms")
        return Lease(
            key=key,
            allowed=allowed,
            id=str(body["lease"]) if allowed else "",
            expires_in_ms=as_int(body, "expires_in_ms") if allowed else 0,
            remaining=as_int(body, "remaining"),
            limit=as_int(body, "limit"),
            retry_after_ms=0 if retry is None else as_int(body, "retry_after_ms"),
            enforced=body.get("enforced", True) is not False,
            headers=headers,
        )

    body = None if ttl_ms is None else {"ttl_ms": ttl_ms}
    return Call("POST", _path(key, "/acquire"), read, body=body)


def release(key: str, lease: str) -> Call[bool]:
    """``POST /rate-limit/{key}/release``: True when released, False when the key held no
    such lease (already released, or expired). Safe to send again."""

    def read(answer: Answer) -> bool:
        if answer.status == 404:
            return False
        _body(answer, 200)
        return True

    return Call("POST", _path(key, "/release"), read, body={"lease": lease}, idempotent=True)


def refund(key: str, tokens: int) -> Call[Decision]:
    """``POST /rate-limit/{key}/refund``: give back up to ``tokens``; the answer is what is
    left (as a peek)."""

    def read(answer: Answer) -> Decision:
        body = _body(answer, 200)
        return _decision(key, {"allowed": True, **body}, forwarded_headers(answer.headers))

    return Call("POST", _path(key, "/refund"), read, body={"tokens": tokens})


def check_many(items: Iterable[CheckItem], all_or_nothing: bool = False) -> Call[CheckManyResult]:
    """``POST /check``: many checks in one request (atomic with ``all_or_nothing``)."""
    pairs = [(item, 1) if isinstance(item, str) else item for item in items]
    body = {
        "checks": [{"key": key, "tokens": tokens} for key, tokens in pairs],
        "all_or_nothing": all_or_nothing,
    }

    def read(answer: Answer) -> CheckManyResult:
        result = _body(answer, 200)
        items = result["results"]
        if not isinstance(items, list):
            raise TypeError(f"results: expected a list, got {items!r}")
        decisions = tuple(_decision(str(item["key"]), item, {}) for item in items)
        enforced = answer.headers.get("x-ratelimit-enforced") != "false"
        if not enforced:
            decisions = tuple(Decision.unenforced(d.key) for d in decisions)
        return CheckManyResult(result["allowed"] is True, decisions, enforced)

    idempotent = not any(tokens for _, tokens in pairs)
    return Call("POST", "/check", read, body=body, idempotent=idempotent)


def _limit_change(status: ChangeStatus, body: Mapping[str, object]) -> LimitChange:
    """A key's limits as the service answers them: one limit's fields, or ``limits`` and
    ``shadow``."""
    listed = body.get("limits")
    if listed is None:
        limit = Limit.from_json(body)
        return LimitChange(status, limit, limits=(limit,))
    if not isinstance(listed, list) or not listed:
        raise ValueError(f"limits: expected a non-empty list, got {listed!r}")
    limits = tuple(Limit.from_json(item) for item in listed)
    return LimitChange(status, limits[0], limits=limits, shadow=body.get("shadow") is True)


def set_limit(key: str, limit: Limit) -> Call[LimitChange]:
    """``POST /rate-limit/{key}``: create or replace the key's limit (201/200, or 202)."""
    return _set(key, limit.to_json())


def set_limits(key: str, limits: Sequence[Limit], shadow: bool = False) -> Call[LimitChange]:
    """``POST /rate-limit/{key}`` with several limits (1-8; a check must pass all of them)
    and ``shadow`` (evaluate and spend, but allow every check)."""
    body = {"limits": [limit.to_json() for limit in limits], "shadow": shadow}
    return _set(key, body)


def _set(key: str, body: dict[str, object]) -> Call[LimitChange]:
    def read(answer: Answer) -> LimitChange:
        found = _body(answer, 200, 201, 202)
        if answer.status == 202:
            return LimitChange("accepted", event_id=str(found["event_id"]))
        return _limit_change("created" if answer.status == 201 else "replaced", found)

    # Setting the same limits twice leaves the same limits: safe to send again.
    return Call("POST", _path(key), read, body=body, admin=True, idempotent=True)


def delete_limit(key: str) -> Call[LimitChange]:
    """``DELETE /rate-limit/{key}``: remove the key's limits (200 with them, or 202)."""

    def read(answer: Answer) -> LimitChange:
        body = _body(answer, 200, 202)
        if answer.status == 202:
            return LimitChange("accepted", event_id=str(body["event_id"]))
        return _limit_change("deleted", body)

    # Not idempotent in its answer: a second delete of a deleted limit is a 404.
    return Call("DELETE", _path(key), read, admin=True)


def reset(key: str) -> Call[None]:
    """``POST /rate-limit/{key}/reset``: clear the key's usage and keep its limits; answers
    200 ``{"key": ..., "reset": true}`` (a service without the route answers 404)."""

    def read(answer: Answer) -> None:
        body = _body(answer, 200)
        if body.get("reset") is not True:
            raise ValueError(f"reset: expected true, got {body.get('reset')!r}")

    return Call("POST", _path(key, "/reset"), read, admin=True, idempotent=True)


def _policy_path(name: str) -> str:
    return f"/policies/{quote(name, safe='')}"


def put_policy(policy: Policy) -> Call[PolicyChange]:
    """``PUT /policies/{name}``: create (201) or replace (200) a policy, or 202."""

    def read(answer: Answer) -> PolicyChange:
        body = _body(answer, 200, 201, 202)
        if answer.status == 202:
            return PolicyChange("accepted", event_id=str(body["event_id"]))
        status: ChangeStatus = "created" if answer.status == 201 else "replaced"
        return PolicyChange(status, Policy.from_json(body))

    return Call(
        "PUT", _policy_path(policy.name), read, body=policy.to_json(), admin=True, idempotent=True
    )


def get_policy(name: str) -> Call[Policy]:
    """``GET /policies/{name}``: the policy (``NotFoundError`` when there is none)."""
    return Call(
        "GET",
        _policy_path(name),
        lambda a: Policy.from_json(_body(a, 200)),
        admin=True,
        idempotent=True,
    )


def list_policies() -> Call[list[Policy]]:
    """``GET /policies``: every policy."""

    def read(answer: Answer) -> list[Policy]:
        items = _body(answer, 200)["items"]
        if not isinstance(items, list):
            raise TypeError(f"items: expected a list, got {items!r}")
        return [Policy.from_json(item) for item in items]

    return Call("GET", "/policies", read, admin=True, idempotent=True)


def delete_policy(name: str) -> Call[PolicyChange]:
    """``DELETE /policies/{name}``: remove a policy (200 with it, or 202)."""

    def read(answer: Answer) -> PolicyChange:
        body = _body(answer, 200, 202)
        if answer.status == 202:
            return PolicyChange("accepted", event_id=str(body["event_id"]))
        return PolicyChange("deleted", Policy.from_json(body))

    return Call("DELETE", _policy_path(name), read, admin=True)
