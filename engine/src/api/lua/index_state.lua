-- The dual-read route's view of one index set, in one round trip (single
-- key: the cluster steps, where the legacy key lives in another slot).
--
-- KEYS[1] the user's index set
-- ARGV[1] the prefix of a cluster migration's "migrating" marker
-- Returns {exists, marked}: 1/0 each. `marked`: a member starts with the
-- prefix and holds no ':' (a position member always holds one).
local members = redis.call('SMEMBERS', KEYS[1])
local prefix = ARGV[1]
for _, m in ipairs(members) do
  if string.sub(m, 1, #prefix) == prefix and not string.find(m, ':', 1, true) then
    return {1, 1}
  end
end
if #members > 0 then return {1, 0} end
return {0, 0}
