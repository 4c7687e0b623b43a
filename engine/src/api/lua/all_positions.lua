-- Reads every position of a user on an exchange in one round trip, from the
-- index and the hashes it names (read-only). The hash keys come from the
-- index, so they cannot be declared: a standalone server only.
--
-- KEYS[1] index set
-- KEYS[2] (dual-read only) legacy key, read instead while the index is absent
-- ARGV[1] position key prefix `positions:{user_id}:{exchange}:`
-- Reply: {'new', {{member, {field, value, ...}}, ...}} or {'legacy', value or nil}
if KEYS[2] and redis.call('EXISTS', KEYS[1]) == 0 then
  return {'legacy', redis.call('GET', KEYS[2])}
end
local out = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = {member, redis.call('HGETALL', ARGV[1] .. member)}
end
return {'new', out}
