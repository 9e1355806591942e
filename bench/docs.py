"""docs/performance.md, written from one run's data (``python -m bench`` rewrites it).

Every sentence that depends on a measurement is built from that measurement, so the page
stays true when the code (and the figures) change.
"""

from __future__ import annotations

from typing import Any

from bench.report import (
    _COST_HEAD,
    _INPROC_HEAD,
    _LOAD_HEAD,
    _MEMORY_HEAD,
    _RB_HEAD,
    _SERVER_HEAD,
    _TARGET_HEAD,
    SERVER_LABELS,
    _cost,
    _cost_rows,
    _grid,
    _inproc_rows,
    _load,
    _load_rows,
    _memory_rows,
    _n,
    _profile_rows,
    _ratio,
    _rb,
    _rb_rows,
    _server,
    _server_rows,
    _target_rows,
    _title,
    _x,
)

__all__ = ["render"]

Data = dict[str, Any]


def _md(headers: list[str], rows: list[list[str]]) -> str:
    return _grid(headers, rows, markdown=True)


def _header(data: Data) -> list[str]:
    m = data["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items())
    start, end = m.get("load_average_start", []), m.get("load_average_end", [])
    return [
        "# Performance",
        "",
        "<!-- Written by `make bench` (python -m bench); edit bench/docs.py, not this file. -->",
        "",
        "**Every figure below comes from one run of `make bench` on a shared 2-core machine "
        "while other work was running on it** (load average "
        f"{start[0] if start else '?'} at the start, {end[0] if end else '?'} at the end). "
        "Absolute numbers move a lot from run to run there; read them as ratios between "
        "measurements taken in the same run, on the same machine, minutes apart.",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m.get('cpu')} — {m.get('cores')} cores ({m.get('usable_cores')} usable), "
        f"{m.get('memory_gib')} GiB |",
        f"| System | Linux {m.get('kernel')}, {m.get('python')} |",
        f"| Redis | {m.get('redis_version')} on loopback, persistence off |",
        f"| Libraries | {libs} |",
        f"| Load | {m.get('load_tool')}, from a separate process on 127.0.0.1 |",
        f"| Run | {_title(data)}; {m.get('date')}, commit {m.get('commit') or '?'}; "
        f"{data['seconds'].get('total', 0):.0f} s |",
        "",
    ]


def _targets(data: Data) -> list[str]:
    out = [
        "## Targets (issue #6)",
        "",
        _md(_TARGET_HEAD, _target_rows(data)),
        "",
    ]
    missed = [t for t in data.get("targets", []) if t["met"] is False]
    if missed:
        out += [
            f"{len(missed)} of {len(data['targets'])} targets are missed in this run. "
            "[Where the time goes](#where-the-time-goes) has the profile behind the "
            "throughput and latency figures; each section below says what the other figures "
            "are made of.",
            "",
        ]
    return out


def _service(data: Data) -> list[str]:
    r = data["ratios"]
    o = data["options"]
    health, rand, one = _load(data, "health"), _load(data, "check_random"), _load(data, "check_one")
    batch, seq, seqh = _load(data, "batch"), _load(data, "seq_check"), _load(data, "seq_health")
    out = [
        "## The service under load",
        "",
        f"The API — {SERVER_LABELS.get(o['server'], o['server'])}, "
        f"{o['server_processes']} process{'es' if o['server_processes'] != '1' else ''} — "
        "with its in-process config worker, "
        f"against its own Redis; {o['connections']} keep-alive connections, each sending its "
        "next request when the answer to the last one has arrived. Random keys are drawn from "
        f"{int(o['keys']):,} keys that live on the default limit; the one key has a limit of "
        "its own that always allows.",
        "",
        _md(_LOAD_HEAD, _load_rows(data)),
        "",
    ]
    if health and rand:
        out.append(
            f"* A check costs the server what {_x(r.get('check_random_vs_health'))} of a "
            f"`/health` answer costs on random keys ({_x(r.get('check_one_vs_health'))} on one "
            f"key): {_n(rand['rps'])} against {_n(health['rps'])} requests/s."
        )
    if batch and rand:
        out.append(
            f"* Batches of {batch.get('checks_per_request', 100)} make "
            f"{_x(r.get('batch_vs_single_checks'))} the checks/s of single checks "
            f"({_n(batch['checks_per_s'])} against {_n(rand['checks_per_s'])})."
        )
    if seq and seqh:
        out.append(
            f"* One request at a time: a check takes p50 {seq['p50_ms']:.2f} ms "
            f"(p99 {seq['p99_ms']:.2f} ms), {_x(r.get('seq_check_vs_health_p50'))} the "
            f"p50 of `/health` ({seqh['p50_ms']:.2f} ms)."
        )
    if one and health:
        out.append(
            f"* Under load the p99 of a check is {_n(rand.get('p99_ms'), 1)} ms against "
            f"{_n(health['p99_ms'], 1)} ms for `/health`."
        )
    out.append("")
    return out


