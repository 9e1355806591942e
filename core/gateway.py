"""The Redis gateway: the one door between the service and Redis.

It owns the clients, and is the one place that

* turns driver errors into the project's own (:class:`RedisUnavailableError` when Redis
  could not answer: down, timing out, busy running a script, loading, read-only after a
  failover, out of memory, a cluster that is down), once, for every caller;
* decodes replies (script replies come back as text; :func:`text` for the rest);
* makes every Redis Cluster decision (which node, which slot, redirects, fan-out);
* runs scripts on the hot path: pipelined per node (:mod:`core.lanes`), each node behind a
  circuit breaker of its own, so a dead node costs its own keys a timeout and nothing else.

On a cluster that loses a master, the layout is re-read (``CLUSTER SLOTS``) when a call
fails (a script or a redis-py command), while a node's circuit is open and on ``MOVED``:
at most one refresh in flight and at most one every :data:`REFRESH_EVERY_S`, so a promoted
replica is found within about that time and a dead node's keys cannot start a refresh
storm. A refresh leaves the lanes of healthy nodes alone and closes only idle lanes of
nodes that no longer own slots. A call answered ``MOVED`` is sent again on the new owner's
lane (no task, no second client), at most :data:`MAX_HOPS` times; ``ASK`` (a slot being
migrated) goes through redis-py, at most :data:`MAX_ASKING` calls at once, so a redirect
storm cannot grow memory.

Everything else (streams, Pub/Sub, probes) uses :attr:`Gateway.client`, redis-py's client,
through :meth:`Gateway.call`.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from core.breaker import CircuitBreaker
from core.errors import RedisUnavailableError, StreamExhaustedError
from core.lanes import Batch, BatchCall, Call, Lane, ReplyError
from core.sentinel import is_primary, sentinel_client
from core.sentinel_url import is_sentinel_url
from core.settings import redact_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from core.metrics import Metrics
    from core.scripts import Script
    from core.settings import Settings
    from core.telemetry import Telemetry

__all__ = [
    "MAX_ASKING",
    "MAX_HOPS",
    "REFRESH_EVERY_S",
    "UNAVAILABLE_ERRORS",
    "Gateway",
    "describe",
    "is_unavailable",
    "make_client",
    "text",
]

T = TypeVar("T")

#: Least time between two cluster layout refreshes of one gateway (seconds).
REFRESH_EVERY_S = 0.2
#: Most MOVED redirects one script call follows before it fails as unavailable.
MAX_HOPS = 3
#: Most script calls following an ASK redirect at once; more fail as unavailable.
MAX_ASKING = 256

#: Driver exceptions that mean "Redis could not answer" (as opposed to a bug or a bad
#: command): also a full Redis (noeviction), a demoted master after a failover, a master
#: that is down, a server still loading its data.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,  # includes BusyLoadingError (LOADING)
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    OutOfMemoryError,
    ReadOnlyError,
    MasterDownError,
    OSError,
)


#: Redis's error for an XADD to a stream whose last id is the largest possible.
_EXHAUSTED = "exhausted the last possible ID"


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis could not answer now (retrying later may work).

    ``BUSY`` (a script ran past ``lua-time-limit``) has no exception class of its own in
    redis-py: every client of that server is refused until the script ends.
    """
    if isinstance(exc, (*UNAVAILABLE_ERRORS, RedisUnavailableError)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith("BUSY ")


def _unavailable(what: str, exc: BaseException) -> RedisUnavailableError:
    error = RedisUnavailableError(f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def text(value: bytes | str | int | None) -> str:
    """A reply value as text ("" for nil)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def describe(settings: Settings) -> str:
    """The Redis target as it may appear in a log line (password redacted)."""
    return redact_url(settings.redis_url) or "(embedded)"


def make_client(settings: Settings, url: str | None = None, *, blocking_ms: int = 0) -> Redis:
    """A redis-py client for ``url`` (default ``REDIS_URL``) with the configured timeouts.

    ``blocking_ms`` lengthens the read timeout for clients that issue blocking commands
    (``XREADGROUP ... BLOCK``), which must not time out before the server answers.
    With ``REDIS_CLUSTER=true`` the client is a :class:`RedisCluster`; it offers the same
    commands for everything this project uses, so it is typed as :class:`Redis`.
    """
    target = url or settings.redis_url
    if target is None:
        raise RedisUnavailableError("REDIS_URL is not set")
    timeout = settings.redis_timeout_ms / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout + blocking_ms / 1000,
        "socket_connect_timeout": timeout,
        "max_connections": settings.redis_max_connections,
        "health_check_interval": 0,
        # No silent retries (redis-py retries 10 times with backoff by default): a failed
        # call fails at once and the circuit breaker and FAILURE_POLICY decide what next.
        # A retry could also run a check twice when a connection dies after the script ran.
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.redis_cluster:
        cluster: Any = RedisCluster.from_url(target, **options)
        return cluster  # type: ignore[no-any-return]
    maint = MaintNotificationsConfig(enabled=False)  # see below
    if is_sentinel_url(target):  # the primary's address comes from the Sentinels
        return sentinel_client(
            settings, target, {**options, "timeout": timeout, "maint_notifications_config": maint}
        )
    # A blocking pool: past max_connections a call waits (up to the timeout) for a free
    # connection instead of failing at once with "Too many connections".
    # Maintenance notifications (a RESP3 feature of managed Redis offerings) stay off: while
    # they are on - redis-py 8.1 defaults them to "auto" - the pool skips its check that an
    # idle connection is still open, so the first command after a Redis restart or failover
    # failed on a dead socket ("Connection closed by server", /ready flapping to 503).
    pool = BlockingConnectionPool.from_url(
        target,
        timeout=timeout,
        maint_notifications_config=maint,
        **options,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class Gateway:
    """The clients of one process (or one CLI command) and every call made through them."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        url: str | None = None,
        blocking_ms: int = 0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.client: Redis = make_client(settings, url, blocking_ms=blocking_ms)
        # Script calls skip redis-py's instrumented command path: with tracing on, the
        # gateway reports each as a client span of its own (never a key in it).
        self._tracer = (
            telemetry.tracer_provider.get_tracer("throttler.gateway")
            if telemetry is not None and telemetry.enabled
            else None
        )
        self.cluster = isinstance(self.client, RedisCluster)
        #: The primary is found through Sentinel (``redis+sentinel://``).
        self.sentinel = is_sentinel_url(url or settings.redis_url)
        self._timeout_s = settings.redis_timeout_ms / 1000
        self._metrics = metrics
        self._breaker_failures = settings.breaker_failures
        self._breaker_cooldown_s = settings.breaker_cooldown_ms / 1000
        self._lanes: dict[str, tuple[Lane, CircuitBreaker]] = {}
        # Cluster node pools refuse (MaxConnectionsError) rather than wait once
        # REDIS_MAX_CONNECTIONS are busy: fan-out is bounded to half of them.
        self._fanout = asyncio.Semaphore(max(1, settings.redis_max_connections // 2))
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_EVERY_S  # monotonic time the last refresh ended
        self.refreshes = 0  #: cluster layout refreshes done (CLUSTER SLOTS)
        self._asking = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- every call -----------------------------------------------------------------

    async def call(
        self, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        """``await fn(*args, **kwargs)`` with driver errors wrapped; measured as ``what``."""
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if is_unavailable(exc):
                self._count_error(what)
                self._refresh()
                raise _unavailable(what, exc) from exc
            if isinstance(exc, ResponseError) and _EXHAUSTED in str(exc):
                self._count_error(what)
                raise StreamExhaustedError(f"{what}: {exc}") from exc
            raise
        finally:
            if self._metrics is not None:
                self._metrics.redis_duration.labels(what).observe(time.perf_counter() - started)

    def _count_error(self, what: str) -> None:
        if self._metrics is not None:
            self._metrics.redis_errors.labels(what).inc()

    async def ping(self) -> bool:
        """Redis answers; through Sentinel, only a primary counts (ROLE)."""
        if self.sentinel:
            return await self.call("ping", is_primary, self.client)
        return bool(await self.call("ping", self.client.ping))

    async def prepare(self, *, strict: bool = False) -> None:
        """Make a cluster client learn the cluster's layout before any concurrent use.

        redis-py's asyncio cluster client initializes lazily; many first commands at once
        race that initialization. Unless ``strict``, errors are left to the first real call
        (Redis may be down at start-up).
        """
        if not self.cluster:
            return
        cluster: Any = self.client
        if strict:
            await self.call("initialize", cluster.initialize)
            return
        with suppress(*UNAVAILABLE_ERRORS):
            await cluster.initialize()

    async def aclose(self) -> None:
        for lane, _ in self._lanes.values():
            await lane.aclose()
        self._lanes.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    # -- scripts --------------------------------------------------------------------

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` once, pipelined with the other calls of this loop turn.

        Through the breaker of the node that holds ``keys[0]``: while it is open the call
        fails at once. Nothing is retried (a script could run twice).
        """
        lane, breaker = self._lane(keys[0])
        try:
            breaker.admit()
        except RedisUnavailableError:
            self._refresh()  # has the node's slots moved to a promoted replica?
            raise
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lane.submit(Call(script, keys, args, future))
        if self._tracer is not None:
            future.add_done_callback(self._client_span(script))
        try:
            reply = await future
        except Exception as exc:
            raise self._failed(script, breaker, exc) from exc
        except BaseException:
            breaker.abandon()  # cancelled: no verdict on Redis
            raise
        breaker.success()
        return reply

    async def run_many(self, script: Script, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)``: replies (or the exception each call met,
        :class:`RedisUnavailableError` for an unavailable node) in order. Calls on one key
        run in the order given; one write per node."""
        batch = Batch(len(calls))
        breakers = []
        for index, (keys, args) in enumerate(calls):
            lane, breaker = self._lane(keys[0])
            breakers.append(breaker)
            call = BatchCall(script, keys, args, batch, index)
            try:
                breaker.admit()
            except RedisUnavailableError as refused:
                call.fail(refused)
            else:
                lane.submit(call)
        replies = await batch.future
        for index, (reply, breaker) in enumerate(zip(replies, breakers, strict=True)):
            if isinstance(reply, BaseException):
                replies[index] = self._failed(script, breaker, reply)
            else:
                breaker.success()
        return replies

    def _client_span(self, script: Script) -> Callable[[asyncio.Future[Any]], None]:
        """A client span for one script call, ended by its reply (OTel DB conventions)."""
        assert self._tracer is not None
        span = self._tracer.start_span(
            "EVALSHA",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": "redis",
                "db.operation.name": "EVALSHA",
                "db.statement": f"EVALSHA {script.name} ?",
            },
        )

        def end(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is not None:
                span.set_status(Status(StatusCode.ERROR, type(future.exception()).__name__))
            span.end()

        return end

    def _failed(self, script: Script, breaker: CircuitBreaker, exc: BaseException) -> Exception:
        """What a failed script call raises: unavailability wrapped (and counted against
        the node's breaker), anything else (a refusal, a bug) as it is."""
        if isinstance(exc, RedisUnavailableError):
            self._refresh()  # the breaker refused it: not a new failure
            return exc
        if is_unavailable(exc):
            breaker.failure()
            self._count_error(script.name)
            self._refresh()
            return _unavailable(script.name, exc)
        breaker.success()
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))

    def breaker(self, key: str) -> CircuitBreaker:
        """The circuit breaker of the node that holds ``key``."""
        return self._lane(key)[1]

    @property
    def writes(self) -> int:
        """Pipelined round trips started for scripts (fewer than calls under load)."""
        return sum(lane.writes for lane, _ in self._lanes.values())

    def one_slot(self, keys: list[str]) -> bool:
        """True when a script may touch all of ``keys`` at once (always, off a cluster)."""
        return not self.cluster or len({key_slot(k.encode()) for k in keys}) <= 1

    def _lane(self, key: str) -> tuple[Lane, CircuitBreaker]:
        if not self.cluster:
            found = self._lanes.get("")
            if found is None:
                found = self._new_lane("", self.client.connection_pool.make_connection)
            return found
        cluster: Any = self.client
        node = cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        return self._lanes.get(node.name) or self._node_lane(node)

    def _node_lane(self, node: Any) -> tuple[Lane, CircuitBreaker]:
        """The lane of a cluster node (a redis-py ``ClusterNode``), made on first use."""
        found = self._lanes.get(node.name)
        if found is None:

            def make() -> Any:
                return node.connection_class(**node.connection_kwargs)

            found = self._new_lane(node.name, make)
        return found

    def _new_lane(self, name: str, make: Callable[[], Any]) -> tuple[Lane, CircuitBreaker]:
        if self.cluster:
            self._prune()  # a new owner: has another node lost its slots?
        breaker = CircuitBreaker(self._breaker_failures, self._breaker_cooldown_s, self._metrics)
        found = self._lanes[name] = (Lane(make, self._timeout_s, self._reply_error), breaker)
        return found

    def _reply_error(self, call: Call, reply: ReplyError) -> BaseException | None:
        """An error reply as redis-py would raise it; cluster redirects are followed."""
        parsed = _parse_error(str(reply))
        if self.cluster and isinstance(parsed, MovedError):
            return self._moved(call, parsed)
        if self.cluster and isinstance(parsed, AskError):
            if self._asking >= MAX_ASKING:
                return TryAgainError(f"{MAX_ASKING} calls already follow ASK redirects")
            self._asking += 1
            task = asyncio.get_running_loop().create_task(self._ask(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return None
        if isinstance(parsed, ClusterDownError | RedisConnectionError | TryAgainError):
            self._refresh()
        if isinstance(parsed, ReadOnlyError | MasterDownError):
            # A demoted primary (a failover): as a lost connection, so the lane reconnects
            # to wherever the primary is now (with Sentinel, it asks the Sentinels again).
            lost = RedisConnectionError(f"{type(parsed).__name__}: {parsed}")
            lost.__cause__ = parsed
            return lost
        return parsed

    def _moved(self, call: Call, error: MovedError) -> BaseException | None:
        """The slot has a new owner: send the call again on its lane (the script did not
        run), and re-read the layout (once) so later calls go straight there."""
        self._refresh()
        if call.hops >= MAX_HOPS:
            return TryAgainError(f"MOVED {call.hops} times: the cluster is changing its layout")
        call.hops += 1
        cluster: Any = self.client
        node = cluster.nodes_manager.get_node(error.host, error.port)
        if node is None:  # not known yet: a node object only to make connections with
            node = ClusterNode(error.host, error.port, **cluster.nodes_manager.connection_kwargs)
        self._node_lane(node)[0].submit(call)
        return None

    async def _ask(self, call: Call) -> None:
        """Follow ASK (a slot being migrated) with redis-py's cluster client, which sends
        ``ASKING`` to the importing node first."""
        cluster: Any = self.client
        try:
            try:
                reply = await cluster.evalsha(
                    call.script.sha, len(call.keys), *call.keys, *call.args
                )
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                reply = await cluster.eval(
                    call.script.source, len(call.keys), *call.keys, *call.args
                )
        except Exception as exc:
            call.fail(exc)
            return
        finally:
            self._asking -= 1
        call.settle(_decoded(reply))

    def _refresh(self) -> None:
        """Re-read the cluster's layout soon: at most one refresh in flight (or waiting),
        at most one every :data:`REFRESH_EVERY_S`."""
        if not self.cluster or self._refreshing is not None:
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh_layout())
        self._tasks.add(self._refreshing)
        self._refreshing.add_done_callback(self._tasks.discard)

    async def _refresh_layout(self) -> None:
        cluster: Any = self.client
        try:
            wait = self._refreshed_at + REFRESH_EVERY_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            with suppress(Exception):  # no node answers: the next failure tries again
                await cluster.nodes_manager.initialize()
                self._prune()
                # redis-py asks one node (COMMAND GETKEYS) where the keys of XREADGROUP
                # and the like are, before its own error handling: while that node is
                # down every such command fails, for good. Ask another master from now on
                # (a refresh follows every failure, so a dead one is soon left behind).
                primaries = cluster.get_primaries()
                if primaries:
                    cluster.commands_parser.node = random.choice(primaries)  # noqa: S311
        finally:
            self.refreshes += 1
            self._refreshed_at = time.monotonic()
            self._refreshing = None

    def _prune(self) -> None:
        """Close the idle lanes of nodes that own no slot any more (a failed master, one
        that came back as a replica, one removed); the others are kept as they are."""
        cluster: Any = self.client
        owners = {nodes[0].name for nodes in cluster.nodes_manager.slots_cache.values() if nodes}
        for name, (lane, breaker) in list(self._lanes.items()):
            if name not in owners and lane.idle:
                del self._lanes[name]
                breaker.forget()
                task = asyncio.get_running_loop().create_task(lane.aclose())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- fan-out --------------------------------------------------------------------

    def primaries(self) -> list[Any]:
        """What a key-space scan visits: the server, or every master of a cluster."""
        if not self.cluster:
            return [None]
        cluster: Any = self.client
        return list(cluster.get_primaries())

    async def scan(self, node: Any, cursor: int, pattern: str, count: int) -> tuple[int, list[str]]:
        """One SCAN step on ``node`` (one of :meth:`primaries`): the next cursor and names."""
        if node is None:
            reply: Any = await self.call(
                "scan", self.client.scan, cursor, match=pattern, count=count
            )
        else:
            command: Any = self.client.execute_command
            reply = await self.call(
                "scan", command, "SCAN", cursor, "MATCH", pattern, "COUNT", count, target_nodes=node
            )
            cursors, names = reply  # redis-py's cluster client keys the cursors by node
            reply = (next(iter(cursors.values())), names) if isinstance(cursors, dict) else reply
        next_cursor, names = reply
        return int(next_cursor), [text(n) for n in names]

    async def publish_many(self, channel: str, messages: list[bytes]) -> None:
        """PUBLISH each message, in order off a cluster (cluster pipelines refuse it)."""
        if self.cluster:

            async def one(message: bytes) -> None:
                async with self._fanout:
                    await self.client.publish(channel, message)

            await self.call("publish", _gather, [one(m) for m in messages])
            return
        pipe = self.client.pipeline(transaction=False)
        for message in messages:
            pipe.publish(channel, message)
        await self.call("publish", pipe.execute)


async def _gather(awaitables: list[Awaitable[Any]]) -> list[Any]:
    return list(await asyncio.gather(*awaitables))


def _parse_error(message: str) -> BaseException:
    from redis._parsers.base import BaseParser  # noqa: PLC0415 - redis-py's error table

    parsed: BaseException = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return parsed


def _decoded(reply: Any) -> Any:
    """A redis-py reply (bytes) as the lanes give it (text)."""
    if isinstance(reply, bytes):
        return reply.decode(errors="replace")
    if isinstance(reply, list):
        return [_decoded(r) for r in reply]
    return reply
