-- acquire: take a lease from every concurrency limit of one key and spend one token from
-- each of its rate limits, all or nothing (assembled like check.lua: after decide.lua).
-- KEYS     as check: hash, log, leases
-- ARGV[1]  now in microseconds, or "" to read the server clock (TIME). Tests only.
-- ARGV[2]  the lease id (made by the caller; unique)
-- ARGV[3]  the lifetime asked, in ms (0: the shortest window_ms of the concurrency limits;
--          never longer than that)
-- ARGV[4]  k, then 4 values per limit, as check's ARGV[6...]
-- Returns the check reply (code -2: the key has no concurrency limit), plus as 8th value
-- the lease's lifetime in ms (0 when none was taken).
local opts = {take = ARGV[2], ttl = tonumber(ARGV[3]) * 1000}
local reply = decide(KEYS[1], KEYS[2], KEYS[3], 1, 'd', now_us(ARGV[1]), given_limits(4), 0,
                     true, opts)
reply[8] = 0
if reply[1] == 1 then
  reply[8] = ceil_ms(opts.expires)
end
return reply
