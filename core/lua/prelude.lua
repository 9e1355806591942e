-- check: one atomic rate-limit decision. Assembled at load time as
--   prelude.lua + token_bucket.lua + sliding_window.lua + fixed_window.lua + gcra.lua
--   + decide.lua + check.lua          (check_all.lua instead of check.lua: all-or-nothing)
--
-- KEYS[1]  the key's limit hash   <prefix>:{<key>}:cfg  (alg, req, win, burst, ver, del)
-- KEYS[2]  the key's state        <prefix>:{<key>}:st   (string, or sorted set for sliding_window)
-- ARGV[1]  n: tokens to spend (integer >= 0; 0 peeks and changes nothing)
-- ARGV[2]  mode: "d" use the stored limit, else the limit in ARGV[4..7] (default limit)
--                "i" use the stored limit, else store the limit in ARGV[4..7] (inline create)
--                "p" use the stored limit only (answer -2 when the key has none)
-- ARGV[3]  now in microseconds, or "" to read the server clock (TIME). Tests only.
-- ARGV[4]  algorithm: 1 token_bucket, 2 sliding_window, 3 fixed_window, 4 gcra
-- ARGV[5]  requests per window; ARGV[6] window in ms; ARGV[7] burst (0 = requests)
--
-- Returns {code, limit, remaining, reset_after_ms, retry_after_ms, now_ms,
--          alg, requests, window_ms, burst}
--   code 1 allowed, 0 denied, -1 n exceeds what the limit can ever allow, -2 no limit.
-- Times inside are integers in microseconds; results in ms are rounded up.

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
