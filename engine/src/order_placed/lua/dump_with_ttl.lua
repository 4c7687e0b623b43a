-- Cluster Phase 1 rollback (one key): the key's serialized value and its
-- remaining TTL, read together.
--
-- KEYS[1] key
-- Reply {payload, pttl} | nil when the key is absent
local payload = redis.call('DUMP', KEYS[1])
if not payload then return false end
return {payload, redis.call('PTTL', KEYS[1])}
