"""The reliable queue's Lua scripts (``queue`` holds the key layout and the guarantees they
keep). Each takes every key it touches in KEYS, and the comment above it says which."""

from __future__ import annotations

# Helpers shared by the scripts that rewrite a header. ``split`` returns nil for bytes that
# are not an item; such bytes are wrapped into a fresh header so they can still be dead-lettered
# (and inspected) instead of being lost or crashing the script.
LUA_HELPERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function split(raw)
  local nl = string.find(raw, '\\n', 1, true)
  if not nl then return nil, nil end
  local ok, header = pcall(cjson.decode, string.sub(raw, 1, nl - 1))
  if not ok or type(header) ~= 'table' then return nil, nil end
  return header, string.sub(raw, nl + 1)
end
local function wrap_corrupt(raw)
  return {v = 1, corrupt = true, attempts = 0}, raw
end
local function join(header, payload)
  return cjson.encode(header) .. '\\n' .. payload
end
-- One failed delivery: returns the rewritten item and whether it is now dead.
local function bump(raw, reason, max_attempts, queue, now)
  local header, payload = split(raw)
  if not header then header, payload = wrap_corrupt(raw); reason = 'corrupt item: ' .. reason end
  header.attempts = (tonumber(header.attempts) or 0) + 1
  if header.attempts >= max_attempts or header.corrupt then
    header.dead = {reason = reason, at = now, queue = queue}
    return join(header, payload), true
  end
  return join(header, payload), false
