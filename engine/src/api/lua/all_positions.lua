-- Reads every position of a user on an exchange in one round trip, from the
-- index and the hashes it names (read-only). The hash keys come from the
-- index, so they cannot be declared: a standalone server only.
--
-- KEYS[1] index set
-- KEYS[2] (dual-read only) legacy key, read instead while the index is absent
-- ARGV[1] position key prefix `positions:{user_id}:{exchange}:`
-- Reply: {'new', JSON text [[member, [field, value, ...]], ...]} or
-- {'legacy', value or nil}. One JSON string, not nested arrays: a client
-- decodes RESP element by element (24 per 12-field hash, 2,400 for 100
-- positions), JSON text in one pass. Members whose hash is gone are left
-- out: they are no position (and an empty Lua table would encode as {}).
if KEYS[2] and redis.call('EXISTS', KEYS[1]) == 0 then
  return {'legacy', redis.call('GET', KEYS[2])}
end
local out = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local hash = redis.call('HGETALL', ARGV[1] .. member)
  if #hash > 0 then
    out[#out + 1] = {member, hash}
  end
end
if #out == 0 then
  return {'new', '[]'}
end
return {'new', cjson.encode(out)}
