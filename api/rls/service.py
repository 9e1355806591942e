"""``ShouldRateLimit``: Envoy's question, answered with one script call.

Each descriptor is resolved to a rule (the request's ``limit`` override, else the domain's
tree: :mod:`api.rls.table`); descriptors under a limit become keys of one group
(:mod:`core.groups`), decided atomically: a request over any enforced limit spends nothing
(on a Redis Cluster: nothing in that hash slot). Redis trouble follows FAILURE_POLICY
within REDIS_TIMEOUT_MS: closed answers gRPC UNAVAILABLE (Envoy then applies its own
``failure_mode_deny``), open answers OK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from api.rls.proto import rls_pb2 as pb
from api.rls.table import UNIT_NUMBER, Rule, RuleTable, make_rule
from core.errors import RedisUnavailableError
from core.groups import GroupChecker, GroupDecision, GroupItem
from schemas.limits import MAX_REQUESTS
from schemas.rls import UNIT_MS

if TYPE_CHECKING:
    from api.services import Services

__all__ = ["MAX_DESCRIPTORS", "MAX_ENTRIES", "RateLimitService"]

_log = logging.getLogger("throttler.rls")

MAX_DESCRIPTORS = 64  #: descriptors in one request
MAX_ENTRIES = 16  #: entries in one descriptor
MAX_TEXT_BYTES = 1024  #: a domain, key or value
_CACHED = 10_000  # metric children and counter keys remembered
_UNLIMITED_REMAINING = 2**32 - 1  # what the reference server reports for `unlimited`
_UNIT_BY_NUMBER = {number: name for name, number in UNIT_NUMBER.items()}

OK = pb.RateLimitResponse.OK
OVER_LIMIT = pb.RateLimitResponse.OVER_LIMIT
SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"


class InvalidRequestError(ValueError):
    """A request no answer can be given to (gRPC INVALID_ARGUMENT)."""


def _text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT_BYTES // 4 and len(value.encode()) > MAX_TEXT_BYTES:
        raise InvalidRequestError(f"{what} is longer than {MAX_TEXT_BYTES} bytes")
    return value


def _hits(request: Any, descriptor: Any) -> int:
    hits = request.hits_addend or 1
    if descriptor.HasField("hits_addend"):
        hits = descriptor.hits_addend.value
    if hits > MAX_REQUESTS:
        raise InvalidRequestError(f"hits_addend {hits} is above {MAX_REQUESTS}")
    return int(hits)


def _override(descriptor: Any) -> Rule:
    limit = descriptor.limit
    unit = _UNIT_BY_NUMBER.get(limit.unit)
    if unit is None:
        raise InvalidRequestError(
            "limit override: unit must be SECOND, MINUTE, HOUR, DAY, WEEK or MONTH "
            f"(got {pb.RateLimitResponse.RateLimit.Unit.Name(limit.unit)})"
            if limit.unit in pb.RateLimitResponse.RateLimit.Unit.values()
            else f"limit override: unknown unit {limit.unit}"
        )
    if limit.requests_per_unit > MAX_REQUESTS:
        raise InvalidRequestError(
            f"limit override: requests_per_unit {limit.requests_per_unit} is above {MAX_REQUESTS}"
        )
    return make_rule(limit.requests_per_unit, unit, UNIT_MS[unit], path="override")


class _Resolved:
    """One request, parsed and resolved: each descriptor's entries, hits and rule."""

    __slots__ = ("domain", "entries", "hits", "rules")

    def __init__(self, request: Any, table: RuleTable) -> None:
        domain = _text(request.domain, "domain")
        if not domain:
            raise InvalidRequestError("domain must not be empty")
        count = len(request.descriptors)
        if count == 0:
            raise InvalidRequestError("descriptors must not be empty")
        if count > MAX_DESCRIPTORS:
            raise InvalidRequestError(f"at most {MAX_DESCRIPTORS} descriptors (got {count})")
        known = table.known(domain)
        self.domain = domain
        self.entries: list[tuple[tuple[str, str], ...]] = []
        self.hits: list[int] = []
        self.rules: list[Rule | None] = []
        for number, descriptor in enumerate(request.descriptors):
            entries = tuple(
                (_text(e.key, "descriptor key"), _text(e.value, "descriptor value"))
                for e in descriptor.entries
            )
            if not entries:
                raise InvalidRequestError(f"descriptor {number} has no entries")
            if len(entries) > MAX_ENTRIES:
                raise InvalidRequestError(f"descriptor {number}: at most {MAX_ENTRIES} entries")
            if any(not key for key, _ in entries):
                raise InvalidRequestError(f"descriptor {number} has an entry with an empty key")
            self.entries.append(entries)
            self.hits.append(_hits(request, descriptor))
            if descriptor.HasField("limit"):
                # As the reference server: an override counts only in a known domain.
                self.rules.append(_override(descriptor) if known else None)
            else:
                self.rules.append(table.lookup(domain, entries))
        replaced = {name for r in self.rules if r is not None for name in r.replaces}
        if replaced:
            self.rules = [
                None if r is not None and r.name and r.name in replaced else r for r in self.rules
            ]