end
"""

# KEYS: queue. ARGV: high-water mark (0 = none), items... → new length, or -1 when full.
PUSH = """
local hwm = tonumber(ARGV[1])
if hwm > 0 and redis.call('LLEN', KEYS[1]) >= hwm then return -1 end
local length = redis.call('LPUSH', KEYS[1], unpack(ARGV, 2))
if KEYS[2] then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return length
"""

# KEYS: queue[, doorbell], claims... ARGV: high-water mark (0 = none), claim TTL seconds,
# 1 when KEYS[2] is the doorbell else 0, then per item: its claim's value ('' = no claim; the
# claims in KEYS in the same order) and the item → {new length, or -1 when full; then per
# item '' (pushed) or the value its claim already held (a duplicate, not pushed)}.
# Nothing is written before the checks that could refuse the push (the queue's type, the
# high-water mark), so a refused push leaves no claim; when full, claims are only read,
# so a duplicate of a message queued earlier is still told apart from a new one. A Redis
# above maxmemory fails the first SET, before anything was written, and lets a script that
# has written finish. Items claiming one key in one call: the first is pushed.
PUSH_CLAIMED = """
local hwm, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local doorbell = ARGV[3] == '1'
local k = doorbell and 3 or 2
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the queue is not a list')
end
local full = hwm > 0 and redis.call('LLEN', KEYS[1]) >= hwm
local out, fresh = {0}, {}
for i = 4, #ARGV, 2 do
  local earlier = false
  if ARGV[i] ~= '' then
    local key = KEYS[k]
    k = k + 1
    if full or not redis.call('SET', key, ARGV[i], 'NX', 'EX', ttl) then
      earlier = redis.pcall('GET', key)
      -- Not a string (someone else's key): still a duplicate, answered as a default one.
      if type(earlier) == 'table' then earlier = '?'
      elseif earlier and not full then
        -- Rewrite it as it is: a write after the first submission's, so that a WAIT that
        -- follows this call (a replica ack) also covers the message the claim stands for.
        redis.call('SET', key, earlier, 'KEEPTTL')
      end
    end
  end
  if earlier then
    out[#out + 1] = earlier
  else
    out[#out + 1] = ''
    fresh[#fresh + 1] = ARGV[i + 1]
  end
end
if full then
  out[1] = -1
elseif #fresh > 0 then
  out[1] = redis.call('LPUSH', KEYS[1], unpack(fresh))
  if doorbell then
    redis.call('LPUSH', KEYS[2], '1')
    redis.call('LTRIM', KEYS[2], 0, 0)
  end
else
  out[1] = redis.call('LLEN', KEYS[1])
end
return out
"""

# KEYS: queue, processing, holders. ARGV: most items, consumer id → the items moved, oldest
# first. One call that stops at an empty queue, where a pipeline of LMOVEs always sent (and
# parsed) all of them: taking one item with room for 50 cost half a millisecond of client CPU.
# A take that moved something registers the processing list (score 0: taking) in the same step.
TAKE_MANY = """
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not raw then break end
  out[#out + 1] = raw
end
if #out > 0 then redis.call('ZADD', KEYS[3], 0, ARGV[2]) end
return out
"""

# KEYS: processing. ARGV: items → how many were still held.
ACK_MANY = """
local n = 0
for _, raw in ipairs(ARGV) do n = n + redis.call('LREM', KEYS[1], 1, raw) end
return n
"""

# KEYS: processing, target. ARGV: pairs of (held item, item for target) → number handed over.
HAND_OVER = """
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
"""

# KEYS: processing, target. ARGV: per held item: the item, n, then its n new items (n ≥ 1)
# → {held items handed over, new items pushed}. One held item becomes several (the
# Transformer's one copy per recipient): it is removed once and all its new items are pushed,
# or (not held any more) none. The target's type is checked first, so the LPUSHes that
# follow the LREM cannot fail (a script is not rolled back), and once it has written Redis
# lets it finish even past maxmemory. LPUSH takes at most 500 at a time (Lua's unpack).
HAND_OVER_SPLIT = """
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'list' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the target queue is not a list')
end
local moved, pushed, i = 0, 0, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  local last = i + 1 + n
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    for first = i + 2, last, 500 do
      redis.call('LPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 499, last)))
    end
    moved, pushed = moved + 1, pushed + n
  end
  i = last + 1
end
return {moved, pushed}
"""

# KEYS: processing, queue, dead. ARGV: item, reason, max attempts, queue name
# → 'gone' (not held any more), 'requeued' or 'dead'.
RETRY = (
    LUA_HELPERS
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 'gone' end
local new, dead = bump(ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], now_ms())
if dead then
  redis.call('LPUSH', KEYS[3], new)
  return 'dead'
end
-- Back of the line: a failing item must not block the ones behind it.
redis.call('LPUSH', KEYS[2], new)
return 'requeued'
"""
)

# KEYS: processing, dead[, event queue]. ARGV: item, reason, queue name[, event item]
# → 1 if dead-lettered, 0 if not held. The optional event (an `error` event saying why) is
# pushed in the same script, so there is never a dead letter without its event or the reverse.
DEAD_LETTER = (
    LUA_HELPERS
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local header, payload = split(ARGV[1])
if not header then header, payload = wrap_corrupt(ARGV[1]) end
header.dead = {reason = ARGV[2], at = now_ms(), queue = ARGV[3]}
redis.call('LPUSH', KEYS[2], join(header, payload))
if KEYS[3] then redis.call('LPUSH', KEYS[3], ARGV[4]) end
return 1
"""
)

# KEYS: consumers. ARGV: consumer id → server time in ms.
HEARTBEAT = (
    LUA_HELPERS
    + """
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
return now
"""
)

# Return what a dead consumer held: each item counts one failed attempt and goes back to the
# right end of the queue (served next), or to the dead-letter list once out of attempts.
LUA_RETURN_HELD = """
local function return_held(queue, dead_key, pkey, consumer, max_attempts, queue_name, now)
  local held = redis.call('LRANGE', pkey, 0, -1)
  local returned, dead = 0, 0
  -- held[1] is the newest; pushing newest first leaves the oldest at the right end.
  for _, raw in ipairs(held) do
    local new, is_dead = bump(raw, 'consumer ' .. consumer .. ' stopped heartbeating',
                              max_attempts, queue_name, now)
    if is_dead then
      redis.call('LPUSH', dead_key, new)
      dead = dead + 1
    else
      redis.call('RPUSH', queue, new)
      returned = returned + 1
    end
  end
  redis.call('DEL', pkey)
  return returned, dead
end
"""

# KEYS: consumers, holders. ARGV: heartbeat timeout ms → the consumers the reaper must look
# at: registered ones whose heartbeat expired, and unregistered holders that are either not
# marked yet (score 0) or marked longer than the timeout ago. Reads only: the reaper passes
# their processing lists to REAP, so no script derives a key name. O(consumers).
REAP_CANDIDATES = (
    LUA_HELPERS
    + """
local now = now_ms()
local limit = now - tonumber(ARGV[1])
local out = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', limit)
local holders = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #holders, 2 do
  local mark = tonumber(holders[i + 1])
  if (mark == 0 or mark <= limit) and not redis.call('ZSCORE', KEYS[1], holders[i]) then
    out[#out + 1] = holders[i]
  end
end
return out
"""
)

# KEYS: queue, consumers, dead, holders, processing lists... ARGV: timeout ms, max attempts,
# queue name, consumer ids... (one per processing list, same order)
# → {items returned, items dead-lettered, consumers reaped}. Every condition is checked again
# here, atomically: the candidates were read a round trip ago.
REAP = (
    LUA_HELPERS
    + LUA_RETURN_HELD
    + """
local now = now_ms()
local limit = now - tonumber(ARGV[1])
local max_attempts = tonumber(ARGV[2])
local returned, dead, reaped = 0, 0, 0
for i = 4, #ARGV do
  local consumer, pkey = ARGV[i], KEYS[i + 1]
  local beat = redis.call('ZSCORE', KEYS[2], consumer)
  local mark = redis.call('ZSCORE', KEYS[4], consumer)
  if beat then
    if tonumber(beat) <= limit then
      -- Presumed dead: its items go back now; it stays a holder (marked) for one more
      -- timeout, in case it is alive and takes again before it registers.
      local r, d = return_held(KEYS[1], KEYS[3], pkey, consumer, max_attempts, ARGV[3], now)
      returned, dead, reaped = returned + r, dead + d, reaped + 1
      redis.call('ZREM', KEYS[2], consumer)
      redis.call('ZADD', KEYS[4], now, consumer)
    end
  elseif mark and tonumber(mark) == 0 then
    redis.call('ZADD', KEYS[4], now, consumer)
  elseif mark and tonumber(mark) <= limit then
    -- Unregistered for a whole timeout, yet it took after it was reaped (or it is a list
    -- adopted from an older version): return what it holds and forget it. No take of it can
    -- still be under way: each take sets the score to 0 first, and a blocking take lasts
    -- at most half a timeout.
    local r, d = return_held(KEYS[1], KEYS[3], pkey, consumer, max_attempts, ARGV[3], now)
    returned, dead = returned + r, dead + d
    if r + d > 0 then reaped = reaped + 1 end
    redis.call('ZREM', KEYS[4], consumer)
  end
end
return {returned, dead, reaped}
"""
)

# KEYS: processing, queue. ARGV: items → how many were returned. Items a live consumer has in
# its list but does not know it holds (a BLMOVE whose reply was lost); not their fault, so no
# attempt is counted.
RETURN_STRAYS = """
local n = 0
for _, raw in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, raw) == 1 then
    redis.call('RPUSH', KEYS[2], raw)
    n = n + 1
  end
end
return n
"""

# KEYS: processing, queue, consumers, holders. ARGV: consumer id → items returned. A graceful
# stop: the items were not at fault, so no attempt is counted; they go to the front of the
# line. The holder entry is marked, not removed: should a take of this consumer still be under
# way, the reaper returns what it moves instead of it sitting in an unknown list.
RELEASE = (
    LUA_HELPERS
    + """
local held = redis.call('LRANGE', KEYS[1], 0, -1)
for _, raw in ipairs(held) do redis.call('RPUSH', KEYS[2], raw) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], now_ms(), ARGV[1])
return #held
"""
)

# KEYS: dead, queue. ARGV: count (0 = all) → items requeued. Oldest dead letters first;
# the attempt counter starts again from zero.
REQUEUE_DEAD = (
    LUA_HELPERS
    + """
local n = tonumber(ARGV[1])
if n <= 0 then n = redis.call('LLEN', KEYS[1]) end
local moved = 0
for i = 1, n do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  local header, payload = split(raw)
  if header and header.corrupt then
    redis.call('LPUSH', KEYS[2], payload)
  elseif header then
    header.dead = nil
    header.attempts = 0
    redis.call('LPUSH', KEYS[2], join(header, payload))
  else
    redis.call('LPUSH', KEYS[2], raw)
  end
  moved = moved + 1
end
return moved
"""
)

# KEYS: legacy list, new list. ARGV: most items → items moved. Newest first from the left
# of the old list to the right of the new one: the old items (older than anything in the
# new list) end up where they are served, or listed, first, in their order.
MOVE_LEGACY = """
local n = 0
for _ = 1, tonumber(ARGV[1]) do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then break end
  n = n + 1
end
return n
"""
