-- Compare-and-set of one legacy positions value: the write happens only if
-- the key still holds what the caller read, so a concurrent writer never
-- loses an update (the caller reads, edits and tries again).
--
-- KEYS[1] legacy key `{exchange}:positions:{user_id}`
-- KEYS[2] (dual-read only) the user's index set: once it exists the user
--         reads from the new layout, and the legacy key is not written
-- ARGV[1] '1' when the key was read as present, '0' when absent
-- ARGV[2] the value read   ARGV[3] the value to write (TTL kept)
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 'moved' end
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 'changed' end
elseif current then
  return 'changed'
end
redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
return 'ok'
