"""The redis driver's Lua scripts, one per verb: each runs atomically, in one round trip.

Every key a script touches belongs to one queue `Q` and carries its hash tag `{Q}`, so a
script runs on one Redis Cluster node. A queue's keys (`KEYS`, in this order, see `keys()`):

    ready     LIST   v1 documents, pushed on the left, claimed from the right (FIFO; a
                     program that LPUSHes a document is a producer like any other)
    delayed   ZSET   id -> when it is due (its document in `bodies`)
    reserved  ZSET   id -> the reservation's deadline (its document in `bodies`)
    bodies    HASH   id -> document, for delayed and reserved jobs
    owners    HASH   id -> the handle of the claim holding it ("<token>:<claim>:<n>")
    starts    HASH   id -> starts so far, for jobs that have any (the crash count reads it)
    failed    HASH   id -> JSON {connection, queue, body, exception, failed_at}
    failed_at ZSET   id -> when it failed

A claim promotes due delayed jobs and hands lapsed reservations back before it pops, so no
other process has to move them. A push, a release or a give-back that makes an empty ready
list non-empty publishes on `wake`, so an idle worker subscribed there claims at once.
"""
from __future__ import annotations

NAMES = ("ready", "delayed", "reserved", "bodies", "owners", "starts", "failed", "failed_at")


def keys(prefix: str, queue: str) -> list[str]:
    """The queue's keys, in the order the scripts expect them."""
    return [f"{prefix}:{{{queue}}}:{name}" for name in NAMES]


def wake_channel(prefix: str, queue: str) -> str:
    return f"{prefix}:{{{queue}}}:wake"


# Shared by the scripts: the job id of a document. One that does not parse, or whose id is
# not a short plain string (36 characters of letters, digits and -_.:, so any store's id
# column takes it), gets an id in the shape of a UUID made from its hash; the worker fails
# the first as a bad payload.
_ID = """
local function job_id(body)
  local ok, doc = pcall(cjson.decode, body)
  if ok and type(doc) == 'table' and type(doc.id) == 'string' and #doc.id <= 36
      and string.match(doc.id, '^[%w%-_.:]+$') then
    return doc.id
  end
  local h = redis.sha1hex(body)
  return h:sub(1, 8) .. '-' .. h:sub(9, 12) .. '-' .. h:sub(13, 16) .. '-' .. h:sub(17, 20) .. '-' .. h:sub(21, 32)
end
local function wake_if_empty(ready, channel, before)
  if before == 0 and redis.call('LLEN', ready) > 0 then redis.call('PUBLISH', channel, '1') end
end
"""

# KEYS: ready, delayed, bodies, starts. ARGV: now, wake channel, then (id, at, attempts, body)...
# A job whose id is delayed or reserved already is refused, all of them with it: the state of
# a delayed or reserved job is kept by id, so a second one would take the first one's place.
PUSH = _ID + """
local ready, delayed, bodies, starts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, before = tonumber(ARGV[1]), redis.call('LLEN', KEYS[1])
for i = 3, #ARGV, 4 do
  if redis.call('HEXISTS', bodies, ARGV[i]) == 1 then
    return redis.error_reply('a job with id ' .. ARGV[i] .. ' is already delayed or reserved on this queue')
  end
end
for i = 3, #ARGV, 4 do
  local id, at, attempts, body = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  if attempts > 0 then redis.call('HSET', starts, id, attempts) end
  if at > now then
    redis.call('HSET', bodies, id, body)
    redis.call('ZADD', delayed, at, id)
  else
    redis.call('LPUSH', ready, body)
  end
end
if before == 0 then redis.call('PUBLISH', ARGV[2], '1') end
return 1
"""

