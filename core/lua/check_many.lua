-- check_many: independent checks of many keys in one script call (POST /check), each
-- decided and spent on its own, in order (a key listed twice is checked twice).
-- KEYS     hash_1, log_1, leases_1, hash_2, ...   (one hash slot: callers on a Redis Cluster
--                                               send one call per key instead)
-- ARGV     now ("" for TIME), then the limit sets and every key's tokens and set as read
--          by limit_sets() and key_items() (decide.lua)
-- Returns {reply_1, reply_2, ...} with replies as from check.
local now = now_us(ARGV[1])
local sets, first = limit_sets(2)
local out = {}
for i = 1, #KEYS / 3 do
  local n, given = key_item(sets, first, i)
  out[i] = decide(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], n, 'd', now, given, 0, true)
end
return out
