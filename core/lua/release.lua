-- release: give back one lease of a key's concurrency limits.
-- KEYS[1]  the key's leases, <prefix>:{<key>}:c (sorted set: lease id -> expiry in us)
-- ARGV[1]  now in microseconds, or "" to read the server clock (TIME). Tests only.
-- ARGV[2]  the lease id
-- Returns 1 released, 0 unknown or already expired (an expired lease is dropped too).
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local expires = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not expires then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[2])
if tonumber(expires) <= now then
  return 0
end
return 1
