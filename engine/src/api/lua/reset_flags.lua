-- Resets every level of one order-placed hash to 0 in one atomic step:
-- the levels and the key's TTL stay, only the flags clear. Absent key:
-- nothing to reset.
--
-- KEYS[1] order-placed hash
-- Reply: the number of levels reset
local CHUNK = 1000  -- unpack() is bounded by Lua's C stack
local levels = redis.call('HKEYS', KEYS[1])
for first = 1, #levels, CHUNK do
  local args = {}
  for i = first, math.min(first + CHUNK - 1, #levels) do
    args[#args + 1] = levels[i]
    args[#args + 1] = '0'
  end
  redis.call('HSET', KEYS[1], unpack(args))
end
return #levels
