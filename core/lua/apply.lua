-- apply: the single writer of configured limits. Idempotent and ordered by stream entry id.
--
-- KEYS[1]  the key's hash   <prefix>:{<key>}    (layout in prelude.lua)
-- KEYS[2]  the key's log    <prefix>:{<key>}:l
-- KEYS[3]  the key's leases <prefix>:{<key>}:c  (concurrency limits)
-- ARGV[1]  op: "set", "del" or "reset" (clear what was spent; limits and version stay)
-- ARGV[2]  version: the stream entry id "<ms>-<seq>" of the change, or "" (unversioned)
-- ARGV[3]  op "set": the limits, "alg,requests,window_ms,burst;..." (alg 1-6, burst 0 = none),
--          after "S;" when they are in shadow mode
-- ARGV[4]  tombstone TTL in ms: a deleted key keeps its version this long, so an older
--          change delivered late cannot bring the limit back
-- ARGV[5]  now in microseconds, or "" for the server clock (tests only)
--
-- Returns {result, prev_limits, prev_version}
--   result: "created" | "replaced" | "deleted" | "not_found" | "reset"  (applied)
--           "duplicate" (this very version is already applied) | "stale" (older version)
--   prev_limits: the limits before, encoded as ARGV[3] ("" when there were none)

-- parse() and compare() of versions: core/lua/versions.lua

local LETTER = {'t', 's', 'f', 'g', 'm', 'c'}

local function limits_of(c)
  local out = {}
  for a, r, w, b in string.gmatch(c or '', '(%d+),(%d+),(%d+),(%d+)') do
    out[#out + 1] = {tonumber(a), tonumber(r), tonumber(w), tonumber(b)}
  end
  return out
end

local function cap_of(l)
  if l[4] > 0 then
    return l[4]
  end
  return l[2]
end

-- Same algorithm, new numbers: keep what the caller has spent (not what is left), so a
-- raised limit gives room at once and a lowered one keeps its debt. Returns the new state.
local function keep_spent(raw, old, new, now)
  if new[1] == 1 then
    local a, b = string.match(raw, '^(%-?%d+):(%d+)$')
    local old_cap = cap_of(old) * 1000000
    local cap = cap_of(new) * 1000000
    return string.format('%d:%d', math.max(0, math.min(cap, tonumber(a) + cap - old_cap)),
                         tonumber(b))
  elseif new[1] == 4 then
    local spent = tonumber(raw) - now
    if spent <= 0 then
      return raw
    end
    local old_T = math.ceil(old[3] * 1000 / old[2])
    local new_T = math.ceil(new[3] * 1000 / new[2])
    return string.format('%d', now + math.ceil(spent * new_T / old_T))
  end
  return raw                                   -- a fixed window keeps its counter
end

local function now_us()
  local now = tonumber(ARGV[5] or '')
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return now
end

local hash, log, leases = KEYS[1], KEYS[2], KEYS[3]
local op, ver = ARGV[1], ARGV[2]
local old = redis.call('HMGET', hash, 'c', 'v')
local existed = old[1] ~= false
local prev = existed and old[1] or ''
local prev_ver = old[2] or ''

if op == 'reset' then
  -- Usage only, whatever the version: every state field and the log go. A hash that held
  -- nothing else (a key on a policy or the default) goes with them.
  local drop = {}
  for _, name in ipairs(redis.call('HKEYS', hash)) do
    if string.match(name, '^%d+%a$') then
      drop[#drop + 1] = name
    end
  end
  if #drop > 0 then
    redis.call('HDEL', hash, unpack(drop))
  end
  redis.call('DEL', log, leases)
  return {'reset', prev, prev_ver}
end

if ver ~= '' and prev_ver ~= '' then
  local order = compare(ver, prev_ver)
  if order == 0 then
    return {'duplicate', prev, prev_ver}
  elseif order < 0 then
    return {'stale', prev, prev_ver}
  end
end

local result
if op == 'set' then
  local before, after = limits_of(old[1]), limits_of(ARGV[3])
  -- The states to keep: limit i keeps its state under the same algorithm (adjusted when it
  -- was configured before); any other state field goes (a new algorithm starts full).
  local keep, sliding, leasing = {}, false, false
  local now = nil
  for i, l in ipairs(after) do
    local field = (i - 1) .. LETTER[l[1]]
    if l[1] == 2 then
      sliding = true
    elseif l[1] == 6 then
      leasing = true                           -- leases held stay held
    else
      local raw = redis.call('HGET', hash, field)
      if raw and existed and before[i] and before[i][1] == l[1] then
        now = now or now_us()
        raw = keep_spent(raw, before[i], l, now)
      end
      keep[field] = raw or false
    end
  end
  local drop = {}
  local names = redis.call('HKEYS', hash)
  for _, name in ipairs(names) do
    if string.match(name, '^%d+%a$') and keep[name] == nil then
      drop[#drop + 1] = name
    end
  end
  if #drop > 0 then
    redis.call('HDEL', hash, unpack(drop))
  end
  for field, raw in pairs(keep) do
    if raw then
      redis.call('HSET', hash, field, raw)
    end
  end
  if not sliding then
    redis.call('DEL', log)
  end
  if not leasing then
    redis.call('DEL', leases)
  end
  redis.call('HSET', hash, 'c', ARGV[3])
  redis.call('HDEL', hash, 'd', 'i')
  redis.call('PERSIST', hash)
  result = existed and 'replaced' or 'created'
else
  redis.call('DEL', hash, log, leases)
  if ver ~= '' then
    redis.call('HSET', hash, 'd', '1')
    redis.call('PEXPIRE', hash, ARGV[4])
  end
  result = existed and 'deleted' or 'not_found'
end
if ver ~= '' then
  redis.call('HSET', hash, 'v', ver)
end
return {result, prev, prev_ver}
