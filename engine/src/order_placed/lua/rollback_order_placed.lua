-- Undoes one order-placed key's Phase 1 step, atomically.
-- KEYS[1] target (orders:...)   KEYS[2] legacy key   KEYS[3] rollback journal hash
-- ARGV[1] 'moved': the run renamed legacy -> target; rename it back (the
--         TTL travels with it).
--         'dropped': the target already held the same hash and the legacy
--         key was deleted; copy the target back to the legacy key.
-- ARGV[2] for 'dropped': remaining legacy TTL in ms (> 0), -1 none, 0 expired
-- ARGV[3] 'force' to write over a legacy key written since the migration
if ARGV[3] ~= 'force' and redis.call('EXISTS', KEYS[2]) == 1 then
  return 'changed'
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_target' end
local state = 'restored'
if ARGV[1] == 'moved' then
  redis.call('RENAME', KEYS[1], KEYS[2])
else
  local pttl = tonumber(ARGV[2])
  if pttl == 0 then
    state = 'expired'
  else
    redis.call('COPY', KEYS[1], KEYS[2], 'REPLACE')
    if pttl > 0 then
      redis.call('PEXPIRE', KEYS[2], pttl)
    else
      redis.call('PERSIST', KEYS[2])
    end
  end
end
redis.call('HSET', KEYS[3], KEYS[2], state)
return state