def _redis(data: Data) -> list[str]:
    seq, rand = _cost(data, "seq_check"), _cost(data, "check_random")
    out = [
        "## Redis work per check",
        "",
        "From `INFO` before and after each phase (after the requests still in flight when "
        "the load stopped were served): the check script's calls and time from "
        "`commandstats`, read events (`total_reads_processed`: one per round trip while a "
        "pipeline fits one 16 KiB read, so an upper bound of round trips), all commands "
        "(the script call plus the commands the script runs) and Redis' CPU time "
        "(`used_cpu_user` + `used_cpu_sys`). Per-check figures divide by the script calls.",
        "",
        _md(_COST_HEAD, _cost_rows(data)),
        "",
    ]
    if seq and rand:
        out += [
            f"Each check is one script call ({seq['evalsha_per_check']:.2f} per answered "
            f"check one at a time) and one round trip when alone "
            f"({seq['reads_per_check']:.2f} reads per check); under concurrent load the "
            f"auto-pipeline carries about {1 / max(rand['reads_per_check'], 1e-9):.0f} checks "
            f"per round trip ({rand['reads_per_check']:.3f} reads per check). Redis spends "
            f"{rand['script_us_per_check']:.0f} µs in the script and "
            f"{rand['redis_cpu_us_per_check']:.0f} µs of CPU in all per check under load — "
            "a small part of what a check costs the API process (see below). One at a time, "
            "Redis' own background work (its timer) is spread over far fewer checks, hence "
            "the higher CPU per check there.",
            "",
        ]
    return out


def _config(data: Data) -> list[str]:
    prop, bulk = data.get("propagation") or {}, data.get("bulk_apply") or {}
    out = ["## Config changes", ""]
    if prop:
        out += [
            f"**Propagation.** {prop['changes']} times: `POST /rate-limit/{{key}}` with a new "
            "limit to one API process (A) while one connection to a second `throttler serve` "
            "process (B, same Redis) checks the key with `tokens: 0` back to back, until B "
            "answers with the new limit.",
            "",
            "| | p50 | p99 | max |",
            "|---|---:|---:|---:|",
            f"| sent to A → a check on B sees it | {prop['visible_p50_ms']:.1f} ms | "
            f"{prop['visible_p99_ms']:.1f} ms | {prop['visible_max_ms']:.1f} ms |",
            f"| the POST itself (answers once applied) | {prop['post_p50_ms']:.1f} ms | "
            f"{prop['post_p99_ms']:.1f} ms | |",
            f"| submitted → applied (audit entries, 1 ms grain) | "
            f"{prop['stream_to_applied_p50_ms']:.0f} ms | "
            f"{prop['stream_to_applied_p99_ms']:.0f} ms | |",
            "",
            "Checks read the limit from Redis on every call (no cache in the API), so a "
            "change is visible everywhere the moment a worker has applied it: propagation is "
            "the time the POST takes to reach the stream (HTTP and Litestar in A), plus the "
            "worker's read and apply, plus the check on B that sees it — one sequential "
            f"check is {_n(_load(data, 'seq_check').get('p50_ms'), 2)} ms at p50 here, so "
            "that last term is the resolution of this measurement. "
            f"{prop['polls_per_change']} checks were sent per change; "
            f"{prop['timeouts']} changes were not seen within 5 s.",
            "",
        ]
    if bulk:
        workers = len(bulk.get("workers", {}))
        out += [
            f"**Bulk apply.** `throttler apply FILE --wait` with {bulk['changes']:,} limits, "
            f"as a process, applied by the in-process worker{'s' if workers != 1 else ''} of "
            f"the running API ({workers} consumer{'s' if workers != 1 else ''} took part): "
            f"{_n(bulk['wall_changes_per_s'])} changes/s for the whole command "
            f"({bulk['wall_s']:.2f} s, interpreter start and file validation included), "
            f"{_n(bulk['publish_changes_per_s'])}/s publishing, and "
            f"{_n(bulk['pipeline_changes_per_s'])}/s from the first entry on the stream to "
            f"the last outcome on the audit stream ({bulk['pipeline_s']:.2f} s). "
            f"Exit code {bulk['exit_code']}; `{bulk['output']}`.",
            "",
        ]
        if bulk["pipeline_changes_per_s"] < bulk["publish_changes_per_s"]:
            out += [
                "Publishing outruns applying, so the workers set the pace: each batch of "
                "`WORKER_BATCH` entries costs a read, an apply round trip, a notification "
                "publish and a finish round trip, plus the per-entry decoding, spans and "
                "audit records in Python; more worker processes "
                "(`throttler worker`) apply in parallel.",
                "",
            ]
    return out


