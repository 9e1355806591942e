"""What Redis did during a phase: INFO before and after, as deltas per check."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

__all__ = ["RedisCost", "Snapshot", "quiet_snapshot", "snapshot"]


@dataclass(frozen=True)
class Snapshot:
    evalsha_calls: int
    evalsha_usec: int
    commands: int
    reads: int
    cpu_s: float

    def __sub__(self, before: Snapshot) -> Snapshot:
        return Snapshot(
            self.evalsha_calls - before.evalsha_calls,
            self.evalsha_usec - before.evalsha_usec,
            self.commands - before.commands,
            self.reads - before.reads,
            self.cpu_s - before.cpu_s,
        )


def snapshot(client: redis.Redis) -> Snapshot:
    info: dict[str, Any] = client.info("all")
    evalsha = info.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return Snapshot(
        evalsha_calls=int(evalsha["calls"]),
        evalsha_usec=int(evalsha["usec"]),
        commands=int(info["total_commands_processed"]),
        reads=int(info.get("total_reads_processed", 0)),
        cpu_s=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    )


def quiet_snapshot(client: redis.Redis, settle: float = 0.3, limit: float = 15.0) -> Snapshot:
    """A snapshot once no script has run for ``settle`` seconds (at most ``limit``).

    When the load tool stops, the requests it had in flight are still being served; waiting
    for them keeps their script calls in the phase that sent them.
    """
    deadline = time.monotonic() + limit
    last = snapshot(client)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = snapshot(client)
        if now.evalsha_calls == last.evalsha_calls:
            return now
        last = now
    return last


@dataclass
class RedisCost:
    """Redis work per check over one phase.

    ``checks`` are the decisions the clients received; ``script_calls`` the check scripts
    Redis ran (a few more under load: the requests in flight when the load tool stopped
    are served after it left). Per-check figures divide by ``script_calls``.
    ``reads_per_check`` counts the read events Redis served: one per round trip as long as
    a pipeline fits one 16 KiB read, so it is an upper bound of round trips per check.
    ``commands_per_check`` counts the script call and the commands the script ran.
    """

    checks: int
    script_calls: int
    evalsha_per_check: float  # script calls per answered check
    reads_per_check: float
    commands_per_check: float
    script_us_per_check: float
    redis_cpu_us_per_check: float

    @classmethod
    def of(cls, delta: Snapshot, checks: int) -> RedisCost:
        calls = max(delta.evalsha_calls, 1)
        return cls(
            checks=checks,
            script_calls=delta.evalsha_calls,
            evalsha_per_check=round(delta.evalsha_calls / max(checks, 1), 3),
            reads_per_check=round(delta.reads / calls, 3),
            commands_per_check=round(delta.commands / calls, 2),
            script_us_per_check=round(delta.evalsha_usec / calls, 2),
            redis_cpu_us_per_check=round(delta.cpu_s * 1e6 / calls, 2),
        )
