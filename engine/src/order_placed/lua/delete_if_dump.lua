-- Cluster Phase 1 rollback compare-and-delete (one key): deletes the key
-- only if its serialized value is still the one the rollback copied.
--
-- KEYS[1] key   ARGV[1] DUMP payload read before the copy
-- Reply 1 deleted | 0 left as it is
if redis.call('DUMP', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
