-- check_many: independent checks of many keys in one script call (POST /check), each
-- decided and spent on its own, in order (a key listed twice is checked twice).
-- KEYS     hash_1, log_1, hash_2, log_2, ...   (one hash slot: callers on a Redis Cluster
--                                               send one call per key instead)
-- ARGV[1]  now in microseconds, or "" (TIME)
-- ARGV[2]  n_1, ARGV[3] n_2, ...: tokens per check; then, at ARGV[2 + checks],
--          k and the limits for keys without their own, as for check
-- Returns {reply_1, reply_2, ...} with replies as from check.
local now = now_us(ARGV[1])
local count = #KEYS / 2
local given = given_limits(2 + count)
local out = {}
for i = 1, count do
  out[i] = decide(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[1 + i]), 'd', now, given, 0, true)
end
return out
