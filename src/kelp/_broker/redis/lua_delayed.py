"""The redis script's delayed messages: held per queue in a sorted set by due time, moved to the queue's
ready streams by the script when due, cancelled by message id.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module.

Keys (P is the prefix):

- ``P qd:<q>`` sorted set: member a publish sequence number (16 hex digits, so members sort in publish
  order), score the due time in ms; among equal due times the lower member (earlier publish) goes first.
- ``P qdm:<q>`` hash: member -> the held entry, msgpack ``[body, meta, ttl ms or false, priority,
  message id]``.
- ``P qdi:<q>`` hash: message id -> msgpack list of its members in the queue (what cancel removes).
- ``P dseq`` counter of publish sequence numbers; ``P dq`` set of the queues holding delayed messages
  (cancel looks in each); ``P wake`` a one-entry stream every blocked client watches, added to when a
  message is held with a due time earlier than anything scheduled. Deleting a queue deletes its three
  keys whole, whatever their size.

The queue's entry in ``P timed`` (the sweep schedule) is never later than its first due time, so every
claim, get, heartbeat and stats call that sweeps due queues moves what is due; a client's blocking wait
ends at the next scheduled time (``claim`` returns it).
"""

LUA = r"""
--------------------------------------------------------------------------------------------- delayed

local function kqd(name) return P .. 'qd:' .. name end
local function kqdm(name) return P .. 'qdm:' .. name end
local function kqdi(name) return P .. 'qdi:' .. name end

-- Remove one member from the message id's entry in the queue's cancel index.
local function unindex(name, id, member)
  if not id or id == '' then return end
  local raw = redis.call('HGET', kqdi(name), id)
  if not raw then return end
  local keep = {}
  for _, m in ipairs(cmsgpack.unpack(raw)) do
    if m ~= member then keep[#keep + 1] = m end
  end
  if #keep == 0 then
    redis.call('HDEL', kqdi(name), id)
  else
    redis.call('HSET', kqdi(name), id, cmsgpack.pack(keep))
  end
end

-- Hold a routed message in queue q until due (ms), under its message id for cancel.
local function hold(q, body, meta, ttl, priority, due, id)
  local member = string.format('%016x', redis.call('INCR', P .. 'dseq'))
  redis.call('ZADD', kqd(q.name), due, member)
  redis.call('HSET', kqdm(q.name), member, cmsgpack.pack({body, meta, ttl or false, priority, id}))
  redis.call('SADD', P .. 'dq', q.name)
  if id ~= '' then
    local raw = redis.call('HGET', kqdi(q.name), id)
    local members = raw and cmsgpack.unpack(raw) or {}
    members[#members + 1] = member
    redis.call('HSET', kqdi(q.name), id, cmsgpack.pack(members))
  end
  local first = redis.call('ZRANGE', K_TIMED, 0, 0, 'WITHSCORES')[2]
  schedule(q.name, due)
  -- Due before anything scheduled so far: the clients blocked in XREAD (they watch P wake) computed
  -- their waits without it, so wake them to claim again and learn it.
  if not first or due < tonumber(first) then
    redis.call('XADD', P .. 'wake', 'MAXLEN', '1', '*', 'd', due)
  end
end

-- Move up to limit due entries of q to its ready streams, in due then publish order; the TTL of each
-- counts from its due time. Returns the next due time (ms) still held, or nil.
local function promote(q, limit)
  local key = kqd(q.name)
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', NOW, 'WITHSCORES', 'LIMIT', 0, limit)
  if #due > 0 then
    local members = {}
    for i = 1, #due, 2 do members[#members + 1] = due[i] end
    local raws = redis.call('HMGET', kqdm(q.name), unpack(members))
    for i, member in ipairs(members) do
      local raw = raws[i]
      if raw then
        local e = cmsgpack.unpack(raw)
        enqueue(q, e[1], e[2], e[3] or nil, e[4], tonumber(due[2 * i]))
        unindex(q.name, e[5], member)
      end
    end
    redis.call('ZREMRANGEBYRANK', key, 0, #members - 1)
    redis.call('HDEL', kqdm(q.name), unpack(members))
  end
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then return tonumber(head[2]) end
  redis.call('SREM', P .. 'dq', q.name)
  return nil
end

-- Drop every held entry of a deleted queue.
drop_held = function(name)
  redis.call('DEL', kqd(name), kqdm(name), kqdi(name))
  redis.call('SREM', P .. 'dq', name)
end

local function held_count(name) return redis.call('ZCARD', kqd(name)) end
"""

OPS = r"""
-- dcancel id -> the number of held copies of the message removed (one per queue it was routed to)
function ops.dcancel(a)
  local id = a[1]
  local count = 0
  for _, name in ipairs(redis.call('SMEMBERS', P .. 'dq')) do
    local raw = redis.call('HGET', kqdi(name), id)
    if raw then
      for _, member in ipairs(cmsgpack.unpack(raw)) do
        if redis.call('ZREM', kqd(name), member) == 1 then
          redis.call('HDEL', kqdm(name), member)
          count = count + 1
        end
      end
      redis.call('HDEL', kqdi(name), id)
    end
  end
  return count
end
"""
