-- check_group: one request's keys decided together (Envoy RLS descriptors), atomically.
-- KEYS     hash_1, log_1, leases_1, hash_2, ...   (on a Redis Cluster: all in one hash slot)
-- ARGV     now ("" for TIME), then the limit sets and every key's tokens and set as read
--          by limit_sets() and key_item() (decide.lua), except that a key's set number is
--          negative when the key is advisory (shadow mode); each key at most once
-- Returns {all_allowed (1/0), reply_1, reply_2, ...} with replies as from check.
-- Every key is decided without spending first. If every enforced (non-advisory) key allows,
-- n is spent from every key that allows, advisory ones included: an advisory key that
-- denies never blocks the others. Else nothing is spent anywhere. A key's reply code says
-- what it decided on its own (1 could pay, 0 denied, -1 n above its capacity).
local now = now_us(ARGV[1])
local sets, first = limit_sets(2)
local count = #KEYS / 3
local trial, all = {}, true
for i = 1, count do
  local at = first + 2 * (i - 1)
  local n, set = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  trial[i] = decide(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], n, 'd', now,
                    sets[math.abs(set)], 0, false)
  if trial[i][1] ~= 1 and set > 0 then
    all = false
  end
end
local out = {all and 1 or 0}
for i = 1, count do
  local at = first + 2 * (i - 1)
  local n, set = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  if all and trial[i][1] == 1 then
    out[i + 1] = decide(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], n, 'd', now,
                        sets[math.abs(set)], 0, true)
  else
    out[i + 1] = trial[i]
  end
end
return out
