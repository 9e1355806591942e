-- decide: one key's decision. cfg_key/st_key: the key's limit hash and state; n tokens;
-- mode "d"/"i"/"p" and the fallback limit as in the header; now in microseconds.
-- Returns the reply array described in the header.
local ALGORITHMS = {token_bucket, sliding_window, fixed_window, gcra}
local NAMES = {token_bucket = 1, sliding_window = 2, fixed_window = 3, gcra = 4}

local function decide(cfg_key, st_key, n, mode, now, f_alg, f_req, f_win, f_burst)
local cfg = redis.call('HMGET', cfg_key, 'alg', 'req', 'win', 'burst', 'del')
local alg, req, win, burst
local create = false
if cfg[1] and cfg[5] ~= '1' then
  alg, req, win, burst = NAMES[cfg[1]], tonumber(cfg[2]), tonumber(cfg[3]), tonumber(cfg[4]) or 0
elseif mode == 'p' then
  return {-2, 0, 0, 0, 0, 0, 0, 0, 0, 0}
else
  alg, req, win, burst = f_alg, f_req, f_win, f_burst
  create = mode == 'i'
  if create and n == 0 then
    -- A peek changes nothing, so it creates nothing: it answers as the inline limit
    -- would. A default limit's bucket does not count under another algorithm: fresh.
    create = false
    if alg ~= 1 and redis.call('EXISTS', st_key) == 1 then
      local capacity = req
      if alg == 4 then
        capacity = burst ~= 0 and burst or req
      end
      local t = now
      return {1, capacity, capacity, 0, 0, math.floor(t / 1000), alg, req, win,
              (alg == 4) and capacity or 0}
    end
  end
end

local capacity = req
if alg == 1 or alg == 4 then
  if burst == 0 then
    burst = req
  end
  capacity = burst
else
  burst = 0                                    -- windows have no burst
end
if n > capacity then
  return {-1, capacity, 0, 0, 0, 0, alg, req, win, burst}
end

if create then
  -- An inline limit in a check creates the key's limit when it has none. It never
  -- replaces a stored limit and keeps a tombstone's version, so any change published on
  -- the config stream later still supersedes it.
  local names = {'token_bucket', 'sliding_window', 'fixed_window', 'gcra'}
  local stored_burst = burst
  if burst == 0 then
    stored_burst = ''
  end
  redis.call('HSET', cfg_key, 'alg', names[alg], 'req', req, 'win', win, 'burst', stored_burst)
  redis.call('HDEL', cfg_key, 'del')
  redis.call('PERSIST', cfg_key)
  if alg ~= 1 then
    redis.call('DEL', st_key)                 -- the default limit's bucket does not carry over
  end
end

local allowed, limit, remaining, reset, retry, now =
  ALGORITHMS[alg](st_key, n, now, req, win * 1000, burst)
local code = 0
if allowed then
  code = 1
end
if remaining < 0 then
  remaining = 0
end
return {code, limit, remaining, ceil_ms(reset), ceil_ms(retry), math.floor(now / 1000),
        alg, req, win, burst}
end
