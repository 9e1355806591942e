-- sliding_window: an exact log, shared by every sliding limit of a key (KEYS[2]). Each
-- admitted check adds one entry carrying its tokens and the running total, so the work of
-- a check does not grow with its tokens: the tokens admitted in (now - window, now] are
-- the total minus the running total at the newest entry at or before now - window. A
-- write drops at most PRUNE entries that every window has left; the key's TTL does the rest.
local PRUNE = 64

-- running total, tokens and time of the entry at `rank` (0-based; -1 the newest)
local function log_entry(log, rank)
  local e = redis.call('ZRANGE', log, rank, rank, 'WITHSCORES')
  local total, n = string.match(e[1], '^(%d+):(%d+)$')
  return tonumber(total), tonumber(n), tonumber(e[2])
end

-- The log as a check sees it: its size, running total and newest time.
local function log_open(log)
  local size = redis.call('ZCARD', log)
  if size == 0 then
    return {size = 0, total = 0, newest = nil}
  end
  local total, _, newest = log_entry(log, -1)
  return {size = size, total = total, newest = newest}
end

-- (log state L, n, now, requests, window_us) -> allowed, remaining, reset_us, retry_us
local function sliding_window(log, L, n, now, req, win_us)
  local count, first = 0, 0
  if L.size > 0 then
    local base
    local gone = redis.call('ZCOUNT', log, '-inf', now - win_us)
    if gone > 0 then
      base = log_entry(log, gone - 1)
    else
      local total, k = log_entry(log, 0)       -- all in the window: count from the oldest
      base = total - k
    end
    count, first = L.total - base, gone
  end
  local allowed = count + n <= req
  local retry = 0
  if allowed then
    count = count + n
  else
    -- The oldest entry whose leaving frees enough: running total >= total + n - requests.
    local need = L.total + n - req
    local lo, hi = first, L.size - 1
    while lo < hi do
      local mid = idiv(lo + hi, 2)
      if log_entry(log, mid) >= need then
        hi = mid
      else
        lo = mid + 1
      end
    end
    local _, _, t = log_entry(log, lo)
    retry = t + win_us - now
  end
  local reset = 0
  if count > 0 then
    local newest = L.newest
    if allowed and n > 0 then
      newest = now
    end
    reset = newest + win_us - now
  end
  return allowed, req - count, reset, retry
end

-- Append an admitted check of n tokens at `now`, dropping entries older than the longest
-- sliding window (at most PRUNE of them).
local function log_append(log, L, n, now, longest_us)
  local gone = redis.call('ZCOUNT', log, '-inf', now - longest_us)
  if gone > 0 then
    redis.call('ZREMRANGEBYRANK', log, 0, math.min(gone, PRUNE) - 1)
  end
  redis.call('ZADD', log, now, string.format('%016d:%d', L.total + n, n))
  redis.call('PEXPIRE', log, ceil_ms(longest_us))
end
