"""The check routes, served before Litestar's router: ``POST /rate-limit/{key}/check`` and
``POST /check`` (and beside them the spend primitives of :mod:`api.spend`:
``/rate-limit/{key}/acquire``, ``/release``, ``/refund``).

A check is most of the traffic, and the framework's per-request machinery (routing,
dependency resolution, parameter parsing, response objects, middleware stacks) cost three
times the check itself. These two routes are therefore answered by :class:`LeanChecks`, a
plain ASGI layer in front of the Litestar app, which does exactly what the routes promise
and nothing else: key validation, one strict decode of the body, ``CHECK_TOKEN``, the
failure policy, every header, the same JSON errors and statuses, metrics (children bound
once), a server span when tracing is on, and an access-log line only when
``ACCESS_LOG_CHECKS`` asks for one. Everything else goes to Litestar. The two routes stay
declared in Litestar (``api/routes.py``, ``api/batch.py``) for the OpenAPI document.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from litestar.enums import ScopeType
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from api.auth import WRONG_TOKEN, bearer_refusal, throttled_message
from api.headers import Header, rate_limit_headers
from api.lean import AnswerError as _AnswerError
from api.lean import bad as _bad
from api.lean import decode_body as _decode
from api.lean import denied as _denied
from api.spend import ACQUIRE, REFUND, RELEASE, Spend
from api.throttle import client_address
from core.errors import LimitValidationError, RedisUnavailableError
from core.keys import validate_key
from schemas.http import (
    BatchRequest,
    BatchResponse,
    BatchResult,
    CheckAllowed,
    CheckRequest,
    ErrorResponse,
)
from schemas.limits import MAX_KEY_BYTES

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

    from api.services import Services
    from core.limiter import CheckResult
    from core.metrics import Metrics
    from core.settings import Settings
    from core.telemetry import Telemetry

__all__ = ["LeanChecks"]

_log = logging.getLogger("throttler.api")
_access = logging.getLogger("throttler.access")

SINGLE = "/rate-limit/{key}/check"
BATCH = "/check"
#: The routes of one key, by the last segment of their path.
_KEY_ROUTES = {"check": SINGLE, "acquire": ACQUIRE, "release": RELEASE, "refund": REFUND}

_encode = msgspec.json.Encoder().encode
_check_body = msgspec.json.Decoder(CheckRequest | None, strict=True)
_batch_body = msgspec.json.Decoder(BatchRequest, strict=True)
_JSON: Header = (b"content-type", b"application/json")
_NOT_ENFORCED: Header = (b"x-ratelimit-enforced", b"false")
_SHADOW_DENIED: Header = (b"x-ratelimit-shadow", b"denied")
_EMPTY = CheckRequest()


#: At most one "redis unavailable" line per this many seconds from the check routes.
UNAVAILABLE_LOG_S = 10.0


class LeanChecks:
    """ASGI: the check routes here, every other request to ``app`` (the Litestar app)."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics, telemetry: Telemetry):
        self.app = app
        self.services: Services | None = None  # set for the app's lifetime (lifespan)
        self._settings = settings
        self._max_body = settings.max_body_bytes
        self._metrics = metrics
        self._tracer = telemetry.tracer if telemetry.enabled else None
        self._access = settings.access_log_checks
        self._bound: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._decisions: dict[tuple[str, str], Any] = {}
        self._spend = Spend(self._degraded, self._decision)
        self._warned_at = -UNAVAILABLE_LOG_S  # monotonic time of the last "unavailable" line
        self._unlogged = 0  # degraded checks since that line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == ScopeType.HTTP
            and scope["method"] == "POST"
            and self.services is not None
        ):
            path: str = scope["path"]
            if path == BATCH:
                await self._serve(BATCH, "", scope, receive, send)
                return
            if path.startswith("/rate-limit/"):
                key, _, last = path[12:].rpartition("/")
                route = _KEY_ROUTES.get(last)
                if (
                    route is not None
                    and key
                    and ("/" not in key or b"%2f" in scope.get("raw_path", b"").lower())
                ):
                    await self._serve(route, key, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    # -- one request ----------------------------------------------------------------

    async def _serve(
        self, route: str, key: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        span = None
        if self._tracer is not None:
            carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            span = self._tracer.start_span(
                f"POST {route}",
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={
                    "http.route": route,
                    "http.method": "POST",
                    "http.target": scope["path"],
                },
            )
        status = 500
        with trace.use_span(span, end_on_exit=True) if span is not None else nullcontext():
            try:
                try:
                    status, body, headers = await self._answer(route, key, scope, receive)
                except _AnswerError as answer:
                    status, headers = answer.status, answer.headers
                    body = _encode(ErrorResponse(answer.code, answer.message))
                except Exception:
                    _log.exception("unhandled error")
                    status, headers = 500, []
                    body = _encode(ErrorResponse("internal_error", "internal error"))
                start: Any = {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
                }
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
            finally:
                # Inside the span: an access line carries the request's trace id.
                self._record(route, status, time.perf_counter() - started)
                if span is not None:
                    span.set_attribute("http.status_code", status)

    async def _answer(
        self, route: str, key: str, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, list[Header]]:
        services = self.services
        assert services is not None
        token = self._settings.check_token
        if token is not None:
            await self._authenticate(services, scope, token)
        if route != BATCH:
            try:
                validate_key(key)
            except Exception as exc:
                raise _AnswerError(400, "invalid_key", str(exc)) from None
        body = await self._body(scope, receive)
        if route == SINGLE:
            return await self._single(services, key, body)
        if route == BATCH:
            return await self._batch(services, body)
        return await self._spend.answer(route, services, key, body)

    async def _authenticate(self, services: Services, scope: Scope, token: str) -> None:
        """CHECK_TOKEN; a wrong one counts against the client's address (api.throttle)."""
        throttle = services.auth_failures
        address = client_address(scope)
        wait = throttle.locked(address)
        if wait is None:
            refusal = bearer_refusal(_header(scope, b"authorization"), token)
            if refusal is None:
                return
            message, challenge = refusal
            if message == WRONG_TOKEN:
                wait = await throttle.spend(address)
            if wait is None:
                challenge_header = (b"www-authenticate", challenge.encode())
                raise _AnswerError(401, "unauthorized", message, [challenge_header])
        retry = str(max(1, -(-wait // 1000))).encode()
        raise _AnswerError(
            429, "too_many_auth_failures", throttled_message(wait), [(b"retry-after", retry)]
        )

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > self._max_body:
            raise _AnswerError(413, "payload_too_large", "request body is too large")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _AnswerError(400, "validation_error", "the client went away")
            chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
            size += len(chunk)
            if size > self._max_body:
                raise _AnswerError(413, "payload_too_large", "request body is too large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- POST /rate-limit/{key}/check -------------------------------------------------

    async def _single(
        self, services: Services, key: str, body: bytes
    ) -> tuple[int, bytes, list[Header]]:
        request = (_decode(_check_body, body) or _EMPTY) if body.strip() else _EMPTY
        inline = request.inline_limit()
        if inline is not None and not self._settings.inline_limits:
            raise _bad(
                "inline limits are off (INLINE_LIMITS=false): set the key's limit with "
                "POST /rate-limit/{key}, or ask the operator to allow inline limits"
            )
        started = time.perf_counter()
        try:
            result = await services.limiter.check(
                key, request.tokens, inline, max_wait_ms=request.max_wait_ms
            )
        except LimitValidationError as exc:
            self._decision("unknown", "rejected").inc()
            raise _bad(str(exc)) from None
        except RedisUnavailableError as exc:
            return self._degraded(exc, 1, _encode(CheckAllowed(True, 0, 0, 0, enforced=False)))
        self._metrics.check_duration.observe(time.perf_counter() - started)
        headers = rate_limit_headers(result)
        if result.allowed or result.shadow:
            shadow: Literal["denied"] | None = None
            if result.allowed:
                self._decision(result.algorithm, "allowed").inc()
            else:  # shadow mode: a would-be denial, allowed, said and counted
                self._decision(result.algorithm, "shadow_denied").inc()
                shadow = "denied"
                headers = [*headers[:-1], _SHADOW_DENIED]  # no Retry-After: it is allowed
            allowed = CheckAllowed(
                True,
                result.remaining,
                result.limit,
                result.reset_after_ms,
                policy=result.policy,
                shadow=shadow,
                wait_ms=result.wait_ms if request.max_wait_ms else None,
            )
            return 200, _encode(allowed), headers
        self._decision(result.algorithm, "denied").inc()
        denied = _denied(result, "rate limit exceeded")
        return 429, _encode(denied), headers

    # -- POST /check ------------------------------------------------------------------

    async def _batch(self, services: Services, body: bytes) -> tuple[int, bytes, list[Header]]:
        if not body.strip():
            raise _bad("a JSON body is required")
        request = _decode(_batch_body, body)
        items = [(item.key, item.tokens) for item in request.checks]
        for key, _ in items:
            if len(key) > 64 and len(key.encode()) > MAX_KEY_BYTES:  # the pattern counts chars
                raise _bad(f"checks: key {key[:32]!r}... is longer than {MAX_KEY_BYTES} bytes")
        limiter = services.limiter
        try:
            if request.all_or_nothing:
                outcomes = await limiter.check_all(items)
            else:
                outcomes = await limiter.check_many(items)
        except LimitValidationError as exc:
            raise _bad(str(exc)) from None
        except RedisUnavailableError as exc:
            allowed = [BatchResult(key, True, 0, 0, 0) for key, _ in items]
            return self._degraded(exc, len(items), _encode(BatchResponse(True, allowed)))
        results = [_batch_result(key, o) for (key, _), o in zip(items, outcomes, strict=True)]
        for outcome in outcomes:
            if isinstance(outcome, LimitValidationError):
                self._decision("unknown", "rejected").inc()
            else:
                decision = "allowed" if outcome.allowed else "denied"
                if outcome.shadow and not outcome.allowed:
                    decision = "shadow_denied"
                self._decision(outcome.algorithm, decision).inc()
        return 200, _encode(BatchResponse(all(r.allowed for r in results), results)), []

    # -- shared -----------------------------------------------------------------------

    def _degraded(
        self, exc: RedisUnavailableError, count: int, open_body: bytes
    ) -> tuple[int, bytes, list[Header]]:
        """Redis could not answer: FAILURE_POLICY decides (closed: 503, open: allowed)."""
        policy = self._settings.failure_policy
        self._metrics.degraded.labels(policy).inc(count)
        decision = "degraded_allowed" if policy == "open" else "degraded_denied"
        self._decision("unknown", decision).inc(count)
        self._log_unavailable(exc, count, policy)
        if policy == "closed":
            raise _AnswerError(
                503,
                "redis_unavailable",
                "the rate-limit store (Redis) is unavailable; retry shortly",
                [(b"retry-after", b"1")],
            )
        # Fail open: allow, and say plainly that nothing was enforced.
        return 200, open_body, [_NOT_ENFORCED]

    def _log_unavailable(self, exc: RedisUnavailableError, count: int, policy: str) -> None:
        """One line per UNAVAILABLE_LOG_S at most, however many checks an outage fails
        (the metrics count every one)."""
        self._unlogged += count
        now = time.monotonic()
        if now - self._warned_at < UNAVAILABLE_LOG_S:
            return
        _log.warning(
            "redis unavailable: %s; %d check(s) answered by FAILURE_POLICY=%s since the last "
            "such line (at most one every %g s)",
            exc,
            self._unlogged,
            policy,
            UNAVAILABLE_LOG_S,
        )
        self._warned_at, self._unlogged = now, 0

    def _decision(self, algorithm: str, decision: str) -> Any:
        child = self._decisions.get((algorithm, decision))
        if child is None:
            child = self._decisions[algorithm, decision] = self._metrics.checks.labels(
                algorithm, decision
            )
        return child

    def _record(self, route: str, status: int, elapsed: float) -> None:
        bound = self._bound.get((route, status))
        if bound is None:
            bound = self._bound[route, status] = (
                self._metrics.http_requests.labels(route, "POST", str(status)),
                self._metrics.http_duration.labels(route, "POST"),
            )
        bound[0].inc()
        bound[1].observe(elapsed)
        # Answers are not logged one by one (ACCESS_LOG_CHECKS turns that on); errors are.
        logged = self._access or (status >= 400 and status != 429)
        if logged and _access.isEnabledFor(logging.INFO):
            _access.info(
                "POST %s %d %.1fms",
                route,
                status,
                elapsed * 1000,
                extra={
                    "event": "access",
                    "route": route,
                    "method": "POST",
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _batch_result(key: str, outcome: CheckResult | LimitValidationError) -> BatchResult:
    if isinstance(outcome, LimitValidationError):
        return BatchResult(key, False, 0, 0, 0, error="validation_error", message=str(outcome))
    allowed = outcome.allowed or outcome.shadow
    return BatchResult(
        key,
        allowed,
        outcome.remaining,
        outcome.limit,
        outcome.reset_after_ms,
        retry_after_ms=None if allowed else outcome.retry_after_ms,
        policy=outcome.policy,
        shadow=None if outcome.allowed else ("denied" if outcome.shadow else None),
    )