def _memory(data: Data) -> list[str]:
    rows = data.get("memory", [])
    if not rows:
        return []
    keys = rows[0]["keys"]
    return [
        "## Redis memory per active key",
        "",
        f"`used_memory` before and after {keys:,} keys per algorithm on an empty scratch "
        "server, each key made by one call of the check script (pipelined), with the "
        "algorithm's inline limit (the key gets its limit hash `…:cfg` and its state "
        "`…:st`) or, for the bucket and GCRA, as the default limit (state only). "
        "`MEMORY USAGE` of one sample key of each kind is shown beside it.",
        "",
        _md(_MEMORY_HEAD, _memory_rows(data)),
        "",
        *_memory_notes(rows),
    ]


def _memory_notes(rows: list[Data]) -> list[str]:
    """Where the bytes of a bucket or GCRA key go, from the sample sizes."""
    out: list[str] = []
    for row in rows:
        if row["shape"] != "with_limit" or row["algorithm"] not in ("token_bucket", "gcra"):
            continue
        sampled = row["cfg_bytes"] + row["state_bytes"]
        rest = row["bytes_per_key"] - sampled
        out.append(
            f"* {row['algorithm']}: {row['bytes_per_key']:.0f} B per key = the limit hash "
            f"({row['cfg_bytes']} B by `MEMORY USAGE`: key name, object, a listpack of its "
            f"fields) + the state ({row['state_bytes']} B: key name, object, value) + "
            f"{rest:.0f} B of bookkeeping outside `MEMORY USAGE` (the keyspace table's "
            "entries and slots for two keys, the expiry table's entry for the state's TTL)."
        )
    if out:
        out += [
            "",
            "Every active key is two Redis keys once it has a limit of its own, each paying "
            "its name (the prefix and hash tag included), an object header and a keyspace "
            "entry; a key on the default limit pays only for its state. To approach 128 B, "
            "the limit and the state would have to share one key (one name, one header, "
            "one expiry) with compact field values, or keys living on a shared limit would "
            "have to carry no limit hash at all.",
            "",
        ]
    return out


def _references(data: Data) -> list[str]:
    r = data["ratios"]
    out = ["## Reference points", ""]
    if data.get("redis_benchmark"):
        rand1, rand64 = _rb(data, "random", 1), _rb(data, "random", 64)
        out += [
            "**Redis alone.** `redis-benchmark` sends `EVALSHA` of the very check script "
            "(`core.scripts.CHECK.sha`, loaded first) with the arguments a check sends: "
            '`EVALSHA <sha> 2 <cfg> <st> 1 d "" <alg> <requests> <window_ms> <burst>`.',
            "",
            _md(_RB_HEAD, _rb_rows(data)),
            "",
        ]
        if rand1 and rand64:
            out += [
                f"Pipelining 64 deep gives {_x(r.get('redis_pipelined_vs_not_random'))} the "
                f"unpipelined rate on random keys ({_x(r.get('redis_pipelined_vs_not_one'))} "
                f"on one key). The service's single checks reach "
                f"{_x(r.get('service_check_vs_redis_unpipelined'))} of what Redis does "
                f"unpipelined, its batches {_x(r.get('batch_vs_redis_pipelined'))} of what "
                "it does pipelined: the limit is the API process, not Redis.",
                "",
            ]
    if data.get("inprocess"):
        agree = data.get("decisions_agree") or {}
        out += [
            "**In-process.** The same decisions made from one Python process against the "
            "scratch Redis, for a fixed duration: our `Limiter.check()` (as the API builds "
            "it: breaker and metrics included) awaited one at a time and from 64 tasks, "
            "against the `limits` library's redis-py storage with the equivalent strategy "
            "(fixed window; moving window = our exact sliding log), 100 per minute over "
            "10,000 keys. The raw line is the floor for any Python asyncio client: the "
            "script's `EVALSHA` written as bytes on an asyncio stream and parsed by hiredis.",
            "",
            _md(_INPROC_HEAD, _inproc_rows(data)),
            "",
        ]
        if agree:
            same = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in agree.items())
            out += [
                "Same decisions (8 checks against 5 per minute on a fresh key, both admit "
                f"exactly the first 5): {same}.",
                "",
            ]
        fixed_seq = r.get("ours_seq_vs_limits_sync_fixed_window")
        fixed_conc = r.get("ours_concurrent_vs_limits_async_fixed_window")
        if fixed_seq is not None:
            out += [
                f"One at a time, our limiter makes {_x(fixed_seq)} the checks/s of `limits`' "
                f"synchronous client (fixed window; "
                f"{_x(r.get('ours_seq_vs_limits_sync_sliding_window'))} sliding): an asyncio "
                "round trip through redis-py plus the auto-pipeline's extra loop turn cost "
                "more than a blocking call. With 64 concurrent callers the auto-pipeline "
                f"gives {_x(r.get('ours_concurrent_vs_seq_fixed_window'))} our sequential "
                f"rate and {_x(fixed_conc)} `limits`' asyncio client at the same concurrency.",
                "",
            ]
    return out


