-- Removes one position hash and its index member atomically.
--
-- KEYS[1] position hash   KEYS[2] index set
-- KEYS[3] (dual-read only) legacy key, as in upsert_hash.lua
-- ARGV[1] index member
if KEYS[3] and redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  return 'legacy'
end
local existed = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if existed == 1 then return 'removed' end
return 'absent'
