"""The redis script's delivery: expiry sweeps, claims, requeues, reaping dead connections.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module."""

LUA = r"""-- The id of the last entry of stream s the group handed out.
local function last_delivered(s)
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', s)) do
    local g = fields(group)
    if g.name == G then return g['last-delivered-id'] end
  end
  return '0-0'
end

-- Expire what is due in one queue: the queue itself (x-expires) or the expired heads of its streams.
local function sweep_queue(name)
  local q = load_queue(name)
  if not q then
    redis.call('ZREM', K_TIMED, name)
    return
  end
  local idle = consumers(name) == 0
  if q.exp and idle and q.used + q.exp <= NOW then
    delete_queue(name)
    return
  end
  local due = promote(q, 1000)
  if due and due <= NOW then due = NOW end -- more than one call's worth was due: sweep again now
  for _, suffix in ipairs(redis.call('ZRANGE', kqlv(name), 0, -1)) do
    local s = kqs(name, suffix)
    while true do
      local head = redis.call('XRANGE', s, '(' .. last_delivered(s), '+', 'COUNT', 1)[1]
      if not head then
        redis.call('ZREM', kqlv(name), suffix)
        break
      end
      local f = entry_fields(head[2])
      local x = tonumber(f.x)
      if x and x <= NOW then
        read(s, '~', 1)
        ack_delete(s, {head[1]})
        q.ready = q.ready - 1
        q.bytes = q.bytes - #f.b
        dead_letter(q, f.b, f.m, 'expired')
      else
        if x and (due == nil or x < due) then due = x end
        break
      end
    end
  end
  save_counters(q)
  if q.exp and idle and (due == nil or q.used + q.exp < due) then due = q.used + q.exp end
  if due == nil and q.tx and q.ready > 0 then due = NOW + 1000 end -- a TTL deeper than the heads
  if due then redis.call('ZADD', K_TIMED, due, name) else redis.call('ZREM', K_TIMED, name) end
end

local function sweep_due(limit)
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', K_TIMED, '-inf', NOW, 'LIMIT', 0, limit)) do
    sweep_queue(name)
  end
end

-- Sweep one queue now if something there is due (a consumer's or get's own queue goes first).
local function sweep_if_due(name)
  local at = redis.call('ZSCORE', K_TIMED, name)
  if at and tonumber(at) <= NOW then sweep_queue(name) end
end

-- Take up to room live entries from q for consumer conn, best stream first; expired ones are dropped or
-- dead-lettered on the way. Appends (tag, suffix, id, body, meta, deliveries) to out; returns the count.
local function take(q, conn, room, no_ack, tag, out)
  local taken = 0
  for _, suffix in ipairs(redis.call('ZRANGE', kqlv(q.name), 0, -1)) do
    local s = kqs(q.name, suffix)
    while taken < room do
      local want = room - taken
      local entries = read(s, conn, want)
      if not entries then entries = {} end
      local drop = {}
      for _, e in ipairs(entries) do
        local f = entry_fields(e[2])
        q.ready = q.ready - 1
        q.bytes = q.bytes - #f.b
        local x = tonumber(f.x)
        if x and x <= NOW then
          drop[#drop + 1] = e[1]
          dead_letter(q, f.b, f.m, 'expired')
        else
          if no_ack then drop[#drop + 1] = e[1] end
          out[#out + 1] = tag
          out[#out + 1] = suffix
          out[#out + 1] = e[1]
          out[#out + 1] = f.b
          out[#out + 1] = f.m
          out[#out + 1] = tonumber(f.n) or 0
          taken = taken + 1
        end
      end
      if #drop > 0 then ack_delete(s, drop) end
      if #entries < want then
        redis.call('ZREM', kqlv(q.name), suffix)
        break
      end
    end
    if taken >= room then break end
  end
  q.dlv = q.dlv + taken
  if taken > 0 and not no_ack then redis.call('SADD', kc('q', conn), q.name) end
  return taken
end

-- True when stream id a ("ms-seq") comes before stream id b.
local function id_before(a, b)
  local am, as = a:match('^(%d+)-(%d+)$')
  local bm, bs = b:match('^(%d+)-(%d+)$')
  if not (am and bm) then return false end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

-- Requeue one entry into its level's requeue stream at its original place, as RabbitMQ does: the ready
-- entries there that were first queued after it ('o', their id in the fresh stream) move behind it.
-- Entries already delivered from the stream (up to the group's last-delivered id) are not touched.
local function requeue_in_place(q, level, f, origin)
  local rs = kqs(q.name, 'r' .. level)
  local later = {}
  if redis.call('EXISTS', rs) == 1 then
    local last = '0-0'
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', rs)) do
      local g = fields(group)
      if g.name == G then last = g['last-delivered-id'] end
    end
    for _, entry in ipairs(redis.call('XRANGE', rs, '(' .. last, '+')) do
      if id_before(origin, fields(entry[2]).o or '0-0') then later[#later + 1] = entry end
    end
  end
  for _, entry in ipairs(later) do redis.call('XDEL', rs, entry[1]) end
  add_entry(q, level, true, f.b, f.m, tonumber(f.x), (tonumber(f.n) or 0) + 1, origin)
  -- Moved, not new: the queue's counters already include them.
  for _, entry in ipairs(later) do redis.call('XADD', rs, '*', unpack(entry[2])) end
end

-- Put pending entries back at the head of their queues, flagged redelivered, each at its original place
-- among the requeued ones. Only an entry still pending (XACK returns 1) moves, so an owner and a reaper
-- racing never requeue it twice.
local function requeue(name, suffix, ids, dirty)
  local s = kqs(name, suffix)
  local q = dirty[name]
  if q == nil then
    q = load_queue(name) or false
    dirty[name] = q
  end
  for _, id in ipairs(ids) do
    if redis.call('XACK', s, G, id) == 1 then
      local e = redis.call('XRANGE', s, id, id)[1]
      redis.call('XDEL', s, id)
      if e and q then
        local f = entry_fields(e[2])
        local level, requeued = level_of(suffix)
        -- Where it stood first: its id in the fresh stream (an entry requeued by an older kelp has none).
        local origin = f.o or (requeued and '0-0' or id)
        requeue_in_place(q, level, f, origin)
      end
    end
  end
end

local function save_all(dirty)
  for _, q in pairs(dirty) do
    if q then save_counters(q) end
  end
end

-- After a consumer left: auto-delete the queue, or start its expiry clock.
local function consumer_left(name)
  local q = load_queue(name)
  if not q then return end
  q.used = NOW
  redis.call('HSET', kq(name), 'used', NOW)
  if consumers(name) == 0 then
    if q.ad == '1' and q.hc == '1' then
      delete_queue(name)
    elseif q.exp then
      schedule(name, NOW + q.exp)
    end
  end
end

-- Release everything a connection holds: consumers, pending entries (requeued), exclusive queues.
-- Bounded: returns 1 when more is left (call again), 0 when the connection is gone.
local function reap(conn)
  local cons = redis.call('HGETALL', kc('cons', conn))
  local left = {}
  for i = 1, #cons, 2 do
    redis.call('HDEL', kqc(cons[i + 1]), conn .. ':' .. cons[i])
    left[cons[i + 1]] = true
  end
  redis.call('DEL', kc('cons', conn))
  local more = 0
  local dirty = {}
  for _, name in ipairs(redis.call('SMEMBERS', kc('q', conn))) do
    local done = true
    for _, suffix in ipairs(redis.call('SMEMBERS', kqss(name))) do
      local s = kqs(name, suffix)
      local pending = redis.call('XPENDING', s, G, '-', '+', 1000, conn)
      local ids = {}
      for _, p in ipairs(pending) do ids[#ids + 1] = p[1] end
      requeue(name, suffix, ids, dirty)
      if #pending == 1000 then
        done = false
      else
        redis.call('XGROUP', 'DELCONSUMER', s, G, conn)
      end
    end
    if done then redis.call('SREM', kc('q', conn), name) else more = 1 end
  end
  save_all(dirty)
  if more == 1 then return 1 end
  for _, name in ipairs(redis.call('SMEMBERS', kc('x', conn))) do
    if redis.call('HGET', kq(name), 'excl') == conn then delete_queue(name) end
  end
  for name in pairs(left) do consumer_left(name) end
  redis.call('DEL', kc('q', conn), kc('x', conn))
  redis.call('ZREM', K_ALIVE, conn)
  redis.call('HDEL', P .. 'clients', conn)
  redis.call('HDEL', P .. 'opub', conn)
  redis.call('DEL', kc('nack', conn))
  return 0
end

-- A connection silent for longer than its liveness was released (its messages redelivered): it must
-- reconnect rather than go on as if it still held them.
local function check_alive(conn)
  if not redis.call('ZSCORE', K_ALIVE, conn) then
    fail('LOST', 'this connection was silent for longer than its liveness and was released')
  end
end

"""
