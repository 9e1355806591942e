-- check_all: all-or-nothing checks over several keys, atomically.
-- KEYS     hash_1, log_1, leases_1, hash_2, ...   (on a Redis Cluster: all in one hash slot)
-- ARGV     now ("" for TIME), then the limit sets and every key's tokens and set as read
--          by limit_sets() and key_item() (decide.lua); each key at most once
-- Returns {all_allowed (1/0), reply_1, reply_2, ...} with replies as from check.
-- Each key is decided without spending first; only if every key allows is n spent from
-- each. A key that could pay when the group cannot answers as a peek with code 0.
local now = now_us(ARGV[1])
local sets, first = limit_sets(2)
local count = #KEYS / 3
local trial, all = {}, true
for i = 1, count do
  local n, given = key_item(sets, first, i)
  trial[i] = decide(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], n, 'd', now, given, 0, false)
  if trial[i][1] ~= 1 then
    all = false
  end
end
local out = {all and 1 or 0}
for i = 1, count do
  local n, given = key_item(sets, first, i)
  if all then
    out[i + 1] = decide(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], n, 'd', now, given, 0, true)
  elseif trial[i][1] == 1 then
    local peek = decide(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], 0, 'd', now, given, 0, false)
    peek[1] = 0                               -- could pay, but the group cannot: not spent
    out[i + 1] = peek
  else
    out[i + 1] = trial[i]                     -- denied or refused on its own: as it is
  end
end
return out
