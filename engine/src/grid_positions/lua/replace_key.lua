redis.call('DEL', KEYS[1])
for first = 3, #ARGV, 2000 do
  redis.call(ARGV[2], KEYS[1], unpack(ARGV, first, math.min(first + 1999, #ARGV)))
end
local at = tonumber(ARGV[1])
if at > 0 then redis.call('PEXPIREAT', KEYS[1], at) end
return 1