def _servers(data: Data) -> list[str]:
    rows = data.get("servers", [])
    if not rows:
        return []
    out = [
        "## uvicorn or granian",
        "",
        "The same app (`throttler.cli:app_factory`, in-process worker included) served by "
        "`throttler serve` (uvicorn with httptools and uvloop; with `--workers N` its "
        "listening socket is re-wrapped so TCP_NODELAY works, see `throttler/cli.py`) and "
        "by `granian --interface asgi --factory`, one after the other against the same "
        "Redis, with the same load: `/health`, then checks on random keys. `throttler "
        "serve` keeps uvicorn: it serves more checks/s here, though granian answers "
        "`/health` faster.",
        "",
        _md(_SERVER_HEAD, _server_rows(data)),
        "",
    ]
    for n in (1, 2):
        g, u = _server(data, "granian", n), _server(data, "uvicorn", n)
        if not (g and u):
            continue
        gc, uc = g["check"]["checks_per_s"], u["check"]["checks_per_s"]
        winner, ratio = ("granian", gc / uc) if gc >= uc else ("uvicorn", uc / gc)
        out.append(
            f"* ×{n}: {winner} serves {ratio:.2f}× the checks/s of the other "
            f"(check p99 granian {g['check']['p99_ms']:.1f} ms, uvicorn "
            f"{u['check']['p99_ms']:.1f} ms; `/health` "
            f"{_x(g['health']['rps'] / max(u['health']['rps'], 1))} for granian)."
        )
    u2, f2 = _server(data, "uvicorn", 2), _server(data, "uvicorn-nodelay", 2)
    g1, g2, u1 = (
        _server(data, "granian", 1),
        _server(data, "granian", 2),
        _server(data, "uvicorn", 1),
    )
    if g2 and f2:
        gc, fc = g2["check"]["checks_per_s"], f2["check"]["checks_per_s"]
        out.append(
            f"* ×2 against uvicorn with TCP_NODELAY fixed: granian "
            f"{_x(gc / max(fc, 1))} the checks/s (check p99 {g2['check']['p99_ms']:.1f} "
            f"against {f2['check']['p99_ms']:.1f} ms)."
        )
    if g1 and g2 and u1 and f2:
        out.append(
            "* Two processes against one: granian "
            f"{_x(g2['check']['checks_per_s'] / max(g1['check']['checks_per_s'], 1))}, "
            "uvicorn (fixed) "
            f"{_x(f2['check']['checks_per_s'] / max(u1['check']['checks_per_s'], 1))} the "
            "checks/s — on two cores shared with Redis and the load generator, a second "
            "server process has little CPU left to use."
        )
    if g1 and u1:
        out.append(
            "* The check/health ratio falls as the HTTP layer gets faster (granian "
            f"{_x(_ratio(g1['check']['rps'], g1['health']['rps']))} against uvicorn "
            f"{_x(_ratio(u1['check']['rps'], u1['health']['rps']))} at ×1): a faster server "
            "raises both, `/health` more, so the 0.85× target is about the check path itself."
        )
    if u2 and f2 and u2["health"]["rps"] < 0.5 * f2["health"]["rps"]:
        out += [
            "",
            f"uvicorn with two processes answers `/health` "
            f"{_x(f2['health']['rps'] / max(u2['health']['rps'], 1))} slower than the same "
            "supervisor with TCP_NODELAY set: uvicorn's supervisor binds the listening "
            "socket with `proto` 0, accepted sockets inherit it, and asyncio only sets "
            "TCP_NODELAY when `proto` is `IPPROTO_TCP`, so each keep-alive answer (headers "
            "and body are two writes) waits for the client's delayed ACK, ~40 ms "
            "(uvicorn issue #3149, open). `throttler serve --workers 2` is hit by it "
            "today; `bench/uvfixed.py` shows the fix (re-wrap the socket as IPPROTO_TCP).",
        ]
    out.append("")
    return out


