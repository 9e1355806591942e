"""A small closed-loop HTTP/1.1 load generator (used when wrk is not installed).

``python -m bench.loadgen --port P --scenario JSON --connections C --duration S`` opens C
keep-alive connections to 127.0.0.1:P with raw asyncio streams; each sends a request, reads
the whole answer and sends the next, until S seconds have passed (or ``--max-requests``
were sent). It prints one JSON object: a :class:`bench.load.LoadResult`.

:class:`Connection` is also what the benchmark uses for its own latency probes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING

from bench.load import LoadResult, Scenario, bucket_us, percentile_ms

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Connection", "main", "request_maker", "run"]

HOST = "127.0.0.1"


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        return self._reader, self._writer

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one whole request (bytes on the wire); return (status, body)."""
        reader, writer = await self._open()
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            body = await reader.readexactly(int(lower[at + 17 : end]))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            body = await _read_chunked(reader)
        else:
            body = b""
        if b"\r\nconnection: close" in lower:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def build_request(method: str, path: str, body: str = "") -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    if method == "GET":
        return (head + "\r\n").encode()
    data = body.encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


def request_maker(scenario: Scenario, rng: random.Random) -> Callable[[], bytes]:
    """A function returning the next request of ``scenario`` (fixed ones are prebuilt)."""
    if scenario.batch:
        return lambda: build_request(scenario.method, scenario.path, scenario.batch_body(rng))
    if scenario.keys:
        head = build_request(scenario.method, scenario.path, scenario.body)
        before, _, after = head.partition(b"{key}")
        prefix = before + scenario.key_prefix.encode()
        top = scenario.keys
        return lambda: b"%s%d%s" % (prefix, rng.randint(1, top), after)
    fixed = build_request(
        scenario.method, scenario.path.replace("{key}", scenario.key_prefix), scenario.body
    )
    return lambda: fixed


async def run(
    scenario: Scenario,
    port: int,
    *,
    connections: int,
    duration: float,
    max_requests: int = 10_000_000,
    seed: int | None = None,
) -> LoadResult:
    rng = random.Random(seed)
    make = request_maker(scenario, rng)
    histogram: Counter[int] = Counter()
    statuses: Counter[str] = Counter()
    errors = 0
    sent = 0
    conns = [Connection(port) for _ in range(connections)]
    for conn in conns:  # connect first, so that connecting is not measured
        await conn._open()
    clock = time.perf_counter
    started = clock()
    deadline = started + duration

    async def one(conn: Connection) -> None:
        nonlocal errors, sent
        while sent < max_requests:
            now = clock()
            if now >= deadline:
                return
            sent += 1
            try:
                status, _ = await conn.request(make())
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                errors += 1
                await conn.close()
                continue
            histogram[bucket_us((clock() - now) * 1e6)] += 1
            statuses[str(status)] += 1

    await asyncio.gather(*(one(conn) for conn in conns))
    elapsed = clock() - started
    for conn in conns:
        await conn.close()
    total = sum(histogram.values())
    mean = sum(b * n for b, n in histogram.items()) / max(total, 1) / 1000
    return LoadResult(
        scenario=scenario.name,
        tool="python",
        connections=connections,
        duration_s=round(elapsed, 3),
        requests=total,
        rps=round(total / elapsed, 1),
        p50_ms=percentile_ms(histogram, 0.50),
        p90_ms=percentile_ms(histogram, 0.90),
        p99_ms=percentile_ms(histogram, 0.99),
        max_ms=max(histogram, default=0) / 1000,
        mean_ms=round(mean, 3),
        statuses=dict(statuses),
        errors=errors,
        checks_per_request=scenario.checks_per_request,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", required=True, help="a bench.load.Scenario as JSON")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=10_000_000)
    args = parser.parse_args(argv)
    scenario = Scenario.from_json(args.scenario)
    result = asyncio.run(
        run(
            scenario,
            args.port,
            connections=max(1, args.connections),
            duration=min(args.duration, 600.0),
            max_requests=args.max_requests,
        )
    )
    json.dump(asdict(result), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
