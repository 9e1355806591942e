-- finish: acknowledge one config entry and record its outcome, atomically.
-- The three streams share one hash tag, so this runs on one slot of a Redis Cluster.
--
-- KEYS[1]  the config stream; KEYS[2] the stream the outcome goes to (audit or dead letters)
-- ARGV[1]  consumer group; ARGV[2] the config entry id
-- ARGV[3]  MAXLEN for KEYS[2] (approximate trimming)
-- ARGV[4..] field, value pairs of the outcome entry
--
-- Returns the id of the outcome entry, or false when the config entry was no longer
-- pending (another consumer finished it first): every entry is recorded exactly once.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return false
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
