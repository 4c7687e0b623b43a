-- Moves one legacy order-placed hash to its `orders:` key, or drops it when
-- the target already holds the same hash (DESIGN §2 Phase 1), atomically:
-- the runner's plan is re-checked and carried out in one step, so a writer
-- never loses an update and RENAME (which overwrites) never meets a target.
--
-- KEYS[1] legacy key   KEYS[2] target key   KEYS[3] journal outcome hash
-- ARGV[1] 'move' | 'drop'   ARGV[2] digest of the legacy hash (journal only)
-- ARGV[3] field count n     ARGV[4..] the n field/value pairs the plan saw
--
-- Replies {'moved', pttl} | {'dropped', pttl} | {'changed'}.

local n = tonumber(ARGV[3])

-- True when `key` is a hash holding exactly the planned pairs.
local function holds_planned(key)
  local flat = redis.pcall('HGETALL', key)  -- another type: an error reply
  if flat.err or #flat ~= 2 * n then return false end
  local have = {}
  for i = 1, #flat, 2 do have[flat[i]] = flat[i + 1] end
  for i = 4, 3 + 2 * n, 2 do
    if have[ARGV[i]] ~= ARGV[i + 1] then return false end
  end
  return true
end

local legacy, target = KEYS[1], KEYS[2]
if n < 1 or not holds_planned(legacy) then return {'changed'} end

local pttl = redis.call('PTTL', legacy)
local state
if ARGV[1] == 'move' then
  if redis.call('EXISTS', target) == 1 then return {'changed'} end
  -- RENAME keeps type, every field and the absolute expiry; the target was
  -- just seen absent in this same script, so nothing is overwritten.
  redis.call('RENAME', legacy, target)
  state = 'moved'
elseif ARGV[1] == 'drop' then
  if not holds_planned(target) then return {'changed'} end
  redis.call('DEL', legacy)
  state = 'dropped_equal'
else
  return redis.error_reply('move_order_placed: unknown action ' .. tostring(ARGV[1]))
end

local now = redis.call('TIME')
local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[3], legacy, string.format(
  '{"state":"%s","fields":%d,"digest":"%s","pttl":%d,"at":%d}',
  state, n, ARGV[2], pttl, at))
if state == 'moved' then return {'moved', pttl} end
return {'dropped', pttl}
