-- Undoes one order-placed key's Phase 1 step, atomically.
-- KEYS[1] target (orders:...)   KEYS[2] legacy key   KEYS[3] rollback journal hash
-- ARGV[1] 'moved': the run renamed legacy -> target; rename it back (the
--         TTL travels with it).
--         'dropped': the target already held the same hash and the legacy
--         key was deleted; copy the target back to the legacy key.
-- ARGV[2] for 'dropped': the legacy key's absolute expiry in server ms,
--         -1 none, 0 already passed when the rollback was planned
-- ARGV[3] 'force' to write over a legacy key written since the migration
if ARGV[3] ~= 'force' and redis.call('EXISTS', KEYS[2]) == 1 then
  return 'changed'
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_target' end
local state = 'restored'
if ARGV[1] == 'moved' then
  redis.call('RENAME', KEYS[1], KEYS[2])
else
  local expires_at = tonumber(ARGV[2])
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if expires_at == 0 or (expires_at > 0 and expires_at <= now_ms) then
    state = 'expired'
  else
    redis.call('COPY', KEYS[1], KEYS[2], 'REPLACE')
    if expires_at > 0 then
      redis.call('PEXPIREAT', KEYS[2], expires_at)
    else
      redis.call('PERSIST', KEYS[2])
    end
  end
end
redis.call('HSET', KEYS[3], KEYS[2], state)
return state
