"""The redis script's delayed messages: held per queue in a sorted set by due time, moved to the queue's
ready streams by the script when due, cancelled by message id.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module.

Keys (P is the prefix):

- ``P qd:<q>`` sorted set: member a publish sequence number (16 hex digits, so members sort in publish
  order), score the due time in ms; among equal due times the lower member (earlier publish) goes first.
- ``P qdm:<q>`` hash: member -> the held entry, msgpack ``[body, meta, ttl ms or false, priority,
  message id]``.
- ``P dseq`` counter of publish sequence numbers; ``P did`` hash: message id -> msgpack list of
  ``[queue, member]`` pairs, what :func:`cancel` removes.

The queue's entry in ``P timed`` (the sweep schedule) is never later than its first due time, so every
claim, get, heartbeat and stats call that sweeps due queues moves what is due; a client's blocking wait
ends at the next scheduled time (``claim`` returns it).
"""

LUA = r"""
--------------------------------------------------------------------------------------------- delayed

local function kqd(name) return P .. 'qd:' .. name end
local function kqdm(name) return P .. 'qdm:' .. name end

-- Remove one (queue, member) pair from the message id's cancel index.
local function unindex(id, name, member)
  if not id or id == '' then return end
  local raw = redis.call('HGET', P .. 'did', id)
  if not raw then return end
  local pairs_ = cmsgpack.unpack(raw)
  local keep = {}
  for _, pair in ipairs(pairs_) do
    if not (pair[1] == name and pair[2] == member) then keep[#keep + 1] = pair end
  end
  if #keep == 0 then
    redis.call('HDEL', P .. 'did', id)
  else
    redis.call('HSET', P .. 'did', id, cmsgpack.pack(keep))
  end
end

-- Hold a routed message in queue q until due (ms); ids[name] collects the pairs for the cancel index.
local function hold(q, body, meta, ttl, priority, due, id, pairs_)
  local member = string.format('%016x', redis.call('INCR', P .. 'dseq'))
  redis.call('ZADD', kqd(q.name), due, member)
  redis.call('HSET', kqdm(q.name), member, cmsgpack.pack({body, meta, ttl or false, priority, id}))
  schedule(q.name, due)
  if id ~= '' then pairs_[#pairs_ + 1] = {q.name, member} end
end

-- Record the queues a delayed message was held in, under its message id (appended: ids may repeat).
local function index_held(id, pairs_)
  if id == '' or #pairs_ == 0 then return end
  local raw = redis.call('HGET', P .. 'did', id)
  if raw then
    for _, pair in ipairs(cmsgpack.unpack(raw)) do pairs_[#pairs_ + 1] = pair end
  end
  redis.call('HSET', P .. 'did', id, cmsgpack.pack(pairs_))
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
        unindex(e[5], q.name, member)
      end
    end
    redis.call('ZREMRANGEBYRANK', key, 0, #members - 1)
    redis.call('HDEL', kqdm(q.name), unpack(members))
  end
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then return tonumber(head[2]) end
  return nil
end

-- Drop every held entry of a deleted queue, and its pairs in the cancel index.
drop_held = function(name)
  local entries = redis.call('HGETALL', kqdm(name))
  for i = 1, #entries, 2 do
    local e = cmsgpack.unpack(entries[i + 1])
    unindex(e[5], name, entries[i])
  end
  redis.call('DEL', kqd(name), kqdm(name))
end

local function held_count(name) return redis.call('ZCARD', kqd(name)) end
"""

OPS = r"""
-- dcancel id -> the number of queues that still held the delayed message and no longer do
function ops.dcancel(a)
  local id = a[1]
  local raw = redis.call('HGET', P .. 'did', id)
  if not raw then return 0 end
  local count = 0
  for _, pair in ipairs(cmsgpack.unpack(raw)) do
    local name, member = pair[1], pair[2]
    if redis.call('ZREM', kqd(name), member) == 1 then
      redis.call('HDEL', kqdm(name), member)
      count = count + 1
    end
  end
  redis.call('HDEL', P .. 'did', id)
  return count
end
"""
