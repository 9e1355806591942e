-- sliding_window: an exact log. State: a sorted set with one member per admitted token,
-- scored by its admission time (us). Members are "<time>:<index>", unique per key: the
-- index continues from the count, and ZADD NX skips an index already taken (possible
-- after a clock stepped back past a prune), so no admitted token is ever overwritten.
local function sliding_window(st, n, now, req, win_us)
  local newest = redis.call('ZRANGE', st, -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) > now then
    now = tonumber(newest[2])                  -- never let the log run backwards
  end
  redis.call('ZREMRANGEBYSCORE', st, '-inf', now - win_us)
  local count = redis.call('ZCARD', st)
  local allowed = count + n <= req
  local retry = 0
  if allowed then
    if n > 0 then
      local added, index = 0, count
      while added < n do
        local batch = {}
        for _ = 1, math.min(n - added, 1000) do
          index = index + 1
          batch[#batch + 1] = now
          batch[#batch + 1] = string.format('%d:%d', now, index)
        end
        added = added + redis.call('ZADD', st, 'NX', unpack(batch))
      end
      count = count + n
      redis.call('PEXPIRE', st, ceil_ms(win_us))
    end
  else
    local idx = count + n - req - 1            -- 0-based rank of the entry that must leave
    local entry = redis.call('ZRANGE', st, idx, idx, 'WITHSCORES')
    retry = tonumber(entry[2]) + win_us - now
  end
  local reset = 0
  if count > 0 then
    local last = redis.call('ZRANGE', st, -1, -1, 'WITHSCORES')
    reset = tonumber(last[2]) + win_us - now
  end
  return allowed, req, req - count, reset, retry, now
end
