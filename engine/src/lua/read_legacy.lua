-- Reads the type and, for strings, the value of every key in KEYS, in one
-- round trip. A non-string legacy key must be reported, not read with GET.
local out = {}
for i, key in ipairs(KEYS) do
  local t = redis.call('TYPE', key).ok
  if t == 'string' then
    out[i] = {t, redis.call('GET', key)}
  else
    out[i] = {t}
  end
end
return out
