-- token_bucket: capacity C = burst, refill r = requests / window.
-- State (string "tokens:t"): tokens in micro-tokens (integer), t = the time (us) up to which
-- refill has been credited. Refill credits whole micro-tokens and advances t only by the
-- time those micro-tokens took, so slow rates under frequent checks still refill.
local function token_bucket(st, n, now, req, win_us, burst)
  local cap = burst * MICRO
  local rate = req * MICRO / win_us            -- micro-tokens per microsecond
  local tokens, t = cap, now
  local raw = redis.call('GET', st)
  if raw then
    local a, b = string.match(raw, '^(%d+):(%d+)$')
    tokens, t = tonumber(a), tonumber(b)
    if now > t then
      local gained = math.floor((now - t) * rate)
      if tokens + gained >= cap then
        tokens, t = cap, now
      elseif gained > 0 then
        tokens = tokens + gained
        t = t + math.ceil(gained / rate)
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
      local ttl = ceil_ms((cap - tokens) / rate) + 1000
      redis.call('SET', st, string.format('%d:%d', tokens, t), 'PX', ttl)
    end
  else
    retry = math.ceil((need - tokens) / rate)
  end
  local reset = math.ceil((cap - tokens) / rate)
  return allowed, burst, idiv(tokens, MICRO), reset, retry, now
end