# KEYS: the 8 keys of each queue, in priority order. ARGV: now, deadline, claim, limit.
# Returns {soonest, q, id, body, attempt, q, id, ...}: `attempt` is the job's starts so far
# plus one (a claim is not a start: `starting` writes it); `soonest` (when a delayed job falls
# due or a reservation lapses, '' for never) is worth reading only when no job came.
CLAIM = _ID + """
local now, deadline, claim, want = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local out, got, soonest = {''}, 0, nil
for q = 0, #KEYS / 8 - 1 do
  local ready, delayed, reserved, bodies, owners, starts =
    KEYS[q*8+1], KEYS[q*8+2], KEYS[q*8+3], KEYS[q*8+4], KEYS[q*8+5], KEYS[q*8+6]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', reserved, '-inf', now, 'LIMIT', 0, 100)) do
    local body = redis.call('HGET', bodies, id)     -- its worker died: next in line
    if body then redis.call('RPUSH', ready, body) end
    redis.call('ZREM', reserved, id); redis.call('HDEL', bodies, id); redis.call('HDEL', owners, id)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)) do
    local body = redis.call('HGET', bodies, id)
    if body then redis.call('LPUSH', ready, body) end
    redis.call('ZREM', delayed, id); redis.call('HDEL', bodies, id)
  end
  if got < want then
    local popped = redis.call('RPOP', ready, want - got)
    if popped then
      for _, body in ipairs(popped) do
        local id = job_id(body)
        got = got + 1
        redis.call('ZADD', reserved, deadline, id)
        redis.call('HSET', bodies, id, body)
        redis.call('HSET', owners, id, claim .. ':' .. got)
        local n = tonumber(redis.call('HGET', starts, id) or '0') + 1
        for _, v in ipairs({q, id, body, n}) do out[#out + 1] = v end
      end
    end
  end
  for _, z in ipairs({delayed, reserved}) do
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if first[2] and (soonest == nil or tonumber(first[2]) < soonest) then soonest = tonumber(first[2]) end
  end
end
if soonest then out[1] = tostring(soonest) end
return out
"""

# KEYS: the queue's 8 keys. ARGV: verb, id, handle, now, then per verb: start (), ack (the
# next job's id and handle, whose start is written with the ack), release (at, body, wake
# channel, '1' if its start was written), give_back (wake channel, '1' if its start was
# written: taken back, the time it is delayed until when middleware held it back), fail
# (entry JSON), own (). Nothing happens, and 0 is returned, unless the job is still held by
# this claim: a worker whose reservation lapsed settles nothing.
SETTLE = _ID + """
local ready, delayed, reserved, bodies, owners, starts, failed, failed_at =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local verb, id, handle, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', owners, id) ~= handle then return 0 end
if verb == 'own' then return 1 end
if verb == 'start' then redis.call('HINCRBY', starts, id, 1); return 1 end
local result = 1
local body = redis.call('HGET', bodies, id)
redis.call('ZREM', reserved, id); redis.call('HDEL', owners, id); redis.call('HDEL', bodies, id)
if verb == 'ack' or verb == 'fail' then
  redis.call('HDEL', starts, id)
  if verb == 'fail' then
    redis.call('HSET', failed, id, ARGV[5]); redis.call('ZADD', failed_at, now, id)
  elseif ARGV[6] and redis.call('HGET', owners, ARGV[5]) == ARGV[6] then
    redis.call('HINCRBY', starts, ARGV[5], 1)
    result = 2                    -- the next job's start is written
  end
elseif verb == 'release' then
  local at, before = tonumber(ARGV[5]), redis.call('LLEN', ready)
  if ARGV[8] ~= '1' then redis.call('HINCRBY', starts, id, 1) end   -- it ran, so it started
  if at > now then
    redis.call('HSET', bodies, id, ARGV[6]); redis.call('ZADD', delayed, at, id)
  else
    redis.call('LPUSH', ready, ARGV[6])
  end
  wake_if_empty(ready, ARGV[7], before)
elseif verb == 'give_back' then
  local before = redis.call('LLEN', ready)
  if ARGV[6] == '1' and redis.call('HINCRBY', starts, id, -1) <= 0 then redis.call('HDEL', starts, id) end
  local at = tonumber(ARGV[7] or '0')
  if body and at > now then                            -- held back by middleware: delayed until then
    redis.call('HSET', bodies, id, body); redis.call('ZADD', delayed, at, id)
  elseif body then redis.call('RPUSH', ready, body) end     -- next in line, as it was
  wake_if_empty(ready, ARGV[5], before)
end
return result
"""

