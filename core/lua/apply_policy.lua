-- apply_policy: the single writer of policies. Idempotent and ordered by stream entry id.
--
-- KEYS[1]  {<prefix>}:policies    hash: name -> the policy as JSON, with its version "v"
-- KEYS[2]  {<prefix>}:patterns    hash: pattern -> the name of the policy that holds it
-- KEYS[3]  {<prefix>}:policy-gone hash: name -> the version of its deletion (a tombstone)
-- KEYS[4]  {<prefix>}:policy-version  integer, incremented by every applied change
--          (API processes compare it to what they loaded: a missed notification shows)
-- ARGV[1]  op: "set" or "del"
-- ARGV[2]  name
-- ARGV[3]  version: the stream entry id "<ms>-<seq>" of the change, or "" (unversioned)
-- ARGV[4]  op "set": the policy as JSON {"limits": [...], "match": [...], "shadow": bool}
--
-- Returns {result, previous policy JSON ("" if none), previous version, conflicting pattern}
--   result: "created" | "replaced" | "deleted" | "not_found"  (applied)
--           "duplicate" | "stale" (skipped: that version or a newer one is in place)
--           "conflict" (skipped: a pattern belongs to another policy; 4th element names it)

-- parse() and compare() of versions: core/lua/versions.lua

local policies, patterns, gone, counter = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, name, ver = ARGV[1], ARGV[2], ARGV[3]
local raw = redis.call('HGET', policies, name)
local prev = raw and cjson.decode(raw) or nil
local prev_ver = prev and prev.v or redis.call('HGET', gone, name) or ''
local prev_json = ''
if prev then
  prev.v = nil
  prev_json = cjson.encode(prev)
end

if ver ~= '' and prev_ver ~= '' then
  local order = compare(ver, prev_ver)
  if order == 0 then
    return {'duplicate', prev_json, prev_ver, ''}
  elseif order < 0 then
    return {'stale', prev_json, prev_ver, ''}
  end
end

local result
if op == 'set' then
  local policy = cjson.decode(ARGV[4])
  for _, pattern in ipairs(policy.match) do
    local owner = redis.call('HGET', patterns, pattern)
    if owner and owner ~= name then
      return {'conflict', prev_json, prev_ver, pattern}
    end
  end
  if prev then
    for _, pattern in ipairs(prev.match) do
      redis.call('HDEL', patterns, pattern)
    end
  end
  for _, pattern in ipairs(policy.match) do
    redis.call('HSET', patterns, pattern, name)
  end
  policy.v = ver
  redis.call('HSET', policies, name, cjson.encode(policy))
  redis.call('HDEL', gone, name)
  result = prev and 'replaced' or 'created'
else
  if prev then
    for _, pattern in ipairs(prev.match) do
      redis.call('HDEL', patterns, pattern)
    end
    redis.call('HDEL', policies, name)
  end
  if ver ~= '' then
    redis.call('HSET', gone, name, ver)
  end
  result = prev and 'deleted' or 'not_found'
end
redis.call('INCR', counter)
return {result, prev_json, prev_ver, ''}
