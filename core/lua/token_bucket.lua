-- token_bucket: capacity C = burst, refill r = requests / window.
-- State "tokens:t": tokens in micro-tokens (integer), t = the time (us) up to which refill
-- has been credited. Refill credits whole micro-tokens and advances t only by the time
-- those micro-tokens took, so slow rates under frequent checks still refill.
-- Waits count from the state as stored, so they are exact to the microsecond: waiting
-- retry_after (reset_after) succeeds, one microsecond less does not.

-- The fewest whole microseconds whose refill, floor(us * rate) as computed below, reaches
-- d micro-tokens: ceil(d / rate), corrected by one where that division rounded.
local function micros_for(d, rate)
  local us = math.ceil(d / rate)
  if math.floor(us * rate) < d then
    return us + 1
  end
  if us > 0 and math.floor((us - 1) * rate) >= d then
    return us - 1
  end
  return us
end

-- Every algorithm: (state or nil, n, now, requests, window_us, burst, wait_us) ->
--   allowed, remaining, reset_us, retry_us, new state (nil: unchanged), its TTL in ms
-- wait_us > 0 (buckets and GCRA only) reserves: a check that would wait at most wait_us
-- for its tokens is allowed now and spends them ahead (tokens go below zero, the tat runs
-- ahead); it is answered allowed with retry_us = the wait. Later checks queue behind it.
local function token_bucket(raw, n, now, req, win_us, burst, wait_us)
  local cap = burst * MICRO
  local rate = req * MICRO / win_us            -- micro-tokens per microsecond
  local tokens, t = cap, now
  local held, since = cap, now                 -- the state as stored: waits count from it
  local a, b
  if raw then
    a, b = string.match(raw, '^(%-?%d+):(%d+)$')
  end
  if a then
    held, since = tonumber(a), tonumber(b)
    tokens, t = held, since
    if now > t then
      local gained = math.floor((now - t) * rate)
      if tokens + gained >= cap then
        tokens, t = cap, now
      elseif gained > 0 then
        tokens = tokens + gained
        t = t + micros_for(gained, rate)
      end
    end
    if tokens > cap then
      tokens = cap
    end
  end
  local need = n * MICRO
  local allowed = need <= tokens
  local retry = 0
  if allowed then
    if n > 0 then
      tokens = tokens - need
      held, since = tokens, t
    end
  else
    retry = since + micros_for(need - held, rate) - now
    if wait_us > 0 and retry <= wait_us then   -- a reservation: spend now, start later
      allowed = true
      tokens = tokens - need
      held, since = tokens, t
    end
  end
  local reset = 0
  if tokens < cap then
    reset = since + micros_for(cap - held, rate) - now
  end
  return allowed, idiv(tokens, MICRO), reset, retry, string.format('%d:%d', tokens, t),
         ceil_ms(reset) + 1000
end
