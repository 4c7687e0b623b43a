-- Writes one position hash and its index member atomically. The hash is
-- replaced whole, as the legacy layout replaces the object; it keeps its
-- TTL, and a new hash takes its index's (a user's positions share one
-- lifetime, as they did in one legacy value).
--
-- KEYS[1] position hash   KEYS[2] index set
-- KEYS[3] (dual-read only) legacy key: while it exists and the index does
--         not, the user is not migrated and the write belongs there
-- ARGV[1] index member   ARGV[2..] field/value pairs
local CHUNK = 2000  -- unpack() is bounded by Lua's C stack; even, so pairs stay whole

if KEYS[3] and redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  return 'legacy'
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then pttl = redis.call('PTTL', KEYS[2]) end
redis.call('DEL', KEYS[1])
for first = 2, #ARGV, CHUNK do
  redis.call('HSET', KEYS[1], unpack(ARGV, first, math.min(first + CHUNK - 1, #ARGV)))
end
if pttl > 0 then redis.call('PEXPIRE', KEYS[1], pttl) end
redis.call('SADD', KEYS[2], ARGV[1])
return 'ok'
