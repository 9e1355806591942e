-- refund: give back up to n spent tokens to every rate limit of one key, never above a
-- limit's capacity; then answer as a peek (assembled like check.lua: after decide.lua).
-- KEYS     as check: hash, log, leases
-- ARGV[1]  now in microseconds, or "" to read the server clock (TIME). Tests only.
-- ARGV[2]  n: tokens to give back (integer >= 1)
-- ARGV[3]  k, then 4 values per limit, as check's ARGV[6...]
-- Returns the check reply of a peek (n = 0) after the refund.
--   token_bucket  tokens + n, at most the burst
--   gcra          tat - n * T, never before now
--   fixed_window  the current window's (or calendar month's) count - n, at least 0
--   sliding_window  the newest entries of the log that some window still counts leave it,
--                 n tokens of them (the last one shrinks when it holds more)
--   concurrency   nothing: a lease is given back by release
-- A state that does not exist is a full limit: nothing to give back.

-- Drop the newest n tokens from the log, among the entries after `since`.
local function log_refund(log, n, since)
  while n > 0 do
    local e = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
    if #e == 0 or tonumber(e[2]) <= since then
      return
    end
    local total, k = string.match(e[1], '^(%d+):(%d+)$')
    total, k = tonumber(total), tonumber(k)
    redis.call('ZREM', log, e[1])
    if k > n then
      redis.call('ZADD', log, e[2], string.format('%016d:%d', total - n, k - n))
      return
    end
    n = n - k
  end
end

local now = now_us(ARGV[1])
local n = tonumber(ARGV[2])
local given = given_limits(3)
local f, lim = resolve(KEYS[1], given)
local longest = 0
for i = 0, #lim / 4 - 1 do
  local b = 4 * i
  local alg, req, win_us, burst = lim[b + 1], lim[b + 2], lim[b + 3] * 1000, lim[b + 4]
  if burst == 0 then
    burst = req
  end
  local field = i .. LETTER[alg]
  local raw, new = f[field], nil
  if alg == 2 then
    longest = math.max(longest, win_us)
  elseif raw and alg == 1 then
    local _, _, _, _, state = token_bucket(raw, 0, now, req, win_us, burst, 0)
    local tokens, t = string.match(state, '^(%-?%d+):(%d+)$')
    tokens = tonumber(tokens) + n * MICRO
    if tokens >= burst * MICRO then
      new = string.format('%d:%d', burst * MICRO, now)
    else
      new = string.format('%d:%s', tokens, t)
    end
  elseif raw and alg == 4 then
    local T = math.ceil(win_us / req)
    new = string.format('%d', math.max(now, tonumber(raw) - n * T))
  elseif raw and (alg == 3 or alg == 5) then
    local w, c = string.match(raw, '^(%d+):(%d+)$')
    local current = alg == 3 and idiv(now, win_us) or (month_of(now))
    if tonumber(w) == current then
      new = string.format('%s:%d', w, math.max(0, tonumber(c) - n))
    end
  end
  if new then
    redis.call('HSET', KEYS[1], field, new)   -- the hash exists (it held the state): its
  end                                         -- TTL stays, long enough for a fuller state
end
if longest > 0 then
  log_refund(KEYS[2], n, now - longest)
end
return decide(KEYS[1], KEYS[2], KEYS[3], 0, 'd', now, given, 0, false)
