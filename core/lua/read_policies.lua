-- read_policies: every policy and the version they are at, in one atomic read.
-- KEYS[1]  {<prefix>}:policies      KEYS[2]  {<prefix>}:policy-version
-- Returns {version (0 when never set), name_1, json_1, name_2, json_2, ...}
local out = {tonumber(redis.call('GET', KEYS[2]) or '0')}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do
  out[i + 1] = all[i]
end
return out
