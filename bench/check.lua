-- wrk script for `make bench`: POST checks on random keys (or batches of them), and a
-- summary line of JSON that bench/run.py reads. Settings come from the environment:
--   BENCH_MODE  "single": POST /rate-limit/<random key>/check with no body
--               "batch":  POST /check with BENCH_BATCH random keys
--               "get":    the URL as given (GET)
--               "lease":  acquire and release pairs on BENCH_LEASE_KEY: POST .../acquire,
--                         and for every lease an answer hands out, POST .../release
--   BENCH_KEYS  how many distinct keys to draw from (default 100000)
local mode = os.getenv("BENCH_MODE") or "get"
local keys = tonumber(os.getenv("BENCH_KEYS") or "100000")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local lease_key = os.getenv("BENCH_LEASE_KEY") or "lease:bench"
local threads = {}
local leases = {}                   -- lease ids handed out and not yet released (FIFO)
local first, last = 1, 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  statuses = {}
end

local function key()
  return "bench:" .. math.random(keys)
end

function request()
  if mode == "single" then
    return wrk.format("POST", "/rate-limit/" .. key() .. "/check")
  elseif mode == "lease" then
    if first <= last then
      local lease = leases[first]
      leases[first] = nil
      first = first + 1
      return wrk.format("POST", "/rate-limit/" .. lease_key .. "/release",
                        {["Content-Type"] = "application/json"}, '{"lease":"' .. lease .. '"}')
    end
    return wrk.format("POST", "/rate-limit/" .. lease_key .. "/acquire")
  elseif mode == "batch" then
    local items = {}
    for i = 1, batch do
      items[i] = '{"key":"' .. key() .. '"}'
    end
    local body = '{"checks":[' .. table.concat(items, ",") .. ']}'
    return wrk.format("POST", "/check", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if mode == "lease" and status == 200 then
    local lease = string.match(body, '"lease":"([^"]+)"')
    if lease then
      last = last + 1
      leases[last] = lease
    end
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    parts[#parts + 1] = string.format('"%d":%d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"seconds":%f,"errors":%d,"p50_us":%d,"p99_us":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ",")))
end
