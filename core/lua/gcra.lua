-- gcra: the generic cell rate algorithm. State: one integer, the theoretical arrival time
-- (tat, us). The emission interval T = window / requests is rounded up to a whole
-- microsecond, so all arithmetic is exact integers.
local function gcra(raw, n, now, req, win_us, burst, wait_us)
  local T = math.ceil(win_us / req)
  local tau = T * burst
  local stored = tonumber(raw) or now
  local tat = math.max(stored, now)
  local new_tat = tat + n * T
  local allow_at = new_tat - tau
  local allowed = now >= allow_at
  local retry = 0
  if allowed then
    if n > 0 then
      stored = new_tat
    end
  else
    retry = allow_at - now
    if wait_us > 0 and retry <= wait_us then   -- a reservation: the tat runs ahead
      allowed = true
      stored = new_tat
    else
      new_tat = tat
    end
  end
  local room = tau - (new_tat - now)
  local remaining = 0
  if room > 0 then
    remaining = idiv(room, T)
  end
  local reset = math.max(0, stored - now)
  return allowed, remaining, reset, retry, string.format('%d', new_tat), ceil_ms(new_tat - now)
end
