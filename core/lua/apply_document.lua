-- apply_document: the single writer of a family of named documents (Envoy RLS domains),
-- idempotent and ordered by stream entry id like apply_policy.lua.
--
-- KEYS[1]  hash: name -> "<version> <document>" (the version, a space, the JSON as given)
-- KEYS[2]  hash: name -> the version of its deletion (a tombstone)
-- KEYS[3]  integer, incremented by every applied change (readers compare it to theirs)
-- ARGV[1]  op: "set" or "del"
-- ARGV[2]  name
-- ARGV[3]  version: the stream entry id "<ms>-<seq>" of the change, or "" (unversioned)
-- ARGV[4]  op "set": the document (stored as it is: never decoded here)
--
-- Returns {result, previous version}
--   result: "created" | "replaced" | "deleted" | "not_found"  (applied)
--           "duplicate" | "stale" (skipped: that version or a newer one is in place)

-- parse() and compare() of versions: core/lua/versions.lua

local docs, gone, counter = KEYS[1], KEYS[2], KEYS[3]
local op, name, ver = ARGV[1], ARGV[2], ARGV[3]
local raw = redis.call('HGET', docs, name)
local prev_ver = ''
if raw then
  prev_ver = string.match(raw, '^(%S*) ')
else
  prev_ver = redis.call('HGET', gone, name) or ''
end

if ver ~= '' and prev_ver ~= '' then
  local order = compare(ver, prev_ver)
  if order == 0 then
    return {'duplicate', prev_ver}
  elseif order < 0 then
    return {'stale', prev_ver}
  end
end

local result
if op == 'set' then
  redis.call('HSET', docs, name, ver .. ' ' .. ARGV[4])
  redis.call('HDEL', gone, name)
  result = raw and 'replaced' or 'created'
else
  redis.call('HDEL', docs, name)
  if ver ~= '' then
    redis.call('HSET', gone, name, ver)
  end
  result = raw and 'deleted' or 'not_found'
end
redis.call('INCR', counter)
return {result, prev_ver}
