-- fixed_window: windows aligned to multiples of the window since the Unix epoch.
-- State "w:count": the window number and the tokens spent in it.
local function fixed_window(raw, n, now, req, win_us)
  local w = idiv(now, win_us)
  local count = 0
  if raw then
    local a, b = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(a) == w then
      count = tonumber(b)
    end
  end
  local ends = (w + 1) * win_us - now
  local allowed = count + n <= req
  if allowed then
    count = count + n
  end
  local retry = 0
  if not allowed then
    retry = ends
  end
  local reset = 0
  if count > 0 then
    reset = ends
  end
  return allowed, req - count, reset, retry, string.format('%d:%d', w, count), ceil_ms(ends)
end
