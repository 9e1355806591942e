-- fixed_window: windows aligned to multiples of the window since the Unix epoch.
-- State (string "w:count"): the window number and the tokens spent in it.
local function fixed_window(st, n, now, req, win_us)
  local w = idiv(now, win_us)
  local count = 0
  local raw = redis.call('GET', st)
  if raw then
    local a, b = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(a) == w then
      count = tonumber(b)
    end
  end
  local ends = (w + 1) * win_us - now
  local allowed = count + n <= req
  if allowed and n > 0 then
    count = count + n
    redis.call('SET', st, string.format('%d:%d', w, count), 'PX', ceil_ms(ends))
  end
  local retry = 0
  if not allowed then
    retry = ends
  end
  local reset = 0
  if count > 0 then
    reset = ends
  end
  return allowed, req, req - count, reset, retry, now
end
