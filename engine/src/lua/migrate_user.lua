-- Migrates one user's legacy grid positions atomically (DESIGN §2): either
-- every key below is written and the legacy key deleted, or nothing is.
--
-- KEYS[1] legacy key      KEYS[2] backup key      KEYS[3] index set
-- KEYS[4] journal outcome hash                    KEYS[5..] position hashes
-- ARGV[1] the legacy value the plan was made from
-- ARGV[2] backup TTL (s)  ARGV[3] migrated_at     ARGV[4] positions skipped as closed
-- then, per position hash: index member, field count n, n field/value pairs.
local CHUNK = 2000  -- unpack() is bounded by Lua's C stack

local legacy = KEYS[1]
if redis.call('TYPE', legacy).ok ~= 'string' then return {'changed'} end
local current = redis.call('GET', legacy)
if current ~= ARGV[1] then return {'changed'} end

for i = 2, #KEYS do
  if i ~= 4 and redis.call('EXISTS', KEYS[i]) == 1 then return {'conflict', KEYS[i]} end
end

local pttl = redis.call('PTTL', legacy)
local members = {}
local a = 5
for k = 5, #KEYS do
  members[#members + 1] = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local first = a
  local last = a + 2 * n - 1
  while first <= last do
    local stop = math.min(first + CHUNK - 1, last)
    redis.call('HSET', KEYS[k], unpack(ARGV, first, stop))
    first = stop + 1
  end
  redis.call('HSET', KEYS[k], 'migrated_at', ARGV[3], 'migrated_from', legacy)
  if pttl > 0 then redis.call('PEXPIRE', KEYS[k], pttl) end
  a = last + 1
end

for first = 1, #members, CHUNK do
  redis.call('SADD', KEYS[3], unpack(members, first, math.min(first + CHUNK - 1, #members)))
end
if #members > 0 and pttl > 0 then redis.call('PEXPIRE', KEYS[3], pttl) end

redis.call('SET', KEYS[2], current, 'EX', ARGV[2])
redis.call('DEL', legacy)

local now = redis.call('TIME')
local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[4], legacy, cjson.encode({
  state = 'migrated', positions = #members, skipped = tonumber(ARGV[4]), pttl = pttl, at = at
}))
return {'migrated', pttl}
