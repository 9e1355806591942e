"""The machine description, ratios, targets, the console table and docs/performance.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench.wrk import wrk_version

if TYPE_CHECKING:
    from bench.run import Run

__all__ = ["evaluate", "load_average", "machine", "markdown", "redis_version", "table"]

_ROOT = Path(__file__).resolve().parent.parent
_LIBRARIES = (
    "litestar", "msgspec", "redis", "hiredis", "uvicorn", "h11", "httptools", "uvloop",
    "granian", "limits",
)  # fmt: skip

LABELS = {
    "health": "GET /health (the ceiling)",
    "check_one": "POST /rate-limit/{key}/check, one key",
    "check_random": "POST /rate-limit/{key}/check, random keys",
    "batch": "POST /check, 100 random keys per request",
    "seq_check": "sequential check, 1 connection",
    "seq_health": "sequential /health, 1 connection",
}
SERVER_LABELS = {
    "uvicorn": "uvicorn (throttler serve)",
    "granian": "granian",
    "uvicorn-nodelay": "uvicorn, TCP_NODELAY fixed",
}
Data = dict[str, Any]

# -- the machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return ""
    return done.stdout.strip()


def machine(tool: str) -> Data:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "load_tool": " ".join(wrk_version().split()[:2])
        if tool == "wrk"
        else "bench/loadgen.py (asyncio streams)",
        "load_average_start": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _git_commit(),
    }


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    name = "Valkey" if "valkey_version" in info else "Redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


# -- ratios and targets --------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return round(a / b, 3)


def _load(data: Data, name: str) -> Data:
    entry: Data = data["load"].get(name, {}).get("load", {})
    return entry


def _cost(data: Data, name: str) -> Data:
    entry: Data = data["load"].get(name, {}).get("redis", {})
    return entry


def _rb(data: Data, keys: str, depth: int) -> Data:
    for row in data.get("redis_benchmark", []):
        if row["keys"] == keys and row["pipeline"] == depth:
            return dict(row)
    return {}


def _inproc(data: Data, library: str, algorithm: str, concurrency: int, call: str = "") -> Data:
    for row in data.get("inprocess", []):
        if (
            row["library"] == library
            and row["algorithm"] == algorithm
            and row["concurrency"] == concurrency
            and call in row["call"]
        ):
            return dict(row)
    return {}


def _server(data: Data, server: str, processes: int) -> Data:
    for row in data.get("servers", []):
        if row["server"] == server and row["processes"] == processes:
            return dict(row)
    return {}


def _ratios(data: Data) -> Data:
    health = _load(data, "health").get("rps")
    one, rand = _load(data, "check_one"), _load(data, "check_random")
    batch = _load(data, "batch")
    out: Data = {
        "check_one_vs_health": _ratio(one.get("rps"), health),
        "check_random_vs_health": _ratio(rand.get("rps"), health),
        "batch_vs_single_checks": _ratio(batch.get("checks_per_s"), rand.get("checks_per_s")),
        "seq_check_vs_health_p50": _ratio(
            _load(data, "seq_check").get("p50_ms"), _load(data, "seq_health").get("p50_ms")
        ),
    }
    for keys in ("one", "random"):
        out[f"redis_pipelined_vs_not_{keys}"] = _ratio(
            _rb(data, keys, 64).get("rps"), _rb(data, keys, 1).get("rps")
        )
    out["service_check_vs_redis_unpipelined"] = _ratio(
        rand.get("checks_per_s"), _rb(data, "random", 1).get("rps")
    )
    out["batch_vs_redis_pipelined"] = _ratio(
        batch.get("checks_per_s"), _rb(data, "random", 64).get("rps")
    )
    for ours, theirs in (
        ("fixed_window", "FixedWindowRateLimiter"),
        ("sliding_window", "MovingWindowRateLimiter"),
    ):
        seq = _inproc(data, "throttler", ours, 1).get("checks_per_s")
        conc = next(
            (
                r["checks_per_s"]
                for r in data.get("inprocess", [])
                if r["library"] == "throttler" and r["algorithm"] == ours and r["concurrency"] > 1
            ),
            None,
        )
        sync = _inproc(data, "limits", theirs, 1, "sync").get("checks_per_s")
        aconc = next(
            (
                r["checks_per_s"]
                for r in data.get("inprocess", [])
                if r["library"] == "limits" and r["algorithm"] == theirs and r["concurrency"] > 1
            ),
            None,
        )
        out[f"ours_seq_vs_limits_sync_{ours}"] = _ratio(seq, sync)
        out[f"ours_concurrent_vs_limits_async_{ours}"] = _ratio(conc, aconc)
        out[f"ours_concurrent_vs_seq_{ours}"] = _ratio(conc, seq)
    for n in (1, 2):
        g, u = _server(data, "granian", n), _server(data, "uvicorn", n)
        if g and u:
            out[f"granian_vs_uvicorn_check_x{n}"] = _ratio(
                g["check"]["checks_per_s"], u["check"]["checks_per_s"]
            )
            out[f"granian_vs_uvicorn_health_x{n}"] = _ratio(g["health"]["rps"], u["health"]["rps"])
    return out


def _target(name: str, goal: str, measured: str, met: bool | None, note: str = "") -> Data:
    return {"target": name, "goal": goal, "measured": measured, "met": met, "note": note}


def _targets(data: Data) -> list[Data]:
    r = data["ratios"]
    out: list[Data] = []
    for key, label in (("check_random", "random keys"), ("check_one", "one key")):
        value = r.get(f"{key}_vs_health")
        if value is not None:
            short = 1 - value / 0.85
            out.append(
                _target(
                    f"single check vs /health ({label})",
                    "≥ 0.85×",
                    f"{value:.2f}×",
                    value >= 0.85,
                    "" if value >= 0.85 else f"{short:.0%} short of 0.85×",
                )
            )
    batch = _load(data, "batch").get("checks_per_s")
    if batch is not None:
        out.append(
            _target(
                "batch route", "≥ 50,000 checks/s", f"{batch:,.0f} checks/s", batch >= 50_000,
                "" if batch >= 50_000 else f"{50_000 / max(batch, 1):.1f}× too slow",
            )
        )  # fmt: skip
    seq = _load(data, "seq_check")
    if seq:
        for q, goal in (("p50", 0.5), ("p99", 1.5)):
            value = seq[f"{q}_ms"]
            out.append(
                _target(
                    f"sequential latency {q}", f"≤ {goal} ms", f"{value:.2f} ms", value <= goal,
                    "" if value <= goal else f"{value / goal:.1f}× the goal",
                )
            )  # fmt: skip
    seq_cost, rand_cost = _cost(data, "seq_check"), _cost(data, "check_random")
    if seq_cost and rand_cost:
        one_each = abs(seq_cost["evalsha_per_check"] - 1) < 0.05
        ok = one_each and seq_cost["reads_per_check"] <= 1.05 and rand_cost["reads_per_check"] < 1
        out.append(
            _target(
                "Redis round trips per check",
                "1 (< 1 pipelined)",
                f"{seq_cost['reads_per_check']:.2f} sequential, "
                f"{rand_cost['reads_per_check']:.2f} under load; "
                f"{seq_cost['evalsha_per_check']:.2f} script call each",
                ok,
            )
        )
    for row in data.get("memory", []):
        if row["algorithm"] in ("token_bucket", "gcra") and row["shape"] == "with_limit":
            value = row["bytes_per_key"]
            state = next(
                (
                    m["bytes_per_key"]
                    for m in data["memory"]
                    if m["algorithm"] == row["algorithm"] and m["shape"] == "state_only"
                ),
                None,
            )
            note = f"{value / 128:.1f}× the goal" if value > 128 else ""
            if state is not None:
                note += f"{'; ' if note else ''}state alone (default limit) {state:.0f} B"
            out.append(
                _target(
                    f"Redis memory per {row['algorithm']} key",
                    "≤ 128 B",
                    f"{value:.0f} B (limit + state)",
                    value <= 128,
                    note,
                )
            )
    prop = data.get("propagation") or {}
    if prop:
        value = prop["visible_p99_ms"]
        out.append(
            _target(
                "config propagation p99", "≤ 10 ms", f"{value:.1f} ms",
                value <= 10 and not prop["timeouts"],
                "" if value <= 10 else f"{value / 10:.1f}× the goal",
            )
        )  # fmt: skip
    bulk = data.get("bulk_apply") or {}
    if bulk:
        value = bulk["pipeline_changes_per_s"]
        wall = bulk["wall_changes_per_s"]
        ok = value >= 20_000 and bulk["exit_code"] == 0
        out.append(
            _target(
                "bulk apply",
                "≥ 20,000 changes/s",
                f"{value:,.0f}/s stream to applied; {wall:,.0f}/s for the whole command",
                ok,
                "" if value >= 20_000 else f"{20_000 / max(value, 1):.1f}× too slow",
            )
        )
    return out


def evaluate(run: Run) -> Data:
    data = asdict(run)
    data["ratios"] = _ratios(data)
    data["targets"] = _targets(data)
    return data


# -- formatting ----------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _statuses(load: Data) -> str:
    parts = [f"{s}: {n:,}" for s, n in sorted(load.get("statuses", {}).items())]
    if load.get("errors"):
        parts.append(f"errors: {load['errors']:,}")
    return ", ".join(parts)


_NUMERIC = re.compile(r"^[–\d.,×%() µsmB]*$")


def _grid(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        right = [i > 0 and all(_NUMERIC.match(row[i]) for row in rows) for i in range(len(headers))]
        lines = ["| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    return "\n".join(out)


def _load_rows(data: Data) -> list[list[str]]:
    health = _load(data, "health").get("rps")
    rows = []
    for name, label in LABELS.items():
        load = _load(data, name)
        if not load:
            continue
        checks = load.get("checks_per_s") if load.get("checks_per_request") else None
        vs = (
            _ratio(load["rps"], health) if name in ("health", "check_one", "check_random") else None
        )
        rows.append(
            [
                label,
                str(load["connections"]),
                _n(load["rps"]),
                _n(checks),
                _n(load["p50_ms"], 2),
                _n(load["p99_ms"], 2),
                _x(vs),
                _statuses(load),
            ]
        )
    return rows


_LOAD_HEAD = ["load phase", "conns", "req/s", "checks/s", "p50 ms", "p99 ms", "× health", "answers"]


def _cost_rows(data: Data) -> list[list[str]]:
    rows = []
    for name in ("check_one", "check_random", "batch", "seq_check"):
        cost = _cost(data, name)
        if not cost:
            continue
        rows.append(
            [
                LABELS[name],
                _n(cost["checks"]),
                _n(cost["evalsha_per_check"], 2),
                _n(cost["reads_per_check"], 3),
                _n(cost["commands_per_check"], 1),
                _n(cost["script_us_per_check"], 1),
                _n(cost["redis_cpu_us_per_check"], 1),
            ]
        )
    return rows


_COST_HEAD = [
    "phase", "checks", "EVALSHA/check", "reads/check (≥ round trips)", "commands/check",
    "script µs/check", "Redis CPU µs/check",
]  # fmt: skip


def _memory_rows(data: Data) -> list[list[str]]:
    rows = []
    for row in data.get("memory", []):
        shape = (
            "own limit (cfg + state)" if row["shape"] == "with_limit" else "default limit (state)"
        )
        rows.append(
            [
                f"{row['algorithm']}, {shape}",
                _n(row["keys"]),
                _n(row["bytes_per_key"]),
                _n(row["cfg_bytes"]) if row["cfg_bytes"] else "–",
                _n(row["state_bytes"]),
            ]
        )
    return rows


_MEMORY_HEAD = ["algorithm, key shape", "keys", "bytes/key", "MEMORY USAGE cfg", "… state"]


def _rb_rows(data: Data) -> list[list[str]]:
    return [
        [
            f"EVALSHA check, {'one key' if r['keys'] == 'one' else '100k random keys'}, "
            f"pipeline {r['pipeline']}",
            str(r["clients"]),
            _n(r["rps"]),
            _n(r["p50_ms"], 3),
            _n(r["p99_ms"], 3),
            _n(r["script_us_per_call"], 1),
        ]
        for r in data.get("redis_benchmark", [])
    ]


_RB_HEAD = ["redis-benchmark", "clients", "calls/s", "p50 ms", "p99 ms", "script µs/call"]


def _inproc_rows(data: Data) -> list[list[str]]:
    return [
        [
            f"{r['library']} {r['algorithm']}: {r['call']}",
            str(r["concurrency"]),
            _n(r["checks_per_s"]),
            _n(1e6 / r["checks_per_s"], 0) if r["checks_per_s"] else "–",
            _n(r["checks_per_round_trip"], 1),
        ]
        for r in data.get("inprocess", [])
    ]


_INPROC_HEAD = [
    "in-process (one Python process)",
    "tasks",
    "checks/s",
    "µs/check",
    "checks/round trip",
]


def _server_rows(data: Data) -> list[list[str]]:
    rows = []
    for r in data.get("servers", []):
        check, health = r["check"], r["health"]
        rows.append(
            [
                f"{SERVER_LABELS.get(r['server'], r['server'])} ×{r['processes']}",
                _n(health["rps"]),
                _n(health["p99_ms"], 1),
                _n(check["checks_per_s"]),
                _n(check["p50_ms"], 1),
                _n(check["p99_ms"], 1),
                _x(_ratio(check["rps"], health["rps"])),
            ]
        )
    return rows


_SERVER_HEAD = [
    "server × processes",
    "health req/s",
    "health p99",
    "checks/s",
    "check p50",
    "check p99",
    "check/health",
]


def _profile_rows(data: Data) -> tuple[list[str], list[list[str]]]:
    profiles = data.get("profile", [])
    if not profiles:
        return [], []
    names = sorted(
        {c for p in profiles for c in p["components"]},
        key=lambda c: (
            -max(p["components"].get(c, 0.0) / max(p["us_per_request"], 1e-9) for p in profiles)
        ),
    )
    head = ["component: µs under cProfile (share)"] + [
        f"{p['scenario']}, per {'item' if p.get('checks_per_request', 0) > 1 else 'request'}"
        for p in profiles
    ]
    per = [max(int(p.get("checks_per_request", 1) or 1), 1) for p in profiles]
    rows = []
    for name in names:
        row = [name]
        for p, n in zip(profiles, per, strict=True):
            total = sum(p["components"].values()) or 1
            us = p["components"].get(name, 0.0)
            row.append(f"{us / n:,.0f} ({100 * us / total:.0f}%)")
        rows.append(row)
    rows.append(
        ["total"] + [f"{p['us_per_request'] / n:,.0f}" for p, n in zip(profiles, per, strict=True)]
    )
    return head, rows


def _target_rows(data: Data) -> list[list[str]]:
    return [
        [
            t["target"],
            t["goal"],
            t["measured"],
            "met" if t["met"] else ("–" if t["met"] is None else "MISSED"),
            t["note"],
        ]
        for t in data.get("targets", [])
    ]


_TARGET_HEAD = ["target", "goal", "measured", "", "shortfall / note"]


def _title(data: Data) -> str:
    o = data["options"]
    server = SERVER_LABELS.get(o["server"], o["server"])
    return (
        f"{server} ×{o['server_processes']}; load: {data['machine'].get('load_tool')}, "
        f"{o['connections']} connections, {float(o['duration']):.0f} s per phase"
        + (" (--quick)" if o["quick"] == "True" else "")
    )


def table(data: Data) -> str:
    m = data["machine"]
    r = data["ratios"]
    parts = [
        "",
        f"Throttler benchmark — {_title(data)}",
        f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('python')}, {m.get('redis_version')}; "
        f"load average at start {m.get('load_average_start')}",
        "",
        _grid(_LOAD_HEAD, _load_rows(data), markdown=False),
        "",
        _grid(_COST_HEAD, _cost_rows(data), markdown=False),
        "",
    ]
    prop, bulk = data.get("propagation") or {}, data.get("bulk_apply") or {}
    if prop:
        parts.append(
            f"config propagation (A -> check on B), {prop['changes']} changes: "
            f"p50 {prop['visible_p50_ms']:.1f} ms, p99 {prop['visible_p99_ms']:.1f} ms, "
            f"max {prop['visible_max_ms']:.1f} ms; POST itself p50 {prop['post_p50_ms']:.1f} ms; "
            f"submitted -> applied p50 {prop['stream_to_applied_p50_ms']:.0f} ms, "
            f"p99 {prop['stream_to_applied_p99_ms']:.0f} ms"
        )
    if bulk:
        parts.append(
            f"bulk apply of {bulk['changes']:,} limits: {bulk['wall_changes_per_s']:,.0f}/s "
            f"for the whole command ({bulk['wall_s']:.2f} s), "
            f"{bulk['pipeline_changes_per_s']:,.0f}/s from stream to applied "
            f"(consumers: {len(bulk['workers'])}); exit {bulk['exit_code']}"
        )
    parts += ["", _grid(_MEMORY_HEAD, _memory_rows(data), markdown=False), ""]
    if data.get("redis_benchmark"):
        parts += [_grid(_RB_HEAD, _rb_rows(data), markdown=False), ""]
    if data.get("inprocess"):
        parts += [_grid(_INPROC_HEAD, _inproc_rows(data), markdown=False)]
        if data.get("decisions_agree"):
            parts.append(f"same decisions: {data['decisions_agree']}")
        parts.append("")
    if data.get("servers"):
        parts += [_grid(_SERVER_HEAD, _server_rows(data), markdown=False), ""]
    head, rows = _profile_rows(data)
    if rows:
        parts += [_grid(head, rows, markdown=False), ""]
    parts.append("ratios: " + ", ".join(f"{k} {_x(v)}" for k, v in r.items() if v is not None))
    parts += ["", _grid(_TARGET_HEAD, _target_rows(data), markdown=False)]
    if data.get("errors"):
        parts += ["", "FAILED parts: " + "; ".join(f"{k}: {v}" for k, v in data["errors"].items())]
    parts.append(f"\n(total {data['seconds'].get('total', 0):.0f} s)")
    return "\n".join(parts)


def markdown(data: Data) -> str:
    from bench.docs import render

    return render(data)
