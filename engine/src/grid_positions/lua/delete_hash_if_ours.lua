if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local meta = redis.call('HMGET', KEYS[1], 'migrated_from', 'migrated_at')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then return 0 end
return redis.call('DEL', KEYS[1])
