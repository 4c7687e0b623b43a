-- Migrates a group of users' legacy grid positions (DESIGN §2). The call is
-- one script, so each user's migration is atomic: every key below is
-- written and the legacy key deleted, or nothing is. A user whose legacy
-- value is not exactly the one planned from, or one of whose new keys
-- exists, is left as it was.
--
-- KEYS[1] the journal's outcome hash; then the U users' legacy keys, then
-- their backup keys, then their index sets, each in the same order; then
-- every user's position hashes, user after user.
-- ARGV[1] backup TTL (s); ARGV[2] how hashes come: 'restore' (each one DUMP
-- payload) or 'hset' (field/value pairs); then, per user: position count n,
-- positions skipped as closed, SHA-256 of the legacy value (lowercase hex:
-- the journal's digest), the legacy value as the plan read it, and how many
-- ARGV entries its positions take; then, per position: index member, then
-- its payload ('restore') or pair count m and m field/value pairs ('hset'),
-- metadata included.
-- Returns, per user: the legacy PTTL carried over (an integer: migrated),
-- 'changed', {'conflict', key} (nothing written), or {'refused', error}
-- when the server would not RESTORE a payload (that user's hashes are
-- removed again, nothing of it is left; the caller writes it with 'hset').
--
-- Every redis.call costs a native command's work and more, and each
-- argument crosses into Lua and back, so a hash is one RESTORE where the
-- server allows it, and calls that can cover the group are made once for
-- it: one EXISTS over the backups and indexes (a RESTORE finds an existing
-- hash itself, and its user is undone), one DEL of the legacy keys, one HSET
-- of the journal. The value is compared whole: Lua interns strings, so
-- equal bytes are one string, and the comparison costs less than hashing
-- them in the script would.
local CHUNK = 2000  -- unpack() is bounded by Lua's C stack

local function call_chunked(command, first_arg, list, from, to)
  for first = from, to, CHUNK do
    local last = math.min(first + CHUNK - 1, to)
    if first_arg then
      redis.call(command, first_arg, unpack(list, first, last))
    else
      redis.call(command, unpack(list, first, last))
    end
  end
end

local restore = ARGV[2] == 'restore'
local users = {}
local a, k = 3, 0
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  users[#users + 1] = {
    n = n, skipped = tonumber(ARGV[a + 1]), digest = ARGV[a + 2],
    value = ARGV[a + 3], args = a + 5, keys = k,
  }
  a = a + 5 + tonumber(ARGV[a + 4])
  k = k + n
end
local count = #users
local backups = 1 + count       -- KEYS[backups + i]: user i's backup key
local indexes = 1 + 2 * count   -- KEYS[indexes + i]: user i's index set
local hashes = 1 + 3 * count    -- KEYS[hashes + u.keys + j]: its j-th hash

local result = {}
local going = {}
for i = 1, count do
  local current = redis.pcall('GET', KEYS[1 + i])  -- a non-string type is an error reply
  if type(current) == 'string' and current == users[i].value then
    going[#going + 1] = i
  else
    result[i] = 'changed'
  end
end

-- HSET would write into an existing hash, so without RESTORE the hashes
-- are looked for too.
local checked = restore and indexes + count or #KEYS
if #going > 0 then
  local found = 0
  for first = backups + 1, checked, CHUNK do
    found = found + redis.call('EXISTS', unpack(KEYS, first, math.min(first + CHUNK - 1, checked)))
  end
  if found > 0 then
    -- Somebody's new key is there already: find whose, and name it.
    local clear = {}
    for _, i in ipairs(going) do
      local u, hit = users[i], nil
      local mine = {backups + i, indexes + i}
      if not restore then
        for j = 1, u.n do mine[#mine + 1] = hashes + u.keys + j end
      end
      for _, j in ipairs(mine) do
        if redis.call('EXISTS', KEYS[j]) == 1 then hit = KEYS[j]; break end
      end
      if hit then result[i] = {'conflict', hit} else clear[#clear + 1] = i end
    end
    going = clear
  end
end

local now = redis.call('TIME')
local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local deleted, journal = {}, {}
for _, i in ipairs(going) do
  local u = users[i]
  local legacy = KEYS[1 + i]
  local backup = KEYS[backups + i]
  local index = KEYS[indexes + i]
  local pttl = redis.call('PTTL', legacy)
  local members = {}
  local p = u.args
  local undone
  for j = 1, u.n do
    local hash = KEYS[hashes + u.keys + j]
    members[j] = ARGV[p]
    if restore then
      local done = redis.pcall('RESTORE', hash, math.max(pttl, 0), ARGV[p + 1])
      if type(done) == 'table' and done.err then
        for undo = 1, j - 1 do redis.call('DEL', KEYS[hashes + u.keys + undo]) end
        if string.sub(done.err, 1, 7) == 'BUSYKEY' then
          undone = {'conflict', hash}
        else
          undone = {'refused', done.err}
        end
        break
      end
      p = p + 2
    else
      local last = p + 1 + 2 * tonumber(ARGV[p + 1])
      call_chunked('HSET', hash, ARGV, p + 2, last)
      if pttl > 0 then redis.call('PEXPIRE', hash, pttl) end
      p = last + 1
    end
  end
  if undone then
    result[i] = undone
  else
    if u.n > 0 then
      call_chunked('SADD', index, members, 1, u.n)
      if pttl > 0 then redis.call('PEXPIRE', index, pttl) end
    end
    redis.call('SET', backup, u.value, 'EX', ARGV[1])
    deleted[#deleted + 1] = legacy
    journal[#journal + 1] = legacy
    journal[#journal + 1] = string.format(
      '{"state":"migrated","positions":%d,"skipped":%d,"pttl":%d,"at":%d,"digest":"%s"}',
      u.n, u.skipped, pttl, at, u.digest)
    result[i] = pttl
  end
end
if #deleted > 0 then
  call_chunked('DEL', nil, deleted, 1, #deleted)
  call_chunked('HSET', KEYS[1], journal, 1, #journal)
end
return result
