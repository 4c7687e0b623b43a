local now = redis.call('TIME')
local current = redis.pcall('GET', KEYS[1])
if current == false then return {'gone', now[1], now[2]} end
if type(current) ~= 'string' or current ~= ARGV[1] then return {'changed'} end
local pttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {'deleted', pttl, now[1], now[2]}
