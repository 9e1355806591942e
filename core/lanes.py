"""A lane: one pipelined connection to one Redis server, for script calls.

Script calls made during one turn of the event loop are packed (hiredis) into one write;
replies are read by one reader task and handed out in order (Redis answers a connection's
commands in the order it received them), so a call costs Python a share of a write and a
parse instead of a request/response cycle through a connection pool. Each script still
runs atomically on its own, so decisions stay exact.

redis-py makes the connection (address, password/ACL, TLS, database, client name), the
lane then owns its socket. What the lane keeps from a connection pool:

* **timeouts**: a call not answered within ``timeout_s`` fails, and with it the
  connection (its later replies could no longer be matched to their calls);
* **dead connections**: the reader sees a closed socket at once, fails what was in flight
  and the next call reconnects; nothing is retried (a script could run twice);
* **NOSCRIPT** (a restart, a failover, ``SCRIPT FLUSH``): the call is sent again with the
  script's source (``EVAL``), which cannot meet NOSCRIPT;
* **a server that will not serve this connection** (``on_error`` maps the reply to a
  connection error: ``READONLY`` from a demoted primary, ``LOADING``): the connection is
  dropped after that read, so the next call connects afresh (to the new primary).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio.connection import AbstractConnection

    from core.scripts import Script

__all__ = ["Batch", "BatchCall", "Call", "Lane", "ReplyError"]

ReplyError = hiredis.ReplyError


class Call:
    """One script call waiting for its reply."""

    __slots__ = ("args", "by_source", "future", "hops", "keys", "script")

    def __init__(
        self, script: Script, keys: list[str], args: list[Any], future: asyncio.Future[Any]
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future
        self.by_source = False
        self.hops = 0  #: cluster redirects followed so far

    @property
    def done(self) -> bool:
        return self.future.done()

    def settle(self, reply: Any) -> None:
        if not self.future.done():
            self.future.set_result(reply)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def packed(self) -> bytes:
        if self.by_source:
            head: tuple[Any, ...] = ("EVAL", self.script.source, len(self.keys))
        else:
            head = ("EVALSHA", self.script.sha, len(self.keys))
        return hiredis.pack_command((*head, *self.keys, *self.args))  # type: ignore[no-any-return]


class Batch:
    """The replies of many calls, in their order, and one future set when all are in (a
    future per call would cost a wake-up per call)."""

    __slots__ = ("future", "remaining", "replies")

    def __init__(self, size: int) -> None:
        self.future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.replies: list[Any] = [_PENDING] * size
        self.remaining = size
        if size == 0:
            self.future.set_result(self.replies)


_PENDING = object()


class BatchCall(Call):
    """One call of a :class:`Batch`: its reply (or error) goes to its place in the batch."""

    __slots__ = ("batch", "index")

    def __init__(
        self, script: Script, keys: list[str], args: list[Any], batch: Batch, index: int
    ) -> None:
        super().__init__(script, keys, args, batch.future)
        self.batch = batch
        self.index = index

    @property
    def done(self) -> bool:
        return self.batch.replies[self.index] is not _PENDING

    def settle(self, reply: Any) -> None:
        batch = self.batch
        if batch.replies[self.index] is _PENDING:
            batch.replies[self.index] = reply
            batch.remaining -= 1
            if batch.remaining == 0 and not batch.future.done():
                batch.future.set_result(batch.replies)

    def fail(self, error: BaseException) -> None:
        self.settle(error)


class Lane:
    """Pipelined script calls over one connection made by ``connect``."""

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        timeout_s: float,
        on_error: Callable[[Call, ReplyError], BaseException | None] | None = None,
    ) -> None:
        """``on_error`` maps an error reply to the exception its call fails with, or takes
        the call over and returns None (a cluster redirect)."""
        self._connect = connect
        self._timeout = timeout_s
        self._on_error = on_error
        self._queue: list[Call] = []
        self._sent: deque[tuple[Call, float]] = deque()
        self._scheduled = False
        self._connection: AbstractConnection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._stale: BaseException | None = None  # drop the connection after this read
        self.writes = 0  #: round trips started (fewer than calls under concurrency)

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight or connecting: the lane can be closed losing nothing."""
        return not self._queue and not self._sent and self._connecting is None

    def submit(self, call: Call) -> None:
        """Queue ``call``; it is written at the end of this turn of the event loop."""
        self._queue.append(call)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        if self._writer is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._open())
            return  # _open flushes the queue once connected
        calls, self._queue = self._queue, []
        self._write(calls)

    def _write(self, calls: list[Call]) -> None:
        assert self._writer is not None
        self._writer.write(b"".join([c.packed() for c in calls]))
        now = time.monotonic()
        self._sent.extend([(c, now) for c in calls])
        self.writes += 1
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self._timeout, self._watch)

    async def _open(self) -> None:
        connection: Any = self._connect()
        try:
            await connection.connect()
        except BaseException as exc:
            calls, self._queue = self._queue, []
            self._fail(calls, _as_connection_error(exc))
            self._connecting = None
            if not isinstance(exc, Exception):
                raise
            return
        self._connection = connection
        reader = connection._reader
        self._writer = connection._writer
        assert reader is not None
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        self._connecting = None
        self._flush()

    async def _read(self, stream: asyncio.StreamReader) -> None:
        parser = hiredis.Reader(encoding="utf-8", errors="replace")
        error: BaseException = RedisConnectionError("Connection closed by server.")
        try:
            while data := await stream.read(65536):
                parser.feed(data)
                again: list[Call] = []
                while (reply := parser.gets()) is not False:
                    call, _ = self._sent.popleft()
                    if isinstance(reply, ReplyError):
                        self._error(call, reply, again)
                    else:
                        call.settle(reply)
                if again:
                    self._write(again)
                if self._stale is not None:
                    error, self._stale = self._stale, None
                    break
        except (OSError, hiredis.ProtocolError) as exc:
            error = RedisConnectionError(f"Error while reading from Redis: {exc}")
        finally:
            if self._reader_task is asyncio.current_task():  # not replaced meanwhile
                self._reset(error)

    def _error(self, call: Call, reply: ReplyError, again: list[Call]) -> None:
        if str(reply).startswith("NOSCRIPT") and not call.by_source:
            call.by_source = True  # again, with the source: it caches the script too
            again.append(call)
            return
        exc: BaseException = reply
        if self._on_error is not None:
            mapped = self._on_error(call, reply)
            if mapped is None:
                return  # the hook took the call over (e.g. a cluster redirect)
            exc = mapped
        if isinstance(exc, RedisConnectionError):
            self._stale = exc
        call.fail(exc)

    def _watch(self) -> None:
        self._watchdog = None
        if not self._sent:
            return
        waited = time.monotonic() - self._sent[0][1]
        if waited >= self._timeout:
            self._reset(RedisTimeoutError(f"Timeout reading from Redis ({self._timeout:g} s)"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self._timeout - waited, self._watch)

    def _reset(self, error: BaseException) -> None:
        """Drop the connection; every call in flight fails with ``error``."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        writer, self._writer = self._writer, None
        connection, self._connection = self._connection, None
        task, self._reader_task = self._reader_task, None
        if writer is not None:
            writer.transport.abort()
        if connection is not None:
            connection._reader = connection._writer = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        sent = [call for call, _ in self._sent]
        self._sent.clear()
        self._fail(sent, error)

    @staticmethod
    def _fail(calls: list[Call], error: BaseException) -> None:
        for call in calls:
            call.fail(error)

    async def aclose(self) -> None:
        closed = RedisConnectionError("client closed")
        for task in (self._connecting, self._reader_task):
            if task is not None:
                task.cancel()
        tasks = [t for t in (self._connecting, self._reader_task) if t is not None]
        self._reset(closed)
        calls, self._queue = self._queue, []
        self._fail(calls, closed)
        await asyncio.gather(*tasks, return_exceptions=True)


def _as_connection_error(exc: BaseException) -> BaseException:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return exc
    return RedisConnectionError(f"Error connecting to Redis: {exc}")
