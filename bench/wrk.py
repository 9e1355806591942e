"""Drive a scenario with wrk: a generated Lua script builds POST bodies and random keys,
counts statuses, and prints the summary as JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.load import LoadResult, Scenario, wrk_path

__all__ = ["lua_script", "run_wrk", "wrk_version"]

_MARK = "BENCH-JSON "

_COMMON = r"""
local threads = {}
counts = {}
function setup(thread)
  thread:set("seed", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
  counts = {}
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    '__MARK__{"requests":%d,"duration_us":%d,"errors":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%f,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ",")))
end
""".replace("__MARK__", _MARK)


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def lua_script(scenario: Scenario) -> str:
    """The wrk script of ``scenario`` (fixed requests are left to wrk's own buffer)."""
    lines = [f"wrk.method = {_lua_string(scenario.method)}"]
    if scenario.method != "GET":
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if scenario.batch:
        lines += [
            f"local prefix = {_lua_string(scenario.key_prefix)}",
            "request = function()",
            "  local items = {}",
            f"  for i = 1, {scenario.batch} do",
            '    items[i] = \'{"key":"\' .. prefix .. math.random(1, '
            f'{scenario.keys}) .. \'","tokens":1}}\'',
            "  end",
            "  local body = '{\"checks\":[' .. table.concat(items, ',') .. "
            "'],\"all_or_nothing\":false}'",
            f"  return wrk.format(nil, {_lua_string(scenario.path)}, nil, body)",
            "end",
        ]
    elif scenario.keys:
        before, _, after = scenario.path.partition("{key}")
        lines += [
            f"wrk.body = {_lua_string(scenario.body)}",
            "request = function()",
            f"  return wrk.format(nil, {_lua_string(before + scenario.key_prefix)} .. "
            f"math.random(1, {scenario.keys}) .. {_lua_string(after)})",
            "end",
        ]
    else:
        lines.append(
            f"wrk.path = {_lua_string(scenario.path.replace('{key}', scenario.key_prefix))}"
        )
        if scenario.body:
            lines.append(f"wrk.body = {_lua_string(scenario.body)}")
    return "\n".join(lines) + "\n" + _COMMON


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return ""
    done = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "wrk"


def run_wrk(
    scenario: Scenario, port: int, *, connections: int, duration: float, workdir: str
) -> LoadResult:
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed")
    script = Path(workdir) / f"wrk-{scenario.name}.lua"
    script.write_text(lua_script(scenario))
    seconds = max(1, round(duration))
    argv = [
        path, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(script), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False,
        start_new_session=True,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr}")
    data = json.loads(line[len(_MARK) :])
    elapsed = data["duration_us"] / 1e6
    return LoadResult(
        scenario=scenario.name,
        tool="wrk",
        connections=connections,
        duration_s=round(elapsed, 3),
        requests=data["requests"],
        rps=round(data["requests"] / max(elapsed, 1e-9), 1),
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
        mean_ms=round(data["mean"] / 1000, 3),
        statuses=data["statuses"],
        errors=data["errors"],
        checks_per_request=scenario.checks_per_request,
    )
