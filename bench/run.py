"""``make bench``: the service measured against its own ``/health``, Redis alone and the
``limits`` library, all in one run; one table on stdout, one JSON file.

Processes: a ``redis-server`` (persistence off) and one ``throttler serve`` process on free
loopback ports, loaded by ``wrk`` from a separate process (``bench/check.lua``); a second
API process for config propagation; a scratch ``redis-server`` for memory per key; the
in-process micro-benchmarks are ``tests/benchmarks/bench_*.py`` (pytest-benchmark). Every
process started is stopped by its pid. The machine is shared: read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis

from core.config_store import ConfigStore
from core.embedded import free_port
from core.keys import KeySpace
from core.limiter import Limiter
from core.scripts import APPLY, CHECK
from core.settings import load_settings
from core.version import VERSION
from schemas.limits import Limit

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = Path(__file__).with_name("check.lua")
PREFIX = "throttler"
BATCH = 100


class BenchError(RuntimeError):
    """A measurement could not be made; the message says why."""


@contextmanager
def process(
    argv: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the block; SIGTERM (then SIGKILL) by its pid afterwards."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def redis_server(stack: ExitStack) -> int:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    stack.enter_context(process([*argv, "--appendonly", "no"]))
    client = redis.Redis(port=port)
    _until(lambda: _pings(client), "redis-server answering")
    client.close()
    return port


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def serve(stack: ExitStack, redis_port: int, *args: str, rls: str = "off") -> str:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "BIND_ADDRESS": f"127.0.0.1:{port}",
        "KEY_PREFIX": PREFIX,
        "LOG_LEVEL": "warning",
        "WORKER_METRICS_PORT": "0",
        "WORKER_BLOCK_MS": "100",
        "SHUTDOWN_DRAIN_MS": "0",  # nothing to drain: the benchmark stops it when done
        # Saturated on a shared machine, the process can be starved past the default 500 ms:
        # the benchmark measures throughput, not the failure policy.
        "REDIS_TIMEOUT_MS": "2000",
        "RLS_BIND_ADDRESS": rls,  # Envoy's RLS: a free port where measured, else off
    }
    stack.enter_context(process([sys.executable, "-m", "throttler", "serve", *args], env))
    url = f"http://127.0.0.1:{port}"
    _until(lambda: _healthy(url), f"throttler serve at {url}")
    return url


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def _until(condition: Any, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wrk(url: str, mode: str, *, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk phase: requests/s, latency percentiles (ms) and the statuses seen."""
    path = url + ("/health" if mode == "get" else "/")
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(WRK_SCRIPT), path]
    env = {**os.environ, "BENCH_MODE": mode, "BENCH_BATCH": str(BATCH)}
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed: {done.stdout}{done.stderr}")
    raw = json.loads(line[6:])
    bad = {s: n for s, n in raw["statuses"].items() if s != "200"}
    if bad or raw["errors"]:
        raise BenchError(f"{mode}: unexpected answers {bad}, {raw['errors']} socket errors")
    per_request = BATCH if mode == "batch" else 1
    return {
        "rps": round(raw["requests"] / raw["seconds"], 1),
        "checks_per_s": round(raw["requests"] * per_request / raw["seconds"], 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


def service_phases(url: str, seconds: float, rounds: int) -> dict[str, Any]:
    """/health and checks alternately, ``rounds`` times each (medians), then batches and
    one connection at a time."""
    wrk(url, "single", connections=32, seconds=min(seconds, 2))  # warm-up: scripts, pools
    health, single, seq_health, seq_check = [], [], [], []
    for _ in range(rounds):
        health.append(wrk(url, "get", connections=32, seconds=seconds))
        single.append(wrk(url, "single", connections=32, seconds=seconds))
        seq_health.append(wrk(url, "get", connections=1, seconds=seconds))
        seq_check.append(wrk(url, "single", connections=1, seconds=seconds))
    batch = wrk(url, "batch", connections=32, seconds=seconds)

    def median(runs: list[dict[str, Any]], field: str) -> float:
        return round(float(statistics.median(r[field] for r in runs)), 3)

    return {
        "health_rps": median(health, "rps"),
        "check_rps": median(single, "rps"),
        "seq_health_p50_ms": median(seq_health, "p50_ms"),
        "seq_check_p50_ms": median(seq_check, "p50_ms"),
        "seq_check_p99_ms": median(seq_check, "p99_ms"),
        "batch_checks_per_s": batch["checks_per_s"],
        "runs": {"health": health, "check": single, "seq_health": seq_health,
                 "seq_check": seq_check, "batch": batch},
    }  # fmt: skip


def policy_phase(url: str, seconds: float) -> float:
    """Checks on random keys under a two-limit policy (a burst and a daily quota, large
    enough never to deny here): requests/s, to set beside the single-limit rate."""
    limits = [
        {"requests": 1_000_000, "window_ms": 1000},
        {"requests": 1_000_000_000, "window_ms": 86_400_000, "algorithm": "fixed_window"},
    ]
    put = httpx.put(f"{url}/policies/bench", json={"limits": limits, "match": ["bench:*"]})
    if put.status_code not in (200, 201):
        raise BenchError(f"policy: PUT answered {put.status_code} {put.text}")
    return float(wrk(url, "single", connections=32, seconds=seconds)["rps"])


def lease_phase(url: str, seconds: float) -> dict[str, float]:
    """Acquire and release pairs on one key with a concurrency limit far above what the
    connections can hold (every acquire succeeds): pairs/s, beside the check rate."""
    key = "lease:bench"
    limit = {"requests": 100_000, "window_ms": 60_000, "algorithm": "concurrency"}
    put = httpx.post(f"{url}/rate-limit/{key}", json=limit)
    if put.status_code not in (200, 201):
        raise BenchError(f"lease: POST answered {put.status_code} {put.text}")
    run = wrk(url, "lease", connections=32, seconds=seconds)
    return {"pairs_per_s": round(run["rps"] / 2, 1), "p50_ms": run["p50_ms"]}


RLS_DOMAIN = """\
domain: bench
descriptors:
  - {key: k0, rate_limit: {unit: second, requests_per_unit: 1000000}}
  - {key: k1, rate_limit: {unit: second, requests_per_unit: 1000000}}
  - {key: k2, rate_limit: {unit: second, requests_per_unit: 1000000}}
"""


def _grpc_body(descriptors: int) -> bytes:
    """One ShouldRateLimit request as gRPC frames it (uncompressed, 4-byte length)."""
    from api.rls.proto import rls_pb2 as pb

    message = pb.RateLimitRequest(
        domain="bench",
        descriptors=[
            pb.RateLimitDescriptor(entries=[pb.RateLimitDescriptor.Entry(key=f"k{i}", value="v")])
            for i in range(descriptors)
        ],
    ).SerializeToString()
    frame: bytes = b"\x00" + len(message).to_bytes(4, "big") + message
    return frame


def _rls_decisions(url: str) -> float:
    """ShouldRateLimit calls answered OK or OVER_LIMIT so far (the service's /metrics)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("throttler_rls_requests_total{") and (
            'result="ok"' in line or 'result="over_limit"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rls_phase(url: str, rls: str, redis_port: int, seconds: float) -> dict[str, Any]:
    """ShouldRateLimit decisions/s, with one descriptor and with three, under limits never
    reached. The load is h2load (nghttp2): 4 HTTP/2 connections, 16 calls in flight on
    each, as Envoy multiplexes calls; a Python gRPC client could not load the server (it
    topped out below a bare grpc.aio server's rate). h2load cannot read gRPC trailers, so
    the decisions are counted by the service itself (throttler_rls_requests_total)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as config:
        config.write(RLS_DOMAIN)
        config.flush()
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "KEY_PREFIX": PREFIX}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "throttler", "apply", config.name, "--wait"],
            env=env, capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"rls: apply failed: {done.stdout}{done.stderr}")
    _until(lambda: httpx.get(f"{url}/rls/domains/bench").status_code == 200, "RLS domain")
    out: dict[str, Any] = {}
    path = f"http://{rls}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    for count in (1, 1, 3):  # the first run warms up
        with tempfile.NamedTemporaryFile(suffix=".bin") as body:
            body.write(_grpc_body(count))
            body.flush()
            argv = ["h2load", "-D", f"{seconds:g}", "-c", "4", "-m", "16", "-d", body.name,
                    "-H", "content-type: application/grpc", "-H", "te: trailers", path]  # fmt: skip
            before, began = _rls_decisions(url), time.monotonic()
            run = subprocess.run(argv, capture_output=True, text=True, check=False)
            elapsed = time.monotonic() - began
            if run.returncode != 0:
                raise BenchError(f"h2load failed: {run.stdout}{run.stderr}")
        decided = _rls_decisions(url) - before
        out[f"descriptors_{count}"] = {"rps": round(decided / seconds, 1),
                                       "wall_s": round(elapsed, 2)}  # fmt: skip
    return out