_ADVICE = {
    "handoffs to a thread pool": (
        0.5,
        "Each request hands work to a thread pool and back: Litestar runs a synchronous "
        "guard (`check_guard`, `admin_guard` in `api/auth.py`) with `sync_to_thread`, and "
        "the handoff (a future, a queue, a self-pipe write to wake the loop) costs more than "
        "the guard. Declaring the guards `async def` keeps them on the loop.",
    ),
    "copy.copy() calls": (
        0.5,
        "Litestar copies the route handler object for each guard call (`authorize_connection`"
        " calls `guard(connection, copy(self))`): one `copy.copy()` per guarded request.",
    ),
}


def _by_scenario(data: Data) -> dict[str, Data]:
    return {p["scenario"]: p for p in data.get("profile", [])}


def _share(profile: Data, component: str) -> float:
    us = float(profile["components"].get(component, 0.0))
    return 100 * us / max(float(profile["us_per_request"]), 1.0)


def _advice(data: Data, h: Data, c: Data) -> list[str]:
    """What stands out in the check's profile, each only when the profile shows it."""
    calls, hcalls = c.get("calls_per_request", {}), h.get("calls_per_request", {})
    advice = [text for name, (floor, text) in _ADVICE.items() if calls.get(name, 0) >= floor]
    h11 = "h11 (HTTP/1.1 parser)"
    if _share(c, h11) > 10:
        advice.append(
            "uvicorn parses HTTP with h11, in pure Python, because `httptools` is not "
            f"installed: {_share(c, h11):.0f}% of a check and {_share(h, h11):.0f}% of a "
            "`/health` answer. granian parses in Rust, off the event loop's thread."
        )
    if hcalls.get("socket send() calls", 0) >= 1.9:
        advice.append(
            f"Every answer takes {hcalls['socket send() calls']:.0f} `send()` calls (uvicorn "
            "writes headers and body separately); socket calls are "
            f"{_share(c, 'socket syscalls'):.0f}% of a check. Two writes per answer is also "
            "what turns a missing TCP_NODELAY into a 40 ms wait."
        )
    headers = data.get("response_headers") or {}
    regex = "regex fullmatch() calls"
    if headers and calls.get(regex, 0) > 1.5 * max(hcalls.get(regex, 0), 1):
        advice.append(
            f"A check's answer carries {headers.get('check', 0)} headers against "
            f"{headers.get('health', 0)} for `/health`; h11 validates every header name and "
            f"value with a regular expression ({calls[regex]:.0f} `fullmatch()` calls per "
            f"check, {hcalls.get(regex, 0):.0f} per `/health`), and each header is one more "
            "str → bytes conversion in Litestar and uvicorn."
        )
    raw = next((x for x in data.get("inprocess", []) if x["library"].startswith("raw")), None)
    ours = next(
        (
            x
            for x in data.get("inprocess", [])
            if x["library"] == "throttler" and x["concurrency"] == 1
        ),
        None,
    )
    if raw and ours and raw["concurrency"] == 1:
        advice.append(
            f"redis-py is {_share(c, 'redis-py'):.0f}% of a check under the profiler. "
            "In-process, one check through `Limiter.check()` takes "
            f"{1e6 / ours['checks_per_s']:.0f} µs, the same `EVALSHA` written as bytes on an "
            f"asyncio stream and parsed by hiredis {1e6 / raw['checks_per_s']:.0f} µs, and "
            "Redis runs the script in about "
            f"{_rb(data, 'random', 1).get('script_us_per_call', 0):.0f} µs: the client "
            "library and the auto-pipeline's extra loop turn, not Redis, are most of a "
            "check's Redis cost."
        )
    return advice


