"""The redis script's ready entries: adding to the priority streams, length limits, dead letters.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module."""

LUA = r"""
------------------------------------------------------------------------------------------------ entries

local function level_of(suffix)
  if suffix:sub(1, 1) == 'r' then return tonumber(suffix:sub(2)), true end
  return tonumber(suffix), false
end

local function add_entry(q, level, requeued, body, meta, expires, deliveries, origin)
  local suffix = (requeued and 'r' or '') .. level
  local s = kqs(q.name, suffix)
  if redis.call('SADD', kqss(q.name), suffix) == 1 then
    redis.call('XGROUP', 'CREATE', s, G, '0', 'MKSTREAM')
  end
  local f = {'b', body, 'm', meta}
  if expires then
    f[#f + 1] = 'x'
    f[#f + 1] = expires
  end
  if deliveries and deliveries > 0 then
    f[#f + 1] = 'n'
    f[#f + 1] = deliveries
  end
  if origin then
    f[#f + 1] = 'o'
    f[#f + 1] = origin
  end
  redis.call('XADD', s, '*', unpack(f))
  redis.call('ZADD', kqlv(q.name), -(2 * level + (requeued and 1 or 0)), suffix)
  q.ready = q.ready + 1
  q.bytes = q.bytes + #body
  if expires then
    if not q.tx then
      q.tx = '1'
      redis.call('HSET', kq(q.name), 'tx', '1')
    end
    schedule(q.name, expires)
  end
end

-- Hand a dead letter to the clients (through the outbox) if the queue has a dead-letter exchange.
local function dead_letter(q, body, meta, reason)
  if not q.dlx then return end
  local f = {'q', q.name, 'r', reason, 'x', q.dlx, 'b', body, 'm', meta}
  if q.dlk then
    f[#f + 1] = 'k'
    f[#f + 1] = q.dlk
  end
  redis.call('XADD', K_OUTBOX, '*', unpack(f))
end

-- Take up to n ready entries from one stream into consumer's pending list; false when it has no more.
local function read(s, consumer, n)
  local r = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', n, 'STREAMS', s, '>')
  if not r then return false end
  return r[1][2]
end

-- Drop the head of the queue (the best ready entry), dead-lettering it; false when the queue is empty.
local function drop_head(q, reason)
  for _, suffix in ipairs(redis.call('ZRANGE', kqlv(q.name), 0, -1)) do
    local s = kqs(q.name, suffix)
    local entries = read(s, '~', 1)
    if entries and entries[1] then
      local id, f = entries[1][1], entry_fields(entries[1][2])
      ack_delete(s, {id})
      q.ready = q.ready - 1
      q.bytes = q.bytes - #f.b
      dead_letter(q, f.b, f.m, reason)
      return true
    end
    redis.call('ZREM', kqlv(q.name), suffix)
  end
  return false
end

-- memory._enqueue: TTL (the lower of message and queue, counted from since: a delayed message's due
-- time, else now), priority level, length limits.
local function enqueue(q, body, meta, ttl, priority, since)
  if q.ttl then ttl = (ttl == nil) and q.ttl or math.min(ttl, q.ttl) end
  local expires = ttl and ((since or NOW) + ttl) or nil
  local level = math.max(0, math.min(priority, q.mp))
  local size = #body
  if (q.ml or q.mlb) and ((q.ml and q.ready + 1 > q.ml) or (q.mlb and q.bytes + size > q.mlb)) then
    if q.ovf ~= 'drop-head' then
      if q.ovf == 'reject-publish-dlx' then dead_letter(q, body, meta, 'maxlen') end
      return false
    end
    add_entry(q, level, false, body, meta, expires, 0)
    q.pub = q.pub + 1
    while ((q.ml and q.ready > q.ml) or (q.mlb and q.bytes > q.mlb)) and q.ready > 0 do
      if not drop_head(q, 'maxlen') then break end
    end
    return true
  end
  add_entry(q, level, false, body, meta, expires, 0)
  q.pub = q.pub + 1
  return true
end

"""
