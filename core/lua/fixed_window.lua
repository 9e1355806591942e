-- fixed_window: windows aligned to multiples of the window since the Unix epoch.
-- State "w:count": the window number and the tokens spent in it.

-- A counter per window: w the current window's number, `ends` the µs until it ends.
local function counted(raw, n, req, w, ends)
  local count = 0
  if raw then
    local a, b = string.match(raw, '^(%d+):(%d+)$')
    if tonumber(a) == w then
      count = tonumber(b)
    end
  end
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

local function fixed_window(raw, n, now, req, win_us)
  local w = idiv(now, win_us)
  return counted(raw, n, req, w, (w + 1) * win_us - now)
end

-- calendar_month: a fixed window that is a UTC calendar month (code 5, letter "m"); the
-- window number is year * 12 + month - 1. Dates from the civil calendar (proleptic
-- Gregorian), computed from the day number as in H. Hinnant's civil_from_days.
local DAY_US = 86400 * MICRO
local MONTH_DAYS = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}

local function month_of(now)
  local days = idiv(now, DAY_US)
  local z = days + 719468
  local era = idiv(z, 146097)
  local doe = z - era * 146097
  local yoe = idiv(doe - idiv(doe, 1460) + idiv(doe, 36524) - idiv(doe, 146096), 365)
  local doy = doe - (365 * yoe + idiv(yoe, 4) - idiv(yoe, 100))
  local mp = idiv(5 * doy + 2, 153)
  local day = doy - idiv(153 * mp + 2, 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  local length = MONTH_DAYS[m]
  if m == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then
    length = 29
  end
  -- the month's number, and the microsecond its successor starts
  return y * 12 + m - 1, (days - day + 1 + length) * DAY_US
end

local function calendar_month(raw, n, now, req)
  local w, next_start = month_of(now)
  return counted(raw, n, req, w, next_start - now)
end
