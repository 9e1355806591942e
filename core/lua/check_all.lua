-- check_all: all-or-nothing checks over several keys, atomically.
-- KEYS     cfg_1, st_1, cfg_2, st_2, ...   (on a Redis Cluster: all in one hash slot)
-- ARGV[1]  now in microseconds, or "" (TIME)
-- ARGV[2..5] the default limit: algorithm, requests, window_ms, burst
-- ARGV[6..] n_1, n_2, ...: tokens per key (each key at most once)
-- Returns {all_allowed (1/0), reply_1, reply_2, ...} with replies as from check.
-- For every algorithm, a check of n is allowed exactly when n <= remaining (that is what
-- remaining means), so a peek of each key decides the group before anything is spent.
local now = now_us(ARGV[1])
local f = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local count = #KEYS / 2
local peeks, all = {}, true
for i = 1, count do
  local n = tonumber(ARGV[5 + i])
  local peek = decide(KEYS[2 * i - 1], KEYS[2 * i], 0, 'd', now, f[1], f[2], f[3], f[4])
  if n > peek[2] then
    peek[1] = -1                              -- more than the capacity: never possible
    all = false
  elseif n > peek[3] then
    all = false
  end
  peeks[i] = peek
end
local out = {all and 1 or 0}
for i = 1, count do
  local n = tonumber(ARGV[5 + i])
  local peek = peeks[i]
  if peek[1] == -1 then
    out[i + 1] = peek
  elseif all then
    out[i + 1] = decide(KEYS[2 * i - 1], KEYS[2 * i], n, 'd', now, f[1], f[2], f[3], f[4])
  elseif n > peek[3] then
    -- Could not pay on its own: a denied check writes nothing and says when it could.
    out[i + 1] = decide(KEYS[2 * i - 1], KEYS[2 * i], n, 'd', now, f[1], f[2], f[3], f[4])
  else
    peek[1] = 0                               -- could pay, but the group cannot: not spent
    out[i + 1] = peek
  end
end
return out
