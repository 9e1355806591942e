-- apply: the single writer of limits. Idempotent and ordered by stream entry id.
--
-- KEYS[1]  the key's limit hash   <prefix>:{<key>}:cfg
-- KEYS[2]  the key's state        <prefix>:{<key>}:st
-- ARGV[1]  op: "set" or "del"
-- ARGV[2]  version: the stream entry id "<ms>-<seq>" of the change, or "" (unversioned)
-- ARGV[3]  algorithm name; ARGV[4] requests; ARGV[5] window_ms; ARGV[6] burst  (op "set")
-- ARGV[7]  tombstone TTL in ms: a deleted key keeps its version this long, so an older
--          change delivered late cannot bring the limit back
-- ARGV[8]  now in microseconds, or "" / absent for the server clock (tests only)
--
-- Returns {result, prev_alg, prev_req, prev_win, prev_burst, prev_ver}
--   result: "created" | "replaced" | "deleted" | "not_found"  (applied)
--           "duplicate" (this very version is already applied) | "stale" (older version)
--   prev_*: the limit before ("" when there was none)

local function parse(ver)
  local ms, seq = string.match(ver, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- -1, 0 or 1 as version a is older than, the same as, or newer than b
local function compare(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then
    return am < bm and -1 or 1
  end
  if as ~= bs then
    return as < bs and -1 or 1
  end
  return 0
end

-- Same algorithm, new numbers: keep what the caller has spent (not what is left), so a
-- raised limit gives room at once and a lowered one keeps its debt.
local function keep_spent(alg, st, old, req, win, burst)
  if alg ~= 'token_bucket' and alg ~= 'gcra' then
    return                      -- the windows keep their log or counter: spent as it is
  end
  local raw = redis.call('GET', st)
  if not raw then
    return
  end
  if alg == 'token_bucket' then
    local a, b = string.match(raw, '^(%d+):(%d+)$')
    local old_cap = tonumber(old[4]) * 1000000
    local cap = tonumber(burst) * 1000000
    local tokens = math.max(0, math.min(cap, tonumber(a) + cap - old_cap))
    local rate = tonumber(req) * 1000000 / (tonumber(win) * 1000)
    local ttl = math.ceil((cap - tokens) / rate / 1000) + 1000
    redis.call('SET', st, string.format('%d:%d', tokens, tonumber(b)), 'PX', ttl)
  else
    local now = tonumber(ARGV[8] or '')
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    local spent = tonumber(raw) - now
    if spent > 0 then
      local old_T = math.ceil(tonumber(old[3]) * 1000 / tonumber(old[2]))
      local new_T = math.ceil(tonumber(win) * 1000 / tonumber(req))
      local tat = now + math.ceil(spent * new_T / old_T)
      redis.call('SET', st, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
    end
  end
end

local op, ver = ARGV[1], ARGV[2]
local old = redis.call('HMGET', KEYS[1], 'alg', 'req', 'win', 'burst', 'ver', 'del')
local existed = old[1] and old[6] ~= '1'
local prev = {'', '', '', '', old[5] or ''}
if existed then
  prev = {old[1], old[2], old[3], old[4], old[5] or ''}
end

if ver ~= '' and old[5] and old[5] ~= '' then
  local order = compare(ver, old[5])
  if order == 0 then
    return {'duplicate', prev[1], prev[2], prev[3], prev[4], prev[5]}
  elseif order < 0 then
    return {'stale', prev[1], prev[2], prev[3], prev[4], prev[5]}
  end
end

local result
if op == 'set' then
  local alg = ARGV[3]
  local fresh = (existed and old[1] ~= alg) or (not existed and alg ~= 'token_bucket')
  if fresh then
    redis.call('DEL', KEYS[2])                 -- a new algorithm starts from a full limit
  elseif existed then
    keep_spent(alg, KEYS[2], old, ARGV[4], ARGV[5], ARGV[6])
  end
  redis.call('HSET', KEYS[1], 'alg', alg, 'req', ARGV[4], 'win', ARGV[5], 'burst', ARGV[6])
  redis.call('HDEL', KEYS[1], 'del')
  redis.call('PERSIST', KEYS[1])
  result = existed and 'replaced' or 'created'
else
  redis.call('DEL', KEYS[1], KEYS[2])
  if ver ~= '' then
    redis.call('HSET', KEYS[1], 'del', '1')
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
  end
  result = existed and 'deleted' or 'not_found'
end
if ver ~= '' then
  redis.call('HSET', KEYS[1], 'ver', ver)
end
return {result, prev[1], prev[2], prev[3], prev[4], prev[5]}