def _batch_advice(b: Data) -> list[str]:
    n = max(int(b.get("checks_per_request", 1) or 1), 1)
    per_item = b["us_per_request"] / n
    biggest = list(b["components"].items())[:4]
    parts = ", ".join(f"{name} {us / n:,.0f} µs" for name, us in biggest)
    return [
        f"A batch item costs {per_item:,.0f} µs under the profiler ({parts}): the items go "
        "to Redis as one pipeline (`Limiter.check_many`), so what is left per item is "
        "packing its `EVALSHA` and parsing its reply in redis-py, and turning it into a "
        f"result; the HTTP cost is shared by {n} items.",
    ]


def _profile(data: Data) -> list[str]:
    found = _by_scenario(data)
    h, c, b = found.get("health"), found.get("check_random"), found.get("batch")
    if h is None or c is None:
        return []
    head, rows = _profile_rows(data)
    out = [
        "## Where the time goes",
        "",
        "One API process (uvicorn, as `throttler serve --workers 1` runs it: "
        "`bench/profserve.py`) profiled with cProfile while under the same load: `/health`, "
        "checks on random keys, batches. Time in C functions is counted in the component "
        "that called them; waiting in epoll is left out. cProfile slows Python code more "
        "than C code, so the shares are the finding and the microseconds are inflated "
        f"(the profiled process served {h['rps_under_profiler']:,.0f} `/health` req/s and "
        f"{c['rps_under_profiler']:,.0f} checks/s).",
        "",
        _md(head, rows),
        "",
    ]
    extra = c["us_per_request"] - h["us_per_request"]
    grown = sorted(
        (
            (name, c["components"].get(name, 0.0) - h["components"].get(name, 0.0))
            for name in c["components"]
        ),
        key=lambda kv: -kv[1],
    )[:5]
    parts = ", ".join(f"{name} +{us:,.0f} µs" for name, us in grown if us > 0)
    out += [
        f"A check costs {c['us_per_request'] / max(h['us_per_request'], 1):.1f}× a `/health` "
        f"answer under the profiler (+{extra:,.0f} µs); the growth is in: {parts}.",
        "",
    ]
    calls, hcalls = c.get("calls_per_request", {}), h.get("calls_per_request", {})
    if calls:
        out += [
            "| per request | /health | check |",
            "|---|---:|---:|",
            *(f"| {k} | {hcalls.get(k, 0):.2f} | {v:.2f} |" for k, v in calls.items()),
            "",
        ]
    advice = _advice(data, h, c) + (_batch_advice(b) if b else [])
    if advice:
        out += ["What stands out:", "", *(f"* {a}" for a in advice), ""]
    out += [
        "Top functions by own time during the checks (share of the process's busy time):",
        "",
        "| function | own | incl. callees |",
        "|---|---:|---:|",
        *(f"| `{name}` | {own:.1f}% | {cum:.1f}% |" for name, own, cum in c["top"]),
        "",
    ]
    return out


def _method() -> list[str]:
    return [
        "## How it is measured",
        "",
        "`make bench` (or `.venv/bin/python -m bench`; `--quick` for about a minute, "
        "`--server-processes N`, `--duration S`, `--out FILE`, `--loadgen wrk|python`, "
        "`--server uvicorn|granian|uvicorn-nodelay`, `--no-docs`) starts a `redis-server` on "
        "a free loopback port with persistence off, a second one as scratch space, and the "
        "API as real processes (`python -m throttler serve --workers N`, `REDIS_URL` set, "
        "`LOG_LEVEL=warning`). Load comes from a separate process: wrk (with a generated Lua "
        "script for bodies and random keys) when installed, else `bench/loadgen.py` "
        "(asyncio streams, HTTP/1.1 keep-alive); both are closed-loop, so latency is "
        "measured at the concurrency given, not at a fixed arrival rate. Every process is "
        "stopped by its pid (children included) at the end, on error and on Ctrl-C. "
        "Results go to `bench/results/latest.json` (git-ignored) and to this page.",
        "",
    ]


def render(data: Data) -> str:
    lines = _header(data)
    lines += _targets(data)
    lines += _service(data)
    lines += _redis(data)
    lines += _config(data)
    lines += _memory(data)
    lines += _references(data)
    lines += _servers(data)
    lines += _profile(data)
    lines += _method()
    if data.get("errors"):
        lines += [
            "## Parts that failed in this run",
            "",
            *(f"* {k}: `{v}`" for k, v in data["errors"].items()),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
