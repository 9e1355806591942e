-- concurrency: leases held at once. State: KEYS[3], a sorted set shared by every
-- concurrency limit of the key: member = lease id, score = its expiry (us). A lease counts
-- until it is released or expires; expired entries are dropped by the next acquire, and
-- the set's TTL outlives its latest lease, so a crashed holder cannot leak a slot.

-- The leases alive at `now`: {live = count, latest = the latest expiry or nil}.
local function leases_open(leases, now)
  local live = redis.call('ZCOUNT', leases, string.format('(%d', now), '+inf')
  local latest = nil
  if live > 0 then
    latest = tonumber(redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')[2])
  end
  return {live = live, latest = latest}
end

-- (leases, open leases C, take a lease?, its expiry, now, requests) ->
--   allowed, remaining, reset_us, retry_us
-- Not taking (a check, a status, a refund), a concurrency limit never denies: it reports
-- the free slots. Taking (an acquire), it allows while fewer than `requests` are alive;
-- denied, retry is the time until enough of the earliest-expiring leases expire.
local function concurrency(leases, C, take, expires, now, req)
  local live, latest = C.live, C.latest
  local allowed = not take or live < req
  local retry = 0
  if take then
    if allowed then
      live = live + 1
      if not latest or expires > latest then
        latest = expires
      end
    else
      local e = redis.call('ZRANGEBYSCORE', leases, string.format('(%d', now), '+inf',
                           'WITHSCORES', 'LIMIT', live - req, 1)
      retry = tonumber(e[2]) - now
    end
  end
  local reset = 0
  if latest then
    reset = latest - now
  end
  return allowed, req - live, reset, retry
end

-- Store a lease (dropping the expired ones) and keep the set until its latest lease ends.
local function lease_add(leases, C, id, expires, now)
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', string.format('%d', now))
  redis.call('ZADD', leases, string.format('%d', expires), id)
  local latest = expires
  if C.latest and C.latest > latest then
    latest = C.latest
  end
  redis.call('PEXPIRE', leases, ceil_ms(latest - now))
end
