"""``throttler apply FILE``: validate a whole file, publish it, optionally wait for it."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import msgspec

from core.bulk import parse_bulk_file
from core.gateway import Gateway, text
from core.keys import KeySpace
from core.streams import EVENT_FIELD, now_ms, publish_many
from schemas.events import AuditEvent, ConfigEvent, DeadLetter, DeleteLimit, SetLimit

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["apply_file"]

_audit = msgspec.json.Decoder(AuditEvent)
_dead = msgspec.json.Decoder(DeadLetter)
_SKIPPED = {"stale"}


class _Progress:
    def __init__(self, total: int, label: str, out: TextIO) -> None:
        self.total, self.label, self.out, self.done = total, label, out, 0
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
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


async def apply_file(
    settings: Settings, path: str, *, actor: str, batch: int, wait: bool, timeout_s: float
) -> int:
    changes = parse_bulk_file(path)  # raises with the bad item's position; nothing sent
    if not changes:
        print("nothing to apply")
        return 0
    submitted = now_ms()
    events: list[ConfigEvent] = [
        DeleteLimit(key=c.key, actor=actor, submitted_at_ms=submitted)
        if c.limit is None
        else SetLimit(key=c.key, limit=c.limit, actor=actor, submitted_at_ms=submitted)
        for c in changes
    ]
    gateway = Gateway(settings)
    keys = KeySpace(settings.key_prefix)
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
        counts = await _wait(gateway, keys, ids, timeout_s)
    finally:
        await gateway.aclose()
    pending = len(ids) - sum(counts.values())
    print(
        f"applied {counts['applied']}, skipped {counts['skipped']}, "
        f"failed {counts['failed']}, pending {pending}"
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
