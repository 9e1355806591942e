-- check: atomic rate-limit decisions over every limit of a key. Assembled at load time as
--   prelude.lua + token_bucket.lua + gcra.lua + fixed_window.lua + sliding_window.lua
--   + concurrency.lua + decide.lua + check.lua
--   (instead of check.lua: check_all.lua all-or-nothing, check_many.lua many keys,
--    acquire.lua take a lease, refund.lua give tokens back; each states its own ARGV)
--
-- State layout (one hash tag per rate-limit key; see core/keys.py):
--   KEYS[1]  <prefix>:{<key>}     hash: the key's own limits and every limit's state
--     c      the key's own limits, "alg,requests,window_ms,burst;..." (alg 1-6 as below,
--            burst 0 = none); absent when the key has none
--     v      stream entry id of the last config change applied ("<ms>-<seq>")
--     d      "1": deleted at version v (a tombstone, with a TTL)
--     i      "1": c was created inline by a check (the hash then has a TTL)
--     <i><a> state of limit i (0-based) under algorithm letter a: t token bucket
--            "microtokens:us" (below 0 after reservations), g gcra "tat_us",
--            f fixed window "window:count",
--            m calendar month "month:count" (month = year * 12 + month - 1)
--   KEYS[2]  <prefix>:{<key>}:l   sorted set, the sliding-window log shared by every
--            sliding limit of the key: one entry per admitted check, score = its time (us),
--            member = "<running total after it, 16 digits>:<its tokens>"
--   KEYS[3]  <prefix>:{<key>}:c   sorted set, the leases held under the key's concurrency
--            limits (shared by all of them): member = lease id, score = its expiry (us)
--
-- ARGV[1]  now in microseconds, or "" to read the server clock (TIME). Tests only.
-- ARGV[2]  mode: "d" the key's own limits, else the limits given below
--                "i" as "d", and store the given limits as the key's own when it has none
--                    (inline creation; the hash then expires after ARGV[3] ms unused)
--                "s" status: as "d" with n = 0, and the reply adds every limit's
--                    {remaining, reset_after_ms, ...} as its 8th element
-- ARGV[3]  inline TTL in ms (mode "i")
-- ARGV[4]  n: tokens to spend (integer >= 0; 0 peeks and changes nothing)
-- ARGV[5]  max wait in ms: a check that would be denied but whose tokens come within it
--          reserves them (0: none; only when every rate limit is token_bucket or gcra)
-- ARGV[6]  k: how many limits follow (1-8); then 4 values per limit:
--          algorithm (1 token_bucket, 2 sliding_window, 3 fixed_window, 4 gcra,
--          5 fixed_window by UTC calendar month, 6 concurrency),
--          requests, window_ms, burst (0 = requests; others ignore it)
--
-- Returns {code, index, remaining, reset_after_ms, retry_after_ms, now_ms, own}
--   code   1 allowed, 0 denied, -1 n exceeds what limit `index` can ever allow,
--          -2 (acquire) the key has no concurrency limit
--   retry_after_ms  allowed: the wait of a reservation (0: start now)
--   index  the deciding limit (0-based): the one that denies (the longest wait), else the
--          one with the least remaining
--   own    the key's own limits ("c") when they decided, "" when the given limits did
-- A check is allowed only if every limit allows; then n is spent from all of them, else
-- from none: a denied check writes nothing. A check never takes a lease: a concurrency
-- limit reports its free slots and never denies one (acquire.lua takes leases).
-- Times are integers in microseconds inside; results in ms are rounded up.

local MICRO = 1000000

-- The time: the override when a test passes one, else the server clock.
local function now_us(override)
  if override ~= '' then
    return tonumber(override)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * MICRO + tonumber(t[2])
end

local function ceil_ms(us)
  if us <= 0 then
    return 0
  end
  return math.ceil(us / 1000)
end

-- floor(a / b) for non-negative integers held in doubles, without a rounding division.
local function idiv(a, b)
  return (a - a % b) / b
end
