-- Replaces one position hash whole, keeping its TTL; a new hash takes the
-- TTL the caller read from the index (single key: the cluster variant of
-- upsert_hash.lua, which writes the index in a step of its own).
--
-- KEYS[1] position hash
-- ARGV[1] PTTL of the index set (ms; -1 none, -2 absent)   ARGV[2..] field/value pairs
local CHUNK = 2000  -- unpack() is bounded by Lua's C stack; even, so pairs stay whole

local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then pttl = tonumber(ARGV[1]) end
redis.call('DEL', KEYS[1])
for first = 2, #ARGV, CHUNK do
  redis.call('HSET', KEYS[1], unpack(ARGV, first, math.min(first + CHUNK - 1, #ARGV)))
end
if pttl > 0 then redis.call('PEXPIRE', KEYS[1], pttl) end
return 'ok'
