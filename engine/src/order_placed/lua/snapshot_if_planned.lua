-- Cluster Phase 1, step 1 (one key): a copy of the legacy hash, taken only
-- if it still holds exactly what the plan saw, with its remaining TTL and
-- the server's clock, all read in one atomic step.
--
-- KEYS[1] legacy key   ARGV[1] field count n   ARGV[2..] the n planned pairs
-- Reply {'ok', DUMP payload, pttl, now_ms} | {'changed'}
local n = tonumber(ARGV[1])
local flat = redis.pcall('HGETALL', KEYS[1])  -- another type: an error reply
if n < 1 or flat.err or #flat ~= 2 * n then return {'changed'} end
local have = {}
for i = 1, #flat, 2 do have[flat[i]] = flat[i + 1] end
for i = 2, 1 + 2 * n, 2 do
  if have[ARGV[i]] ~= ARGV[i + 1] then return {'changed'} end
end
local now = redis.call('TIME')
local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return {'ok', redis.call('DUMP', KEYS[1]), redis.call('PTTL', KEYS[1]), at}
