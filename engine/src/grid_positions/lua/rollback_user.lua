-- Rolls one user back (DESIGN §2): restores the legacy key from its backup
-- and deletes exactly the keys the run created, atomically.
--
-- KEYS[1] legacy key   KEYS[2] backup key   KEYS[3] index set
-- KEYS[4] rollback journal hash              KEYS[5..] position hashes
-- ARGV[1] the legacy key's expiry, Unix ms: > 0 restore with it, -1 none,
--         0 the legacy key would have expired by now: restore nothing
-- ARGV[2] "force" to restore over a legacy key written since the migration
-- ARGV[3..] the index members the run added
if ARGV[2] ~= 'force' and redis.call('EXISTS', KEYS[1]) == 1 then
  return {'changed', KEYS[1]}
end
local backup = redis.call('GET', KEYS[2])
if not backup then return {'no_backup', KEYS[2]} end

local at = tonumber(ARGV[1])
local state = 'restored'
if at > 0 then
  redis.call('SET', KEYS[1], backup, 'PXAT', at)
elseif at < 0 then
  redis.call('SET', KEYS[1], backup)
else
  state = 'expired'
end

local had_index = redis.call('EXISTS', KEYS[3])
local deleted = 0
for i = 5, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
end
for first = 3, #ARGV, 2000 do
  redis.call('SREM', KEYS[3], unpack(ARGV, first, math.min(first + 1999, #ARGV)))
end
if had_index == 1 and redis.call('EXISTS', KEYS[3]) == 0 then deleted = deleted + 1 end

redis.call('HSET', KEYS[4], KEYS[1], state)
return {state, deleted}
