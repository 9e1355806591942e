-- decide: one key's decision over all its limits (the contract is in the header above).
local LETTER = {'t', 's', 'f', 'g', 'm', 'c'}
local SIMPLE = {token_bucket, nil, fixed_window, gcra, calendar_month}
local NO_OPTIONS = {}

-- "alg,requests,window_ms,burst;..." -> {alg, requests, window_ms, burst, alg, ...}
-- (a leading "S;" marks shadow mode: decided as usual, reported by the caller)
local function parse_limits(c)
  local out = {}
  for a, r, w, b in string.gmatch(c, '(%d+),(%d+),(%d+),(%d+)') do
    out[#out + 1] = tonumber(a)
    out[#out + 1] = tonumber(r)
    out[#out + 1] = tonumber(w)
    out[#out + 1] = tonumber(b)
  end
  return out
end

local function encode_limits(lim)
  local parts = {}
  for b = 1, #lim, 4 do
    parts[#parts + 1] = string.format('%d,%d,%d,%d', lim[b], lim[b + 1], lim[b + 2], lim[b + 3])
  end
  return table.concat(parts, ';')
end

-- The given limits from ARGV, starting at ARGV[first] = k.
local function given_limits(first)
  local out = {}
  for j = 1, 4 * tonumber(ARGV[first]) do
    out[j] = tonumber(ARGV[first + j])
  end
  return out
end

-- Several keys' limits (check_many, check_all): ARGV[first] = g, then g limit sets each
-- as k and 4 values per limit; then, for every key, its tokens and the (1-based) set it is
-- checked under. Returns the sets and the ARGV index of the first key's tokens.
local function limit_sets(first)
  local sets, at = {}, first + 1
  for s = 1, tonumber(ARGV[first]) do
    local k, lim = tonumber(ARGV[at]), {}
    for j = 1, 4 * k do
      lim[j] = tonumber(ARGV[at + j])
    end
    sets[s] = lim
    at = at + 1 + 4 * k
  end
  return sets, at
end

-- Key i's tokens and limits (see limit_sets).
local function key_item(sets, first, i)
  local at = first + 2 * (i - 1)
  return tonumber(ARGV[at]), sets[tonumber(ARGV[at + 1])]
end

-- The most one check can spend under a limit: burst for buckets and GCRA, else requests;
-- nothing limits the tokens of a check under a concurrency limit (it counts leases).
local function capacity(alg, req, burst)
  if (alg == 1 or alg == 4) and burst > 0 then
    return burst
  elseif alg == 6 then
    return math.huge
  end
  return req
end

-- A key's hash as a table of fields, and the limits it is checked under (its own when it
-- has some, else the given ones) with its own limits' text ("" when the given decide).
local function resolve(hash, given)
  local h = redis.call('HGETALL', hash)
  local f = {}
  for j = 1, #h, 2 do
    f[h[j]] = h[j + 1]
  end
  if f.c then
    return f, parse_limits(f.c), f.c
  end
  return f, given, ''
end

-- Spend n from every limit: write their states, append to the log, set the hash's TTL;
-- store the lease of an acquire.
local function commit(hash, log, f, lim, st, L, n, at, create, inline_ttl, lease)
  if lease then
    lease_add(lease.leases, lease.C, lease.id, lease.expires, lease.now)
  end
  local fields, ttl, longest = {}, 0, 0
  for i = 0, #lim / 4 - 1 do
    if st[i] then
      fields[#fields + 1] = i .. LETTER[lim[4 * i + 1]]
      fields[#fields + 1] = st[i][1]
      ttl = math.max(ttl, st[i][2])
    elseif lim[4 * i + 1] == 2 then
      longest = math.max(longest, lim[4 * i + 3] * 1000)
    end
  end
  if L then
    log_append(log, L, n, at, longest)
    ttl = math.max(ttl, ceil_ms(longest))       -- the hash outlives the log it governs
  end
  if create then
    fields[#fields + 1] = 'c'
    fields[#fields + 1] = encode_limits(lim)
    fields[#fields + 1] = 'i'
    fields[#fields + 1] = '1'
    if f.d then
      redis.call('HDEL', hash, 'd')             -- a tombstone's version stays: any change
    end                                         -- published later supersedes this limit
  end
  if #fields == 0 then
    return
  end
  redis.call('HSET', hash, unpack(fields))
  if f.c and not f.i then
    return                                      -- a configured limit's hash never expires
  elseif create or f.i then
    ttl = math.max(ttl, inline_ttl)
  elseif f.d then
    ttl = math.max(ttl, redis.call('PTTL', hash))
  end
  redis.call('PEXPIRE', hash, ttl)
end

-- The lifetime (us) of a lease taken now: the shortest window of the concurrency limits,
-- or less when the caller asks for less (ttl_us > 0); nil when no limit is a concurrency one.
local function lease_lifetime(lim, ttl_us)
  local life = nil
  for b = 1, #lim, 4 do
    if lim[b] == 6 then
      life = math.min(life or math.huge, lim[b + 2] * 1000)
    end
  end
  if life and ttl_us > 0 and ttl_us < life then
    life = ttl_us
  end
  return life
end

-- Reservations (opts.wait > 0) are exact only where tokens can be spent ahead: every rate
-- limit of the key must be a token bucket or GCRA (concurrency limits do not spend).
local function reservable(lim)
  for b = 1, #lim, 4 do
    if lim[b] == 2 or lim[b] == 3 or lim[b] == 5 then
      return false
    end
  end
  return true
end

-- One key: resolve its limits, decide, and (when `spend` and allowed) spend n.
-- opts (all optional): wait = the longest wait (us) a reservation may take;
-- take = the id of a lease to take (acquire), ttl = its lifetime asked (us, 0: the limit's);
-- opts.expires is set to the lease's lifetime (us) when one is taken.
local function decide(hash, log, leases, n, mode, now, given, inline_ttl, spend, opts)
  opts = opts or NO_OPTIONS
  local f, lim, own = resolve(hash, given)
  local count = #lim / 4
  for i = 0, count - 1 do
    local b = 4 * i
    if n > capacity(lim[b + 1], lim[b + 2], lim[b + 4]) then
      return {-1, i, 0, 0, 0, idiv(now, 1000), own}
    end
  end
  local take, expires = opts.take, nil
  if take then
    local life = lease_lifetime(lim, opts.ttl or 0)
    if not life then
      return {-2, 0, 0, 0, 0, idiv(now, 1000), own}
    end
    expires = now + life
    opts.expires = life
  end
  local wait_us = opts.wait or 0
  if wait_us > 0 and not reservable(lim) then
    wait_us = 0
  end
  local L, C, at = nil, nil, now
  local all, pick, pick_rem, pick_wait = true, 0, math.huge, -1
  local pick_reset, pick_retry, waits = 0, 0, 0
  local st, detail = {}, {}
  for i = 0, count - 1 do
    local b = 4 * i
    local alg, req, win_us, burst = lim[b + 1], lim[b + 2], lim[b + 3] * 1000, lim[b + 4]
    local allowed, remaining, reset, retry, state, ttl
    if alg == 2 then
      if not L then
        L = log_open(log)
        if L.newest and L.newest > now then
          at = L.newest                         -- never let the log run backwards
        end
      end
      allowed, remaining, reset, retry = sliding_window(log, L, n, at, req, win_us)
    elseif alg == 6 then
      C = C or leases_open(leases, now)
      allowed, remaining, reset, retry = concurrency(leases, C, take ~= nil, expires, now, req)
    else
      if burst == 0 then
        burst = req
      end
      allowed, remaining, reset, retry, state, ttl =
        SIMPLE[alg](f[i .. LETTER[alg]], n, now, req, win_us, burst, wait_us)
      st[i] = {state, ttl}
      if allowed and retry > 0 then
        waits = math.max(waits, retry)          -- a reservation: start after the longest
        retry = 0
      end
    end
    if remaining < 0 then
      remaining = 0                             -- a lowered limit: nothing left, not less
    end
    detail[#detail + 1] = remaining
    detail[#detail + 1] = ceil_ms(reset)
    -- The deciding limit: the denial with the longest wait, else the least remaining.
    if not allowed then
      if all or retry > pick_wait then
        pick, pick_rem, pick_wait, pick_reset, pick_retry = i, remaining, retry, reset, retry
      end
      all = false
    elseif all and remaining < pick_rem then
      pick, pick_rem, pick_reset, pick_retry = i, remaining, reset, 0
    end
  end
  if all and spend and (n > 0 or take) then
    local lease = nil
    if take then
      lease = {leases = leases, C = C, id = take, expires = expires, now = now}
    end
    commit(hash, log, f, lim, st, L, n, at, mode == 'i' and not f.c, inline_ttl, lease)
  end
  -- Allowed, the 5th value is the reservation's wait (0: start now).
  if all then
    pick_retry = waits
  end
  local reply = {all and 1 or 0, pick, pick_rem, ceil_ms(pick_reset), ceil_ms(pick_retry),
                 idiv(at, 1000), own}
  if mode == 's' then
    reply[8] = detail                           -- status: every limit's remaining and reset
  end
  return reply
end