# KEYS: reserved, owners. ARGV: deadline, then (id, handle)... Extends the reservations still held.
RENEW = """
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i]); n = n + 1
  end
end
return n
"""

# KEYS: the queue's 8 keys. Drops the ready jobs (and their start counts); returns how many.
CLEAR = _ID + """
local bodies = redis.call('LRANGE', KEYS[1], 0, -1)
for _, body in ipairs(bodies) do redis.call('HDEL', KEYS[6], job_id(body)) end
redis.call('DEL', KEYS[1])
return #bodies
"""

# KEYS: the queue's 8 keys. ARGV: now, wake channel, then (id, body)... A failed job goes back
# on its queue, attempts reset, if it is still failed; returns how many went.
RETRY = _ID + """
local n, before = 0, redis.call('LLEN', KEYS[1])
for i = 3, #ARGV, 2 do
  if redis.call('HDEL', KEYS[7], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[8], ARGV[i]); redis.call('HDEL', KEYS[6], ARGV[i])
    redis.call('LPUSH', KEYS[1], ARGV[i + 1]); n = n + 1
  end
end
wake_if_empty(KEYS[1], ARGV[2], before)
return n
"""

# KEYS: the queue's 8 keys. ARGV: id. A reserved or delayed job of this queue (kept by id):
# {state, body, starts, owner handle, score}; false when it is neither (a ready job is found
# by the driver, scanning the ready list in chunks: a script must not block Redis that long).
LOOKUP = """
local delayed, reserved, bodies, owners, starts = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id = ARGV[1]
local n = redis.call('HGET', starts, id) or '0'
local at = redis.call('ZSCORE', reserved, id)
if at then return {'reserved', redis.call('HGET', bodies, id) or '', n, redis.call('HGET', owners, id) or '', at} end
at = redis.call('ZSCORE', delayed, id)
if at then return {'delayed', redis.call('HGET', bodies, id) or '', n, '', at} end
return false
"""

# KEYS: the queue's 8 keys. ARGV: id. A delayed job goes: 1; a reserved one (a lapsed
# reservation included: it may have started) stays: 0; neither: -1 (the driver then looks
# in the ready list and takes the job out with one LREM, atomic against a worker's claim).
CANCEL = """
local delayed, reserved, bodies, owners, starts = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id = ARGV[1]
if redis.call('ZSCORE', reserved, id) or redis.call('HEXISTS', owners, id) == 1 then return 0 end
if redis.call('ZREM', delayed, id) == 1 then
  redis.call('HDEL', bodies, id); redis.call('HDEL', starts, id)
  return 1
end
return -1
"""

# KEYS: failed, failed_at. ARGV: before. Deletes the failed jobs older than `before`.
PRUNE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, id in ipairs(ids) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
return #ids
"""


# KEYS: the counter (a hash: n, e). ARGV: by, expires_at, now. farm/locks.py's incr: a missing
# or expired counter starts again from 0 with the new expiry; returns {value, expires_at}.
INCR = """
local e = redis.call('HGET', KEYS[1], 'e')
if e and tonumber(e) > tonumber(ARGV[3]) then
  return {redis.call('HINCRBY', KEYS[1], 'n', ARGV[1]), e}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'n', ARGV[1], 'e', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
return {tonumber(ARGV[1]), ARGV[2]}
"""

# KEYS: the counter. ARGV: its expiry as incr returned it, or '': any. farm/locks.py's drop.
DROP = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