def _limiter(default: Limit | None = None) -> Limiter:
    """Builds script arguments only (core's own contract; no gateway needed); ``default``:
    the default limit (the service's built-in one when None)."""
    if default is None:
        settings = load_settings({}, env_file=None)
        requests, window_ms = settings.default_limit_rate
        default = Limit(requests, window_ms, burst=settings.default_capacity)
    return Limiter(None, KeySpace(PREFIX), default)  # type: ignore[arg-type]


def redis_benchmark(port: int, seconds: float) -> float:
    """EVALSHA of the check script on random keys (the default limit), pipelined as the
    batch phase sends it (32 clients, 100 calls deep): Redis's own checks/s."""
    names, args = _limiter().script_args("bench:__rand_int__", 1)
    client = redis.Redis(port=port)
    client.script_load(CHECK.source)
    client.close()
    requests = int(60_000 * seconds)
    argv = ["redis-benchmark", "-p", str(port), "-c", "32", "-P", str(BATCH), "-r", "100000"]
    argv += ["-n", str(requests), "--csv", "EVALSHA", CHECK.sha, str(len(names)), *names]
    argv += [str(a) for a in args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    rows = [r for r in done.stdout.splitlines() if r.startswith('"EVALSHA')]
    if done.returncode != 0 or not rows:
        raise BenchError(f"redis-benchmark failed: {done.stdout}{done.stderr}")
    rate: str = rows[-1].split(",")[1].strip('"')
    return float(rate)


def memory_per_key(port: int, keys: int) -> dict[str, float]:
    """Redis ``used_memory`` growth per active key: on the default limit (state only), and
    with a limit of its own (set through the apply script, then checked once)."""
    client = redis.Redis(port=port)
    # 100 per 31 days: nothing expires while measured (the built-in default's state would
    # expire about a second after its spend, and the count with it).
    own = Limit(requests=100, window_ms=2_678_400_000)
    limiter, store = _limiter(own), ConfigStore(None, KeySpace(PREFIX), 1000)  # type: ignore[arg-type]
    out = {}
    for shape in ("default_limit", "own_limit"):
        client.flushall(asynchronous=False)
        client.script_load(CHECK.source)
        client.script_load(APPLY.source)
        client.memory_purge()
        before = int(client.info("memory")["used_memory"])
        for start in range(0, keys, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + 1000, keys)):
                key = f"user:{i}"
                if shape == "own_limit":
                    names, args = store.script_args(key, own, f"1-{i}")
                    pipe.evalsha(APPLY.sha, len(names), *names, *args)
                names, args = limiter.script_args(key, 1)
                pipe.evalsha(CHECK.sha, len(names), *names, *args)
            pipe.execute()
        out[shape] = round((int(client.info("memory")["used_memory"]) - before) / keys, 1)
    client.close()
    return out


