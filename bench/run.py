"""``python -m bench``: run every measurement, print the table, write JSON and the docs.

Order of a run (every figure from this one run):

1. a Redis for the service and a scratch Redis for the direct measurements;
2. the service (``throttler serve --workers N``) under load from a separate process:
   ``GET /health``, checks on one key and on random keys, batches, then one connection
   at a time; Redis INFO before and after each phase;
3. a second API process for config propagation, then ``throttler apply`` of 10,000 limits;
4. a profiled server process under load (where the time goes);
5. uvicorn against granian at one and two server processes;
6. Redis memory per key, redis-benchmark of the check script, and the ``limits`` library
   against our limiter in-process (on the scratch Redis).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench import report
from bench.config import measure_bulk_apply, measure_propagation
from bench.load import (
    BATCH,
    CHECK_ONE,
    CHECK_RANDOM,
    HEALTH,
    HOT_KEY,
    LoadResult,
    Scenario,
    run_load,
    wrk_path,
)
from bench.memory import measure_memory
from bench.procs import (
    ROOT,
    ApiServer,
    BenchError,
    ProcessSet,
    RedisServer,
    http_call,
    http_exchange,
    interrupts_as_exceptions,
)
from bench.profile import analyse
from bench.redisstats import RedisCost, quiet_snapshot
from bench.reference import decisions_agree, measure_inprocess, redis_benchmark

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Options", "main"]

SEQUENTIAL_CHECK = Scenario(
    "seq_check", CHECK_RANDOM.method, CHECK_RANDOM.path, CHECK_RANDOM.body, "bench-s", 100_000
)
SEQUENTIAL_HEALTH = Scenario("seq_health", "GET", "/health")


@dataclass
class Options:
    quick: bool
    server_processes: int
    server: str
    duration: float
    connections: int
    tool: str
    out: Path
    docs: Path | None
    keys: int
    memory_keys: int
    changes: int
    bulk: int
    rb_requests: int
    inproc_seconds: float
    compare: bool
    profile: bool


@dataclass
class Run:
    """Everything measured; ``report`` turns it into the table, the JSON and the docs."""

    options: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    load: dict[str, dict[str, Any]] = field(default_factory=dict)
    propagation: dict[str, Any] = field(default_factory=dict)
    bulk_apply: dict[str, Any] = field(default_factory=dict)
    profile: list[dict[str, Any]] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    redis_benchmark: list[dict[str, Any]] = field(default_factory=list)
    inprocess: list[dict[str, Any]] = field(default_factory=list)
    decisions_agree: dict[str, bool] = field(default_factory=dict)
    response_headers: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.procs = ProcessSet()
        self.run = Run(options={k: str(v) for k, v in asdict(opts).items()})
        self.redis = RedisServer(self.procs, name="redis")
        self.scratch = RedisServer(self.procs, name="redis-scratch")

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def section(self, name: str, step: Callable[[], None]) -> None:
        """Run one part; an error is recorded (and the run goes on), Ctrl-C is not caught."""
        started = time.monotonic()
        try:
            step()
        except Exception as exc:
            self.run.errors[name] = f"{type(exc).__name__}: {exc}"
            self.log(f"{name} FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
        finally:
            self.run.seconds[name] = round(time.monotonic() - started, 1)

    def load(self, scenario: Scenario, port: int, duration: float, connections: int) -> LoadResult:
        return run_load(
            scenario,
            port,
            connections=connections,
            duration=duration,
            tool=self.opts.tool,
            workdir=str(self.procs.workdir),
        )

    # -- the service under load -----------------------------------------------------------

    def _main_phases(self) -> None:
        opts = self.opts
        api = ApiServer(
            self.procs, self.redis.url, server=opts.server, processes=opts.server_processes
        ).start()
        client = redis.Redis.from_url(self.redis.url)
        try:
            status, body = http_call(
                api.port,
                "POST",
                f"/rate-limit/{HOT_KEY}",
                b'{"requests": 1000000000, "window_ms": 1000}',
            )
            if status not in (200, 201):
                raise BenchError(f"could not set the hot key's limit: {status} {body[:200]!r}")
            for name, method, path, payload in (
                ("health", "GET", "/health", None),
                ("check", "POST", f"/rate-limit/{HOT_KEY}/check", b'{"tokens":1}'),
            ):
                self.run.response_headers[name] = len(
                    http_exchange(api.port, method, path, payload)[2]
                )
            warm = 1.0 if opts.quick else 2.0
            self.log(f"warming up {opts.server} x{opts.server_processes} ({warm:.0f} s)")
            self.load(CHECK_RANDOM.with_keys(opts.keys), api.port, warm, opts.connections)
            self.load(HEALTH, api.port, 1.0, opts.connections)
            phases = [
                (HEALTH, opts.duration, opts.connections),
                (CHECK_ONE, opts.duration, opts.connections),
                (CHECK_RANDOM.with_keys(opts.keys), opts.duration, opts.connections),
                (BATCH.with_keys(opts.keys), opts.duration, opts.connections),
                (SEQUENTIAL_CHECK.with_keys(opts.keys), opts.duration, 1),
                (SEQUENTIAL_HEALTH, max(1.0, opts.duration / 2), 1),
            ]
            for scenario, duration, connections in phases:
                self.log(f"load: {scenario.name}, {connections} connection(s), {duration:.0f} s")
                before = quiet_snapshot(client)
                result = self.load(scenario, api.port, duration, connections)
                delta = quiet_snapshot(client) - before
                entry: dict[str, Any] = {"load": result.summary()}
                if scenario.checks_per_request:
                    checks = round(result.checks_per_s * result.duration_s)
                    entry["redis"] = asdict(RedisCost.of(delta, checks))
                self.run.load[scenario.name] = entry
                self.log(
                    f"  {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, statuses {result.statuses}"
                )
            self.section("propagation", lambda: self._propagation(api))
            self.section("bulk_apply", self._bulk_apply)
        finally:
            client.close()
            api.stop()

    def _propagation(self, api: ApiServer) -> None:
        other = ApiServer(self.procs, self.redis.url, server=self.opts.server, name="api-b")
        other.start()
        try:
            self.log(f"config propagation: {self.opts.changes} changes, A -> B")
            result = measure_propagation(self.redis.url, api.port, other.port, self.opts.changes)
            self.run.propagation = asdict(result)
            self.log(f"  visible p50 {result.visible_p50_ms} ms, p99 {result.visible_p99_ms} ms")
        finally:
            other.stop()

    def _bulk_apply(self) -> None:
        self.log(f"bulk apply: throttler apply of {self.opts.bulk} limits --wait")
        result = measure_bulk_apply(self.redis.url, self.opts.bulk, self.procs.workdir)
        self.run.bulk_apply = asdict(result)
        self.log(
            f"  {result.wall_changes_per_s:,.0f} changes/s end to end, "
            f"{result.pipeline_changes_per_s:,.0f}/s from stream to applied"
        )

    # -- where the time goes --------------------------------------------------------------

    def _profile(self) -> None:
        opts = self.opts
        api = ApiServer(self.procs, self.redis.url, server="profiled", name="api-profiled")
        api.start()
        try:
            assert api.managed is not None
            out = self.procs.workdir / "api-profiled-profiles"
            self.load(CHECK_RANDOM.with_keys(opts.keys), api.port, 1.0, opts.connections)
            scenarios = (HEALTH, CHECK_RANDOM.with_keys(opts.keys), BATCH.with_keys(opts.keys))
            for n, scenario in enumerate(scenarios, start=1):
                self.log(f"profile: {scenario.name} under load, {opts.duration:.0f} s")
                api.managed.signal(signal.SIGUSR1)
                time.sleep(0.1)
                result = self.load(scenario, api.port, opts.duration, opts.connections)
                api.managed.signal(signal.SIGUSR2)
                path = out / f"profile-{n}.prof"
                deadline = time.monotonic() + 30
                while not path.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                analysed = analyse(path, scenario.name, result.requests)
                entry = asdict(analysed)
                entry["checks_per_request"] = scenario.checks_per_request
                entry["rps_under_profiler"] = result.rps
                self.run.profile.append(entry)
        finally:
            api.stop()

    # -- uvicorn or granian ---------------------------------------------------------------

    def _servers(self) -> None:
        opts = self.opts
        counts = [opts.server_processes] if opts.quick else sorted({1, 2})
        variants = []
        for n in counts:
            variants += [("uvicorn", n), ("granian", n)]
            if n > 1:
                variants.append(("uvicorn-nodelay", n))
        for server, n in variants:
            self.log(f"server comparison: {server} x{n}")
            api = ApiServer(self.procs, self.redis.url, server=server, processes=n, name=server)
            api.start()
            try:
                scenario = CHECK_RANDOM.with_keys(opts.keys)
                self.load(scenario, api.port, 1.0, opts.connections)
                health = self.load(HEALTH, api.port, opts.duration, opts.connections)
                check = self.load(scenario, api.port, opts.duration, opts.connections)
            finally:
                api.stop()
            self.run.servers.append(
                {
                    "server": server,
                    "processes": n,
                    "health": health.summary(),
                    "check": check.summary(),
                }
            )
            self.log(
                f"  health {health.rps:,.0f} req/s; check {check.checks_per_s:,.0f}/s, "
                f"p99 {check.p99_ms:.1f} ms"
            )

    # -- direct measurements on the scratch Redis -----------------------------------------

    def _memory(self) -> None:
        self.log(f"memory: {self.opts.memory_keys:,} keys per algorithm")
        self.run.memory = [
            asdict(m) for m in measure_memory(self.scratch.url, self.opts.memory_keys)
        ]

    def _redis_benchmark(self) -> None:
        self.log(f"redis-benchmark: EVALSHA of the check script, {self.opts.rb_requests:,} calls")
        rows = redis_benchmark(self.scratch.port, self.opts.rb_requests)
        self.run.redis_benchmark = [asdict(r) for r in rows]

    def _inprocess(self) -> None:
        self.log("in-process: limits library against Limiter.check")
        self.run.decisions_agree = decisions_agree(self.scratch.url)
        rows = measure_inprocess(self.scratch.url, self.opts.inproc_seconds)
        self.run.inprocess = [asdict(r) for r in rows]

    # -- the whole run --------------------------------------------------------------------

    def execute(self) -> Run:
        self.run.machine = report.machine(self.opts.tool)
        self.redis.start()
        self.scratch.start()
        self.run.machine["redis_version"] = report.redis_version(self.redis.url)
        self.section("service", self._main_phases)
        if self.opts.profile:
            self.section("profile", self._profile)
        if self.opts.compare:
            self.section("servers", self._servers)
        self.section("memory", self._memory)
        self.section("redis_benchmark", self._redis_benchmark)
        self.section("inprocess", self._inprocess)
        self.run.machine["load_average_end"] = report.load_average()
        return self.run


def _options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Throttler on loopback: starts its own Redis and API processes, "
        "drives load from a separate process, prints a table, writes a JSON file and "
        "docs/performance.md.",
    )
    parser.add_argument("--quick", action="store_true", help="about a minute: shorter phases")
    parser.add_argument(
        "--server-processes", type=int, default=1, metavar="N",
        help="API server processes (throttler serve --workers N; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--server", choices=("uvicorn", "granian", "uvicorn-nodelay"), default="uvicorn",
        help="what serves the main phases: uvicorn = `throttler serve` (default)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, metavar="S", help="seconds per load phase")
    parser.add_argument("--connections", type=int, default=32, metavar="C")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto",
        help="load tool: wrk when installed (auto), else bench/loadgen.py",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--write-docs", action="store_true", help="rewrite docs (also --quick)")
    docs.add_argument("--no-docs", action="store_true", help="leave docs/performance.md alone")
    parser.add_argument("--no-compare", action="store_true", help="skip uvicorn vs granian")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    tool = args.loadgen
    if tool == "auto":
        tool = "wrk" if wrk_path() else "python"
    elif tool == "wrk" and not wrk_path():
        parser.error("wrk is not installed")
    duration = args.duration or (2.0 if quick else 5.0)
    write_docs = args.write_docs or (not quick and not args.no_docs)
    return Options(
        quick=quick,
        server_processes=max(1, args.server_processes),
        server=args.server,
        duration=min(max(duration, 1.0), 120.0),
        connections=max(1, min(args.connections, 1024)),
        tool=tool,
        out=args.out,
        docs=ROOT / "docs" / "performance.md" if write_docs else None,
        keys=100_000,
        memory_keys=20_000 if quick else 100_000,
        changes=50 if quick else 200,
        bulk=10_000,
        rb_requests=20_000 if quick else 100_000,
        inproc_seconds=1.0 if quick else 2.0,
        compare=not args.no_compare,
        profile=not args.no_profile,
    )


def main(argv: list[str] | None = None) -> int:
    opts = _options(argv)
    os.chdir(ROOT)
    bench = Bench(opts)
    started = time.monotonic()
    print(f"bench: work directory {bench.procs.workdir}; load tool {opts.tool}", flush=True)
    try:
        with interrupts_as_exceptions():
            result = bench.execute()
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            bench.procs.cleanup()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    result.seconds["total"] = round(time.monotonic() - started, 1)
    data = report.evaluate(result)
    print(report.table(data))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    print(f"bench: results in {opts.out}")
    if opts.docs is not None:
        opts.docs.write_text(report.markdown(data))
        print(f"bench: wrote {opts.docs}")
    if result.errors:
        print(f"bench: {len(result.errors)} part(s) failed: {', '.join(result.errors)}")
        return 1
    return 0
