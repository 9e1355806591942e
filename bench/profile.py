"""Where a server process spends its time under load, from a cProfile of it.

The profile (see :mod:`bench.profserve`) covers one load phase. Time is grouped by
component (the package a function lives in); the time of C functions (``~`` in pstats) is
given to the component that called them, except waiting in epoll (idle, left out) and
socket calls (kept apart). cProfile slows Python code down more than C code, so the shares
are what counts, and the per-request microseconds are inflated.
"""

from __future__ import annotations

import pstats
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ProfileResult", "analyse"]

_ROOT = str(Path(__file__).resolve().parent.parent)
_STDLIB = sysconfig.get_paths()["stdlib"]
_OURS = tuple(f"{_ROOT}/{d}/" for d in ("api", "core", "workers", "schemas", "throttler"))
_PACKAGES = (
    ("/concurrent/futures/", "thread-pool hop (concurrent.futures, threading)"),
    ("/threading.py", "thread-pool hop (concurrent.futures, threading)"),
    ("/selectors.py", "asyncio (event loop)"),
    ("/litestar/", "Litestar"),
    ("/redis/", "redis-py"),
    ("/h11/", "h11 (HTTP/1.1 parser)"),
    ("/uvicorn/", "uvicorn"),
    ("/asyncio/", "asyncio (event loop)"),
    ("/prometheus_client/", "prometheus-client"),
    ("/opentelemetry/", "OpenTelemetry"),
    ("/anyio/", "anyio"),
    ("/msgspec/", "msgspec"),
    ("/logging/", "logging"),
    ("/structlog/", "structlog"),
)
IDLE = "idle (epoll wait)"
#: Calls worth counting per request: (label, file marker, function name).
NOTABLE = (
    ("handoffs to a thread pool", "concurrent/futures/thread.py", "submit"),
    ("copy.copy() calls", "/copy.py", "copy"),
    ("socket send() calls", "~", "<method 'send' of '_socket.socket' objects>"),
    ("socket recv() calls", "~", "<method 'recv' of '_socket.socket' objects>"),
    ("event-loop iterations", "asyncio/base_events.py", "_run_once"),
    ("Redis pipelines sent", "redis/asyncio/connection.py", "pack_commands"),
    ("regex fullmatch() calls", "~", "<method 'fullmatch' of 're.Pattern' objects>"),
    ("prometheus observe/inc calls", "prometheus_client/metrics.py", "observe"),
)
SOCKET = "socket syscalls"

_Func = tuple[str, int, str]


def _component(func: _Func) -> str | None:  # noqa: PLR0911 - one answer per kind
    """The component of a Python function; None for a C function (``~``)."""
    filename, _, name = func
    if filename == "~":
        if "epoll" in name or "select.select" in name:
            return IDLE
        if "_socket.socket" in name:
            return SOCKET
        if "msgspec" in name:
            return "msgspec"
        if "hiredis" in name:
            return "redis-py"
        return None
    if filename.startswith(_OURS):
        return "Throttler (api/, core/, workers/)"
    for marker, label in _PACKAGES:
        if marker in filename:
            return label
    if filename.startswith(_STDLIB):
        return "other stdlib"
    return "other"


def _short(func: _Func) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    for marker in ("site-packages/", f"{_ROOT}/", f"{_STDLIB}/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})"


@dataclass
class ProfileResult:
    scenario: str
    requests: int
    profiled_s: float  # busy time under the profiler (idle excluded)
    us_per_request: float
    components: dict[str, float] = field(default_factory=dict)  # µs per request
    top: list[tuple[str, float, float]] = field(default_factory=list)  # name, self %, cum %
    calls_per_request: dict[str, float] = field(default_factory=dict)

    def share(self, component: str) -> float:
        total = sum(self.components.values())
        return 100 * self.components.get(component, 0.0) / total if total else 0.0


def analyse(path: Path, scenario: str, requests: int, top: int = 12) -> ProfileResult:
    raw: dict[_Func, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    by_component: dict[str, float] = {}
    for func, (_cc, _nc, tottime, _ct, callers) in raw.items():
        component = _component(func)
        if component is not None:
            by_component[component] = by_component.get(component, 0.0) + tottime
            continue
        # A C function: its time goes to its callers' components, in proportion.
        spent = sum(c[2] for c in callers.values()) if callers else 0.0
        for caller, stats in (callers or {}).items():
            owner = _component(caller) or "C functions"
            share = tottime * stats[2] / spent if spent else 0.0
            by_component[owner] = by_component.get(owner, 0.0) + share
        if not callers or not spent:
            by_component["C functions"] = by_component.get("C functions", 0.0) + tottime
    idle = by_component.pop(IDLE, 0.0)
    busy = sum(by_component.values())
    n = max(requests, 1)
    per_request = {k: round(v * 1e6 / n, 1) for k, v in by_component.items()}
    ranked = sorted(
        ((f, s) for f, s in raw.items() if _component(f) != IDLE),
        key=lambda item: item[1][2],
        reverse=True,
    )
    best = [
        (_short(f), round(100 * s[2] / busy, 1), round(100 * s[3] / busy, 1))
        for f, s in ranked[:top]
    ]
    _ = idle
    calls: dict[str, float] = {}
    for label, marker, name in NOTABLE:
        count = sum(
            s[1]
            for f, s in raw.items()
            if f[2] == name and (marker == f[0] if marker == "~" else marker in f[0])
        )
        calls[label] = round(count / n, 2)
    return ProfileResult(
        scenario=scenario,
        requests=requests,
        profiled_s=round(busy, 3),
        us_per_request=round(busy * 1e6 / n, 1),
        components=dict(sorted(per_request.items(), key=lambda kv: -kv[1])),
        top=best,
        calls_per_request=calls,
    )
