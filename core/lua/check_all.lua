-- check_all: all-or-nothing checks over several keys, atomically.
-- KEYS     hash_1, log_1, hash_2, log_2, ...   (on a Redis Cluster: all in one hash slot)
-- ARGV[1]  now in microseconds, or "" (TIME)
-- ARGV[2]  n_1, ARGV[3] n_2, ...: tokens per key (each key at most once), then
-- ARGV[2 + keys]  k, and the limits for keys without their own, as for check
-- Returns {all_allowed (1/0), reply_1, reply_2, ...} with replies as from check.
-- Each key is decided without spending first; only if every key allows is n spent from
-- each. A key that could pay when the group cannot answers as a peek with code 0.
local now = now_us(ARGV[1])
local count = #KEYS / 2
local given = given_limits(2 + count)
local trial, all = {}, true
for i = 1, count do
  trial[i] = decide(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[1 + i]), 'd', now, given, 0, false)
  if trial[i][1] ~= 1 then
    all = false
  end
end
local out = {all and 1 or 0}
for i = 1, count do
  local n = tonumber(ARGV[1 + i])
  if all then
    out[i + 1] = decide(KEYS[2 * i - 1], KEYS[2 * i], n, 'd', now, given, 0, true)
  elseif trial[i][1] == 1 then
    local peek = decide(KEYS[2 * i - 1], KEYS[2 * i], 0, 'd', now, given, 0, false)
    peek[1] = 0                               -- could pay, but the group cannot: not spent
    out[i + 1] = peek
  else
    out[i + 1] = trial[i]                     -- denied or refused on its own: as it is
  end
end
return out