def propagation(a: str, b: str, changes: int) -> dict[str, float]:
    """A new limit POSTed to process A, seen by a check on process B: ms, p50 and p99."""
    took = []
    with httpx.Client(timeout=10) as http:
        for i in range(changes):
            requests = 1000 + i
            began = time.perf_counter()
            posted = http.post(
                f"{a}/rate-limit/prop", json={"requests": requests, "window_ms": 60_000}
            )
            if posted.status_code not in (200, 201):
                raise BenchError(f"propagation: POST answered {posted.status_code}")
            while True:
                seen = http.post(f"{b}/rate-limit/prop/check", json={"tokens": 0}).json()
                if seen.get("limit") == requests:
                    break
                if time.perf_counter() - began > 5:
                    raise BenchError("propagation: change not seen on B within 5 s")
            took.append((time.perf_counter() - began) * 1000)
    took.sort()
    return {
        "p50_ms": round(took[len(took) // 2], 2),
        "p99_ms": round(took[int(len(took) * 0.99)], 2),
    }


def in_process(out_dir: Path) -> dict[str, float]:
    """tests/benchmarks (pytest-benchmark): checks/s of each benchmark, by its name."""
    report = out_dir / "pytest-benchmark.json"
    argv = [sys.executable, "-m", "pytest", "-q", "-o", "python_files=bench_*.py"]
    argv += ["-p", "no:cacheprovider", f"--benchmark-json={report}", "tests/benchmarks"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise BenchError(f"tests/benchmarks failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    data = json.loads(report.read_text())
    return {
        b["name"]: round(b["extra_info"]["calls"] / b["stats"]["median"], 1)
        for b in data["benchmarks"]
    }


def targets(r: dict[str, Any]) -> list[tuple[str, str, float, bool]]:
    """(target, goal, measured, met) for every target of the lean check path issue."""
    s, ip, mem = r["service"], r["in_process"], r["memory_bytes_per_key"]
    sequential = s["seq_check_p50_ms"] / s["seq_health_p50_ms"]
    batch = s["batch_checks_per_s"] / r["redis_benchmark_checks_per_s"]
    rows = [
        ("checks/s on random keys / /health req/s", ">= 1.0", s["check_rps"] / s["health_rps"]),
        ("sequential check p50 / /health p50", "<= 2.0", sequential),
        ("batch checks/s / redis-benchmark EVALSHA", ">= 0.8", batch),
    ]
    if "rls" in r:
        rls_rps = r["rls"]["descriptors_1"]["rps"]
        rows.append(
            ("RLS decisions/s (1 descriptor) / HTTP checks/s", ">= 0.8", rls_rps / s["check_rps"])
        )
    for ours, theirs in (("fixed_window", "FixedWindow"), ("sliding_window", "MovingWindow")):
        mine, other = (
            ip.get(f"test_throttler_64_tasks[{ours}]"),
            ip.get(f"test_limits_64_tasks[{theirs}]"),
        )
        if mine and other:
            rows.append((f"in-process 64 tasks, {ours} / limits {theirs}", ">= 3.0", mine / other))
    rows += [
        ("bytes per key, default limit", "<= 128", mem["default_limit"]),
        ("bytes per key, limit of its own", "<= 200", mem["own_limit"]),
        ("config propagation p99 (ms)", "<= 10", r["propagation"]["p99_ms"]),
    ]
    out = []
    for name, goal, value in rows:
        op, bound = goal.split()
        met = value >= float(bound) if op == ">=" else value <= float(bound)
        out.append((name, goal, round(value, 3), met))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per load phase (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of /health and checks")
    parser.add_argument("--keys", type=int, default=100_000, help="keys for memory per key")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    for tool in ("wrk", "h2load", "redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"bench: {tool} not found (apt-get install wrk nghttp2-client redis-server)"
            )
    started = time.time()
    results: dict[str, Any] = {
        "version": VERSION,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True, check=False).stdout.strip(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "load_average_start": os.getloadavg()[0],
    }  # fmt: skip
    with ExitStack() as stack:
        port = redis_server(stack)
        rls = f"127.0.0.1:{free_port()}"
        a = serve(stack, port, rls=rls)
        results["redis"] = redis.Redis(port=port).info("server")["redis_version"]
        results["service"] = service_phases(a, args.seconds, args.rounds)
        results["service"]["policy_check_rps"] = policy_phase(a, args.seconds)
        results["service"]["leases"] = lease_phase(a, args.seconds)
        results["rls"] = rls_phase(a, rls, port, args.seconds)
        results["redis_benchmark_checks_per_s"] = redis_benchmark(port, args.seconds)
        b = serve(stack, port, "--no-worker")
        results["propagation"] = propagation(a, b, 200)
    with ExitStack() as stack:
        results["memory_bytes_per_key"] = memory_per_key(redis_server(stack), args.keys)
    with tempfile.TemporaryDirectory() as tmp:
        results["in_process"] = in_process(Path(tmp))
    results["targets"] = [dict(zip(("target", "goal", "measured", "met"), t, strict=True))
                          for t in targets(results)]  # fmt: skip
    results["load_average_end"] = os.getloadavg()[0]
    results["seconds"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'target':<52} {'goal':>8} {'measured':>10}")
    for row in results["targets"]:
        mark = "met" if row["met"] else "MISSED"
        print(f"{row['target']:<52} {row['goal']:>8} {row['measured']:>10}  {mark}")
    s = results["service"]
    redis_rate = results["redis_benchmark_checks_per_s"]
    print(
        f"\n/health {s['health_rps']:,.0f} req/s, checks {s['check_rps']:,.0f}/s, batch "
        f"{s['batch_checks_per_s']:,.0f} checks/s, redis-benchmark {redis_rate:,.0f}/s"
    )
    print(
        f"checks under a two-limit policy {s['policy_check_rps']:,.0f}/s "
        f"({s['policy_check_rps'] / s['check_rps']:.2f}x the single-limit rate)"
    )
    pairs = s["leases"]["pairs_per_s"]
    print(
        f"acquire+release pairs {pairs:,.0f}/s ({2 * pairs / s['check_rps']:.2f}x the check "
        f"rate in requests), p50 {s['leases']['p50_ms']} ms"
    )
    r1, r3 = results["rls"]["descriptors_1"], results["rls"]["descriptors_3"]
    print(
        f"Envoy RLS decisions/s: {r1['rps']:,.0f} with 1 descriptor "
        f"({r1['rps'] / s['check_rps']:.2f}x the HTTP check rate), {r3['rps']:,.0f} with 3"
    )
    print(f"in-process calls/s: {results['in_process']}")
    print(f"written {args.out}")
    return 0
