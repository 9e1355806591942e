"""uvicorn's server, with a drain before it stops listening.

On SIGTERM uvicorn closes its listener at once, which resets the connections the kernel had
already accepted for it, and then waits (up to ``--grace``) for open streams. This server
instead:

1. begins the drain: ``/ready`` answers 503 (``api.drain.DrainGate``), every answer carries
   ``Connection: close`` (so keep-alive clients reconnect, through a load balancer that
   has taken this instance out), and open notification streams end;
2. keeps accepting and serving for ``SHUTDOWN_DRAIN_MS`` (SIGINT: no wait);
3. stops new connections without resetting queued ones (``throttler.listener``): new
   handshakes are dropped, the accept queue is emptied, then the listener is closed;
4. gives connections accepted at the last moment time to send their request, then shuts
   down as uvicorn does: in-flight requests finish (up to ``--grace``), then the app's
   lifespan ends (the in-process worker stops there).

A second signal during the drain ends it at once; SIGINT after it forces the exit, as in
uvicorn. The process exits 0: the signal is not raised again after a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import TYPE_CHECKING

import uvicorn

from api.drain import DrainGate
from throttler.listener import accept_queue_length, refuse_new_connections

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from types import FrameType

    from api.drain import Drain
    from throttler.listener import Listener

__all__ = ["DrainingServer", "exit_quietly"]

_log = logging.getLogger("throttler")

_SETTLE_S = 0.1  # handshakes under way when new ones are refused complete within this
_QUEUE_WAIT_S = 2.0  # at most this long emptying the accept queue
_FIRST_REQUEST_S = 0.5  # at most this long for a just-accepted connection to send its request
_CLOSE = (b"connection", b"close")


def exit_quietly(signum: int, frame: FrameType | None) -> None:
    """A signal handler for the time before the server handles signals (start-up): exit 0
    through ``finally`` blocks, rather than die at once."""
    raise SystemExit(0)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s
        self._drain_ends: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.config.loaded:
            self.config.load()
        self.config.loaded_app = DrainGate(self.config.loaded_app, self.drain)
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler (main thread). Unlike uvicorn's, it records no signal to raise
        again after the stop, so that a clean stop exits 0."""
        if self._drain_ends is None:
            drain_s = self.drain_s if sig == signal.SIGTERM else 0.0
            self._drain_ends = time.monotonic() + drain_s
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._begin_drain, signal.Signals(sig).name, drain_s)
        elif not self.should_exit:
            self.should_exit = True  # a second signal: end the drain now
        elif sig == signal.SIGINT:
            self.force_exit = True

    def _begin_drain(self, name: str, drain_s: float) -> None:
        _log.info(
            "received %s: draining for %.1f s (/ready answers 503, connections close after "
            "their answer), then stopping",
            name,
            drain_s,
        )
        self.drain.begin()
        # uvicorn adds these headers to every answer, and stops keep-alive on this one.
        self.config.encoded_headers = [*self.config.encoded_headers, _CLOSE]
        self.server_state.default_headers = [*self.server_state.default_headers, _CLOSE]

    async def on_tick(self, counter: int) -> bool:
        if self._drain_ends is not None and time.monotonic() >= self._drain_ends:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        listeners = [s for server in self.servers for s in server.sockets]
        if listeners and all(refuse_new_connections(s) for s in listeners):
            await self._empty_accept_queues(listeners)
        for server in self.servers:
            server.close()
        await self._wait_first_requests()
        await super().shutdown(sockets)

    async def _empty_accept_queues(self, listeners: Sequence[Listener]) -> None:
        """Keep accepting until the queues are empty (the event loop does the accepting)."""
        settled = time.monotonic() + _SETTLE_S
        deadline = settled + _QUEUE_WAIT_S
        while time.monotonic() < deadline:
            queued = sum(accept_queue_length(s) for s in listeners)
            if not queued and time.monotonic() >= settled:
                return
            await asyncio.sleep(0.005)
        _log.info("accept queue not empty after %.1f s; closing the listener", _QUEUE_WAIT_S)

    async def _wait_first_requests(self) -> None:
        """uvicorn's shutdown closes connections that have no request in progress, which
        would drop a request still on its way on a connection accepted a moment ago."""
        deadline = time.monotonic() + _FIRST_REQUEST_S
        while time.monotonic() < deadline:
            # HTTP protocols have no cycle until a request's head has arrived.
            if all(getattr(c, "cycle", True) is not None for c in self.server_state.connections):
                return
            await asyncio.sleep(0.005)
