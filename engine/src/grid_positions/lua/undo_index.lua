if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
for first = 1, #ARGV, 2000 do
  redis.call('SREM', KEYS[1], unpack(ARGV, first, math.min(first + 1999, #ARGV)))
end
return 1