def _duration(rule: Rule, decision: GroupDecision, over: bool) -> int:
    """ms until the limit resets: the window's end for fixed windows (Envoy's meaning)."""
    limit = rule.limit
    assert limit is not None
    if limit.algorithm == "fixed_window":
        return limit.window_ms - decision.now_ms % limit.window_ms
    return decision.retry_after_ms if over else decision.reset_after_ms


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RateLimitService:
    """The servicer: ``ShouldRateLimit`` over the process's :class:`Services`."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._table = RuleTable()
        self._groups = GroupChecker(services.gateway, services.keys)
        self._timeout_s = services.settings.redis_timeout_ms / 1000
        self._headers = services.settings.rls_response_headers
        self._open = services.settings.failure_policy == "open"
        metrics = services.metrics
        self._requests = {
            r: metrics.rls_requests.labels(r)
            for r in ("ok", "over_limit", "invalid", "unavailable", "degraded_open")
        }
        self._descriptors = metrics.rls_descriptors
        self._counters: dict[tuple[str, str, str], Any] = {}  # bounded: labels are
        self._keys: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._duration = metrics.rls_duration
        telemetry = services.telemetry
        self._tracer = telemetry.tracer if telemetry.enabled else None

    def _current_table(self) -> RuleTable:
        domains = self._services.domains
        if domains.version != self._table.version:
            self._table.load(domains.domains, domains.version)
        return self._table

    async def ShouldRateLimit(  # noqa: N802 - the gRPC method's name
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        if self._tracer is None:
            return await self._answer(request, context)
        with self._tracer.start_as_current_span(
            f"{SERVICE_NAME}/ShouldRateLimit",
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": SERVICE_NAME,
                "rpc.method": "ShouldRateLimit",
                "throttler.rls.descriptors": len(request.descriptors),
            },
        ) as span:
            try:
                response = await self._answer(request, context)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attribute(
                "throttler.rls.overall_code",
                pb.RateLimitResponse.Code.Name(response.overall_code),
            )
            return response

    async def _answer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        try:
            resolved = _Resolved(request, self._current_table())
        except InvalidRequestError as exc:
            self._requests["invalid"].inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this line only satisfies the type checker
        items, index = self._items(resolved)
        decisions: list[GroupDecision] = []
        if items:
            try:
                async with asyncio.timeout(self._timeout_s):  # no task of its own
                    decisions = await self._groups.check(items)
            except (RedisUnavailableError, TimeoutError) as exc:
                return await self._degraded(exc, resolved, context)
        response = self._response(resolved, index, decisions)
        result = "over_limit" if response.overall_code == OVER_LIMIT else "ok"
        self._requests[result].inc()
        self._duration.observe(time.perf_counter() - started)
        return response

    def _items(self, resolved: _Resolved) -> tuple[list[GroupItem], list[int]]:
        """The group's keys (a descriptor listed twice is one key, its hits added up) and,
        for each descriptor, its item's position (-1: not counted)."""
        items: list[GroupItem] = []
        index: list[int] = []
        by_key: dict[str, int] = {}
        for entries, hits, rule in zip(
            resolved.entries, resolved.hits, resolved.rules, strict=True
        ):
            if rule is None or rule.limit is None:
                index.append(-1)
                continue
            key = self._key(resolved.domain, entries)
            at = by_key.get(key)
            if at is None:
                by_key[key] = at = len(items)
                items.append(GroupItem(key, hits, rule.args, rule.shadow))
            else:
                old = items[at]
                items[at] = GroupItem(key, old.tokens + hits, old.limits, old.advisory)
            index.append(at)
        return items, index

    def _response(
        self, resolved: _Resolved, index: list[int], decisions: list[GroupDecision]
    ) -> Any:
        statuses = []
        overall = OK
        closest: tuple[int, Rule, int] | None = None  # remaining, rule, reset ms
        domain = resolved.domain if self._table.known(resolved.domain) else "unknown"
        for rule, at, entries in zip(resolved.rules, index, resolved.entries, strict=True):
            if rule is None:
                self._count(domain, "", "no_limit")
                statuses.append(pb.RateLimitResponse.DescriptorStatus(code=OK))
                continue
            label = rule.path + (f"_{entries[-1][1]}" if rule.detailed else "")
            if rule.unlimited:
                self._count(domain, label, "unlimited")
                statuses.append(
                    pb.RateLimitResponse.DescriptorStatus(
                        code=OK, limit_remaining=_UNLIMITED_REMAINING
                    )
                )
                continue
            if at < 0:  # blocked: requests_per_unit 0
                over, remaining, reset_ms = True, 0, _blocked_reset(rule)
            else:
                decision = decisions[at]
                over = decision.code != 1
                remaining = 0 if over else decision.remaining
                reset_ms = _duration(rule, decision, over)
            code = OVER_LIMIT if over and not rule.shadow else OK
            result = "ok" if not over else ("shadow_over_limit" if rule.shadow else "over_limit")
            self._count(domain, label, result)
            if code == OVER_LIMIT:
                overall = OVER_LIMIT
            status = pb.RateLimitResponse.DescriptorStatus(
                code=code,
                current_limit=pb.RateLimitResponse.RateLimit(
                    name=rule.name, requests_per_unit=rule.requests_per_unit, unit=rule.unit
                ),
                limit_remaining=remaining,
            )
            status.duration_until_reset.FromMilliseconds(reset_ms)
            statuses.append(status)
            if closest is None or remaining < closest[0]:
                closest = (remaining, rule, reset_ms)
        response = pb.RateLimitResponse(overall_code=overall, statuses=statuses)
        if closest is not None and self._headers != "off":
            response.response_headers_to_add.extend(self._header_values(*closest))
        return response

    def _header_values(self, remaining: int, rule: Rule, reset_ms: int) -> list[Any]:
        seconds = -(-reset_ms // 1000)
        if self._headers == "x-ratelimit":
            pairs = [
                ("X-RateLimit-Limit", str(rule.requests_per_unit)),
                ("X-RateLimit-Remaining", str(remaining)),
                ("X-RateLimit-Reset", str(seconds)),
            ]
        else:
            name = _quoted(rule.name or rule.path)
            window_s = max(1, -(-rule.window_ms // 1000))
            pairs = [
                ("RateLimit-Policy", f"{name};q={rule.requests_per_unit};w={window_s}"),
                ("RateLimit", f"{name};r={remaining};t={seconds}"),
            ]
        return [pb.HeaderValue(key=k, value=v) for k, v in pairs]

    def _count(self, domain: str, descriptor: str, result: str) -> None:
        child = self._counters.get((domain, descriptor, result))
        if child is None:
            child = self._descriptors.labels(domain, descriptor, result)
            if len(self._counters) < _CACHED:
                self._counters[domain, descriptor, result] = child
        child.inc()

    def _key(self, domain: str, entries: tuple[tuple[str, str], ...]) -> str:
        key = self._keys.get((domain, entries))
        if key is None:
            key = self._services.keys.descriptor_key(domain, entries)
            if len(self._keys) >= _CACHED:
                self._keys.clear()
            self._keys[domain, entries] = key
        return key

    async def _degraded(
        self,
        exc: BaseException,
        resolved: _Resolved,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Any:
        """Redis could not answer in time: FAILURE_POLICY decides."""
        reason = str(exc) or f"no answer within {self._timeout_s * 1000:.0f} ms"
        self._services.metrics.degraded.labels("open" if self._open else "closed").inc()
        if not self._open:
            self._requests["unavailable"].inc()
            _log.warning("RLS: redis unavailable: %s", reason)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the rate-limit store (Redis) is unavailable; FAILURE_POLICY=closed",
            )
            raise RedisUnavailableError(reason)  # abort raises first
        self._requests["degraded_open"].inc()
        statuses = [pb.RateLimitResponse.DescriptorStatus(code=OK) for _ in resolved.rules]
        return pb.RateLimitResponse(overall_code=OK, statuses=statuses)


def _blocked_reset(rule: Rule) -> int:
    window = rule.window_ms or UNIT_MS.get(_UNIT_BY_NUMBER.get(rule.unit, "second"), 1000)
    return window - int(time.time() * 1000) % window
