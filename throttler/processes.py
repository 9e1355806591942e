"""``serve --workers N``: N server processes on one listening socket, and their supervisor.

The supervisor (this process) starts the servers, restarts one that dies, and passes
SIGTERM/SIGINT on to them: each drains and stops by itself (``throttler.server``), and the
supervisor returns when all have. The servers run in process groups of their own, so that
Ctrl-C in a terminal reaches them once, through the supervisor, not twice.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from contextlib import suppress
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from throttler.server import exit_quietly

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from multiprocessing.context import SpawnProcess
    from types import FrameType

__all__ = ["STARTUP_FAILURE", "run_processes"]

_log = logging.getLogger("throttler")
STARTUP_FAILURE = 3  # the exit status of a server that could not start (as uvicorn's)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _child(target: Callable[[list[socket.socket]], None], sockets: list[socket.socket]) -> None:
    os.setpgrp()
    for sig in _SIGNALS:  # a signal during start-up (before the server handles it)
        signal.signal(sig, exit_quietly)
    target(sockets)


class _Supervisor:
    def __init__(
        self, target: Callable[[list[socket.socket]], None], sockets: list[socket.socket]
    ) -> None:
        self.target = target
        self.sockets = sockets
        self.context = multiprocessing.get_context("spawn")
        self.children: list[SpawnProcess] = []
        self.received: list[int] = []

    def start(self) -> SpawnProcess:
        child = self.context.Process(
            target=_child, args=(self.target, self.sockets), name="throttler-server"
        )
        child.start()
        return child

    def stop(self, sig: int) -> None:
        """Pass ``sig`` on to every server still running."""
        self.received.append(sig)
        for child in self.children:
            if child.pid is not None and child.exitcode is None:
                with suppress(ProcessLookupError):
                    os.kill(child.pid, sig)

    def on_signal(self, sig: int, _frame: FrameType | None) -> None:
        if not self.received:
            count = len(self.children)
            _log.info("received %s: stopping %d server processes", signal.Signals(sig).name, count)
        self.stop(sig)

    def watch(self) -> None:
        """Until a signal: replace a server that died (stop all if one could not start)."""
        while not self.received:
            wait([child.sentinel for child in self.children], timeout=0.5)
            for i, child in enumerate(self.children):
                if child.exitcode is None or self.received:
                    continue
                if child.exitcode == STARTUP_FAILURE:
                    _log.error("a server process could not start; stopping")
                    self.stop(signal.SIGINT)  # no drain: nothing was served
                    return
                _log.error(
                    "server process %d exited (status %s); starting another",
                    child.pid,
                    child.exitcode,
                )
                self.children[i] = self.start()


def run_processes(
    target: Callable[[list[socket.socket]], None], count: int, sockets: list[socket.socket]
) -> int:
    """Run ``target(sockets)`` in ``count`` processes until a signal; 0 when all stopped
    cleanly, 3 when a server could not start, else 1."""
    supervisor = _Supervisor(target, sockets)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in _SIGNALS}
    try:
        supervisor.children.extend(supervisor.start() for _ in range(count))
        if supervisor.received:  # a signal came while they were being started
            supervisor.stop(supervisor.received[-1])
        supervisor.watch()
        # The servers hold the socket now; once the last one closes it, nothing listens.
        for sock in sockets:
            sock.close()
        for child in supervisor.children:
            child.join()
            if child.exitcode != 0:
                _log.error("server process %d exited with status %s", child.pid, child.exitcode)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = {child.exitcode for child in supervisor.children}
    if STARTUP_FAILURE in codes:
        return STARTUP_FAILURE
    return 0 if codes == {0} else 1
