"""The Lua scripts behind ``state.State`` (the key layout is in ``state``'s docstring). Each
takes every key it touches in KEYS, and the comment above it says which, in order."""

from __future__ import annotations

from manycore_common import trace
from manycore_common.suppressionstore import OPS_LUA

# KEYS: item key, msg key (or a dummy when no message), event queue, claim, processing list,
# suppression size, trace key, the ops' keys. ARGV: state ttl, item marker, msg fields JSON
# ('' for none), claimer id, replay window, the queue item, the trace record's three
# (trace.script_args), n, n events, suppression ops (the recipients our Postfix refused as
# unknown) → 1, or 0 when the item was already recorded (nothing is written then, no trace
# record either). Acks the item (LREM from our processing list) and drops the claim if ours,
# always.
RECORD = (
    OPS_LUA
    + trace.LUA
    + """
if redis.call('GET', KEYS[4]) == ARGV[4] then redis.call('DEL', KEYS[4]) end
local acked = redis.call('LREM', KEYS[5], 1, ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
-- Our copy gone with this ack: no other exists, the marker is only for replays. Not ours any
-- more (reaped): the copy elsewhere must find the marker for as long as it may exist.
local marker_ttl = ttl
if acked == 1 then marker_ttl = tonumber(ARGV[5]) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', marker_ttl)
if ARGV[3] ~= '' then
  local fields = cjson.decode(ARGV[3])
  for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
  redis.call('EXPIRE', KEYS[2], ttl)
end
local n = tonumber(ARGV[10])
for i = 11, 10 + n do redis.call('LPUSH', KEYS[3], ARGV[i]) end
for i = 11 + n, #ARGV, 7 do supp_op(KEYS[6], i) end
trace_push(KEYS[7], 7)
return 1
"""
)

# KEYS: item key, claim. ARGV: claimer id, claim ms → 'done' (already in a Postfix), 'mine'
# (claimed, or re-claimed with a fresh expiry), else the id of the consumer that holds it.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
return 'mine'
"""

# KEYS: claim. ARGV: claimer id → 1 if it was ours and is gone.
UNCLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: msg key, event queue, suppression size, trace key, the ops' keys. ARGV: recipient
# key, event item, done ttl, the trace record's three (trace.script_args), then suppression
# ops (suppressionstore.OPS_LUA) → 1 pushed, 0 already final, -1 no such message. The
# suppression entry a bounce calls for, and its trace record, are written by the script that
# pushes the bounce: never one without the other.
FINAL = (
    OPS_LUA
    + trace.LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[1], 'f:' .. ARGV[1], '1') == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
if redis.call('HINCRBY', KEYS[1], 'pending', -1) <= 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
for i = 7, #ARGV, 7 do supp_op(KEYS[3], i) end
trace_push(KEYS[4], 4)
return 1
"""
)

# KEYS: msg key, event queue, trace key. ARGV: recipient key, deferral JSON, dedupe suffix
# ('' = no event), event item, the trace record's three (trace.script_args) → 2 recorded and
# event pushed, 1 recorded, 0 already final, -1 no such message (the trace record is written
# with 2 and 1).
DEFERRAL = (
    trace.LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'f:' .. ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
trace_push(KEYS[3], 5)
if ARGV[3] ~= '' and redis.call('HSETNX', KEYS[1], 'd:' .. ARGV[1] .. ':' .. ARGV[3], '1') == 1
then
  redis.call('LPUSH', KEYS[2], ARGV[4])
  return 2
end
return 1
"""
)

# KEYS: to-postfix queue, msg key, requeued key. ARGV: item, ttl → 1.
REQUEUE = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[2]))
return 1
"""
