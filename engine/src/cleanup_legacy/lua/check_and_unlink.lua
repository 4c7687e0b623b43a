local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return 0 end
if ARGV[1] ~= 'any' and t ~= ARGV[1] then return t end
redis.call('UNLINK', KEYS[1])
return 1
