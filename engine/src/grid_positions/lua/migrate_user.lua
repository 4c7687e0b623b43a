-- Migrates one user's legacy grid positions atomically (DESIGN §2): either
-- every key below is written and the legacy key deleted, or nothing is.
--
-- KEYS[1] legacy key   KEYS[2] journal outcome hash   KEYS[3] backup key
-- KEYS[4] index set    KEYS[5..] position hashes
-- ARGV[1] the legacy value the plan was made from
-- ARGV[2] backup TTL (s)   ARGV[3] positions skipped as closed
-- ARGV[4] SHA-256 of ARGV[1], lowercase hex (the journal's digest)
-- then, per position hash: index member, field count n, n field/value
-- pairs (metadata included).
--
-- Every redis.call costs; this script makes as few as the state allows.
local CHUNK = 2000  -- unpack() is bounded by Lua's C stack

local legacy = KEYS[1]
local current = redis.pcall('GET', legacy)  -- a non-string type is an error reply
if type(current) ~= 'string' or current ~= ARGV[1] then return {'changed'} end

for first = 3, #KEYS, CHUNK do
  local last = math.min(first + CHUNK - 1, #KEYS)
  if redis.call('EXISTS', unpack(KEYS, first, last)) > 0 then
    for i = first, last do
      if redis.call('EXISTS', KEYS[i]) == 1 then return {'conflict', KEYS[i]} end
    end
  end
end

local pttl = redis.call('PTTL', legacy)
local members = {}
local a = 5
for k = 5, #KEYS do
  members[#members + 1] = ARGV[a]
  local first = a + 2
  local last = first + 2 * tonumber(ARGV[a + 1]) - 1
  while first <= last do
    local stop = math.min(first + CHUNK - 1, last)
    redis.call('HSET', KEYS[k], unpack(ARGV, first, stop))
    first = stop + 1
  end
  if pttl > 0 then redis.call('PEXPIRE', KEYS[k], pttl) end
  a = last + 1
end

for first = 1, #members, CHUNK do
  redis.call('SADD', KEYS[4], unpack(members, first, math.min(first + CHUNK - 1, #members)))
end
if #members > 0 and pttl > 0 then redis.call('PEXPIRE', KEYS[4], pttl) end

redis.call('SET', KEYS[3], current, 'EX', ARGV[2])
redis.call('DEL', legacy)

local now = redis.call('TIME')
local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[2], legacy, string.format(
  '{"state":"migrated","positions":%d,"skipped":%d,"pttl":%d,"at":%d,"digest":"%s"}',
  #members, tonumber(ARGV[3]), pttl, at, ARGV[4]))
return {'migrated', pttl}
