-- Cluster Phase 1 compare-and-delete (one key): deletes the hash only if
-- it still holds exactly the planned pairs, so a writer's update made
-- since the plan is never deleted.
--
-- KEYS[1] hash   ARGV[1] field count n   ARGV[2..] the n planned pairs
-- Reply 1 deleted | 0 left as it is
local n = tonumber(ARGV[1])
local flat = redis.pcall('HGETALL', KEYS[1])
if n < 1 or flat.err or #flat ~= 2 * n then return 0 end
local have = {}
for i = 1, #flat, 2 do have[flat[i]] = flat[i + 1] end
for i = 2, 1 + 2 * n, 2 do
  if have[ARGV[i]] ~= ARGV[i + 1] then return 0 end
end
return redis.call('DEL', KEYS[1])
