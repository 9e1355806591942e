"""``throttler apply FILE``: publish a validated file of changes, optionally wait for it."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import msgspec

from core.gateway import Gateway, text
from core.keys import APPLIERS, KeySpace
from core.streams import EVENT_FIELD, now_ms, publish_many
from schemas.events import AuditEvent, ConfigEvent, DeadLetter
from workers.heartbeat import any_alive

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.bulk import BulkChange
    from core.settings import Settings
    from throttler.rls_file import RlsChange

__all__ = ["apply_changes"]

_audit = msgspec.json.Decoder(AuditEvent)
_dead = msgspec.json.Decoder(DeadLetter)
_SKIPPED = {"stale"}


_NO_WORKER = (
    "no worker heartbeat is alive: nothing applies these changes until `throttler serve` "
    "or `throttler worker` runs on this Redis"
)


class _Progress:
    """A progress bar redrawn in place (``\\r``) on a terminal; silent in a pipe or a log."""

    def __init__(self, total: int, label: str, out: TextIO) -> None:
        self.total, self.label, self.out, self.done = total, label, out, 0
        self._last = 0.0
        self._shown = out.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        if not self._shown:
            return
        now = time.monotonic()
        if now - self._last > 0.1 or self.done >= self.total:
            self._last = now
            width = 30
            filled = width * self.done // max(1, self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.out.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            if self.done >= self.total:
                self.out.write("\n")
            self.out.flush()


async def apply_changes(
    settings: Settings,
    changes: Sequence[BulkChange | RlsChange],
    *,
    actor: str,
    batch: int,
    wait: bool,
    timeout_s: float,
) -> int:
    """Publish ``changes`` (validated already); with ``wait``, follow them to their outcome."""
    if not changes:
        print("nothing to apply")
        return 0
    submitted = now_ms()
    events: list[ConfigEvent] = [c.event(actor, submitted) for c in changes]
    gateway = Gateway(settings)
    keys = KeySpace(*settings.keyspace_args)
    ids: list[str] = []
    progress = _Progress(len(events), "published", sys.stderr)
    started = time.monotonic()
    try:
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            ids += await publish_many(gateway, keys, chunk, settings.stream_maxlen)
            progress.advance(len(chunk))
        rate = len(ids) / max(time.monotonic() - started, 1e-9)
        print(f"published {len(ids)} changes ({rate:,.0f}/s) to {keys.config_stream}")
        if not wait:
            return 0
        if not await any_alive(gateway, keys, APPLIERS):
            print(f"waiting, but {_NO_WORKER}", file=sys.stderr)
        counts = await _wait(gateway, keys, ids, timeout_s)
        pending = len(ids) - sum(counts.values())
        alive = pending == 0 or await any_alive(gateway, keys, APPLIERS)
        hint = "" if alive else f" ({_NO_WORKER})"
    finally:
        await gateway.aclose()
    print(
        f"applied {counts['applied']}, skipped {counts['skipped']}, "
        f"failed {counts['failed']}, pending {pending}{hint}"
    )
    return 0 if counts["failed"] == 0 and pending == 0 else 1


async def _wait(gateway: Gateway, keys: KeySpace, ids: list[str], timeout_s: float) -> Counter[str]:
    """Follow the audit and dead-letter streams until every id has an outcome."""
    wanted = set(ids)
    counts: Counter[str] = Counter()
    # Outcome streams number their entries independently: start at the first change's
    # millisecond, sequence 0 (an outcome can share that millisecond with a lower sequence).
    first_ms = int(ids[0].split("-", 1)[0])
    start = f"{first_ms - 1}-18446744073709551615"
    cursors = {keys.audit_stream: start, keys.dead_stream: start}
    progress = _Progress(len(ids), "applied  ", sys.stderr)
    deadline = time.monotonic() + timeout_s
    while wanted and time.monotonic() < deadline:
        seen = 0
        for stream, cursor in list(cursors.items()):
            rows: Any = await gateway.call(
                "outcomes", gateway.client.xrange, stream, min=f"({cursor}", count=5000
            )
            for raw_id, fields in rows:
                cursors[stream] = text(raw_id)
                body = fields.get(EVENT_FIELD.encode(), b"{}")
                if stream == keys.audit_stream:
                    audit = _audit.decode(body)
                    config_id, kind = (
                        audit.config_id,
                        ("skipped" if audit.result in _SKIPPED else "applied"),
                    )
                else:
                    config_id, kind = _dead.decode(body).config_id, "failed"
                if config_id in wanted:
                    wanted.discard(config_id)
                    counts[kind] += 1
                    seen += 1
        progress.advance(seen)
        if wanted and not seen:
            await anyio.sleep(0.05)
    return counts
