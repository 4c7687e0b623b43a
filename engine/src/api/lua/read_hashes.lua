-- Reads position hashes in one round trip (read-only): one for a get, the
-- long and short hashes of a symbol for its size.
--
-- KEYS[1] index set   KEYS[2 .. n+1] position hashes (n = ARGV[1])
-- KEYS[n+2] (dual-read only) legacy key, read instead while the index is absent
-- ARGV[2..] fields to read (HMGET, nil where absent); none: every field (HGETALL)
-- Reply: {'new', {hash reply, ...}} or {'legacy', value or nil}
local n = tonumber(ARGV[1])
local legacy = KEYS[n + 2]
if legacy and redis.call('EXISTS', KEYS[1]) == 0 then
  return {'legacy', redis.call('GET', legacy)}
end
local out = {}
for i = 2, n + 1 do
  if #ARGV > 1 then
    out[#out + 1] = redis.call('HMGET', KEYS[i], unpack(ARGV, 2))
  else
    out[#out + 1] = redis.call('HGETALL', KEYS[i])
  end
end
return {'new', out}
