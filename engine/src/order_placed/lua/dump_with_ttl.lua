-- Cluster Phase 1 rollback (one key): the key's serialized value and its
-- absolute expiry (server ms, -1 none), read together.
--
-- KEYS[1] key
-- Reply {payload, expires_at} | nil when the key is absent
local payload = redis.call('DUMP', KEYS[1])
if not payload then return false end
return {payload, redis.call('PEXPIRETIME', KEYS[1])}
