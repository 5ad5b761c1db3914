"""The redis script's operations table: one function per call (``op`` in ``EVALSHA sha 1 P op ...``).

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module."""

LUA = r"""
------------------------------------------------------------------------------------------- operations

local ops = {}

-- init conn ttl: register the connection as alive; make sure the amq.* exchanges exist.
function ops.init(a)
  redis.call('ZADD', K_ALIVE, NOW + tonumber(a[2]), a[1])
  for name, xtype in pairs({['amq.direct'] = 'direct', ['amq.fanout'] = 'fanout', ['amq.topic'] = 'topic',
                            ['amq.headers'] = 'headers', ['amq.match'] = 'headers'}) do
    if redis.call('HSETNX', kx(name), 'type', xtype) == 1 then
      redis.call('HSET', kx(name), 'durable', '1', 'ad', '0', 'internal', '0', 'args', '{}')
      redis.call('SADD', K_EXCHANGES, name)
    end
  end
  if redis.call('SETNX', K_REFUSING .. ':built', '1') == 1 then
    -- A broker created before the refusing set existed: build it once.
    for _, name in ipairs(redis.call('SMEMBERS', K_QUEUES)) do
      local ovf = redis.call('HGET', kq(name), 'ovf')
      if ovf and ovf ~= 'drop-head' then redis.call('SADD', K_REFUSING, name) end
    end
  end
  return redis.call('XLEN', K_OUTBOX)
end

-- beat conn ttl: refresh liveness; reap one dead connection; expire what is due.
-- Returns {outbox length, 1 if this connection had been reaped (declared dead) already, more to reap}.
function ops.beat(a)
  local conn = a[1]
  local known = redis.call('ZADD', K_ALIVE, 'XX', 'CH', NOW + tonumber(a[2]), conn)
  local lost = 0
  if known == 0 and not redis.call('ZSCORE', K_ALIVE, conn) then lost = 1 end
  local more = 0
  local dead = redis.call('ZRANGEBYSCORE', K_ALIVE, '-inf', NOW, 'LIMIT', 0, 1)[1]
  if dead then more = reap(dead) + 1 end
  sweep_due(16)
  return {redis.call('XLEN', K_OUTBOX), lost, more}
end

-- reap conn: release a connection (a clean close, or a dead one). Returns 1 when more is left.
function ops.reap(a) return reap(a[1]) end

-- xdecl name type durable ad internal args alt passive
function ops.xdecl(a)
  local name = a[1]
  local x = redis.call('HMGET', kx(name), 'type', 'durable', 'ad', 'internal', 'args')
  if a[8] == '1' then
    if not x[1] then fail('NOT_FOUND', "no exchange '" .. name .. "' in vhost '/'") end
    return 1
  end
  if x[1] then
    if x[1] ~= a[2] or x[2] ~= a[3] or x[3] ~= a[4] or x[4] ~= a[5] or x[5] ~= a[6] then
      fail('PRECONDITION', "inequivalent arg for exchange '" .. name .. "': declared as " .. x[1] ..
        ' durable=' .. x[2] .. ' auto_delete=' .. x[3] .. ', redeclared as ' .. a[2] ..
        ' durable=' .. a[3] .. ' auto_delete=' .. a[4])
    end
    return 1
  end
  redis.call('HSET', kx(name), 'type', a[2], 'durable', a[3], 'ad', a[4], 'internal', a[5], 'args', a[6])
  if a[7] ~= '' then redis.call('HSET', kx(name), 'alt', a[7]) end
  redis.call('SADD', K_EXCHANGES, name)
  return 1
end

-- xdel name if_unused
function ops.xdel(a)
  local name = a[1]
  if redis.call('EXISTS', kx(name)) == 0 then return 0 end
  if a[2] == '1' and redis.call('SCARD', kxb(name)) > 0 then
    fail('PRECONDITION', "exchange '" .. name .. "' in use")
  end
  for _, member in ipairs(redis.call('SMEMBERS', kxb(name))) do remove_binding_member(name, member) end
  redis.call('DEL', kx(name), kxb(name), kxk(name), kxt(name))
  redis.call('SREM', K_EXCHANGES, name)
  local dest = 'e:' .. name
  for _, source in ipairs(redis.call('HKEYS', krb(dest))) do remove_destination(source, dest) end
  redis.call('DEL', krb(dest), krbm(dest))
  return 1
end

-- qdecl conn name durable exclusive ad args passive ttl exp ml mlb ovf mp dlx? dlx dlk? dlk
-- Returns {name, ready, consumers}.
function ops.qdecl(a)
  local conn, name = a[1], a[2]
  sweep_due(8)
  if a[7] == '1' then
    local q = queue_for(name, conn)
    return {name, q.ready, consumers(name)}
  end
  local q = live_queue(name)
  if q then
    check_exclusive(q, conn)
    local exclusive = (q.excl ~= '') and '1' or '0'
    if q.dur ~= a[3] or exclusive ~= a[4] or q.ad ~= a[5] or q.args ~= a[6] then
      fail('PRECONDITION', "inequivalent arg for queue '" .. name .. "': declared with durable=" .. q.dur ..
        ' exclusive=' .. exclusive .. ' auto_delete=' .. q.ad .. ' arguments=' .. q.args ..
        ', redeclared with durable=' .. a[3] .. ' exclusive=' .. a[4] .. ' auto_delete=' .. a[5] ..
        ' arguments=' .. a[6])
    end
    touch(q)
    return {name, q.ready, consumers(name)}
  end
  local f = {'dur', a[3], 'excl', (a[4] == '1') and conn or '', 'ad', a[5], 'args', a[6], 'ovf', a[12],
             'mp', a[13], 'ready', 0, 'bytes', 0, 'used', NOW, 'hc', '0'}
  for i, key in ipairs({'ttl', 'exp', 'ml', 'mlb'}) do
    if a[7 + i] ~= '' then
      f[#f + 1] = key
      f[#f + 1] = a[7 + i]
    end
  end
  if a[14] == '1' then
    f[#f + 1] = 'dlx'
    f[#f + 1] = a[15]
  end
  if a[16] == '1' then
    f[#f + 1] = 'dlk'
    f[#f + 1] = a[17]
  end
  redis.call('HSET', kq(name), unpack(f))
  redis.call('SADD', K_QUEUES, name)
  if a[12] ~= 'drop-head' then redis.call('SADD', K_REFUSING, name) end
  if a[4] == '1' then redis.call('SADD', kc('x', conn), name) end
  if a[9] ~= '' then schedule(name, NOW + tonumber(a[9])) end
  return {name, 0, 0}
end

-- qdel conn name if_unused if_empty -> ready messages deleted
function ops.qdel(a)
  local conn, name = a[1], a[2]
  local q = live_queue(name)
  if not q then return 0 end
  check_exclusive(q, conn)
  if a[3] == '1' and consumers(name) > 0 then fail('PRECONDITION', "queue '" .. name .. "' in use") end
  if a[4] == '1' and q.ready > 0 then fail('PRECONDITION', "queue '" .. name .. "' not empty") end
  return delete_queue(name)
end

-- purge conn name -> ready messages removed (pending ones stay)
function ops.purge(a)
  local q = queue_for(a[2], a[1])
  local count = 0
  for _, suffix in ipairs(redis.call('ZRANGE', kqlv(q.name), 0, -1)) do
    local s = kqs(q.name, suffix)
    while true do
      local entries = read(s, '~', 1000)
      if not entries or #entries == 0 then break end
      local ids = {}
      for _, e in ipairs(entries) do ids[#ids + 1] = e[1] end
      ack_delete(s, ids)
      count = count + #ids
    end
  end
  redis.call('DEL', kqlv(q.name))
  q.ready, q.bytes = 0, 0
  save_counters(q)
  return count
end

-- bind conn kind dest source key member rule_error
function ops.bind(a)
  local conn, kind, dest, source, key, member = a[1], a[2], a[3], a[4], a[5], a[6]
  local x = redis.call('HMGET', kx(source), 'type', 'trie')
  local xtype = x[1]
  if not xtype then fail('NOT_FOUND', "no exchange '" .. source .. "' in vhost '/'") end
  if kind == 'queue' then
    queue_for(dest, conn)
  elseif redis.call('EXISTS', kx(dest)) == 0 then
    fail('NOT_FOUND', "no exchange '" .. dest .. "' in vhost '/'")
  end
  if xtype == 'headers' and a[7] ~= '' then fail('XMATCH', a[7]) end
  if xtype == 'topic' then ensure_trie(source, x[2]) end
  if redis.call('SADD', kxb(source), member) == 0 then return 0 end
  local d = kind:sub(1, 1) .. ':' .. dest
  redis.call('SADD', krbm(d), cjson.encode({source, member}))
  if xtype == 'topic' then
    trie_change(source, key, d, 1)
    redis.call('HINCRBY', kx(source), 'trie', 1)
  end
  if xtype ~= 'headers' then
    local json = redis.call('HGET', kxk(source), key)
    local dests = json and cjson.decode(json) or {}
    dests[d] = (dests[d] or 0) + 1
    redis.call('HSET', kxk(source), key, cjson.encode(dests))
  end
  redis.call('HINCRBY', krb(d), source, 1)
  return 1
end

-- unbind conn kind dest source key member
function ops.unbind(a)
  local conn, kind, dest, source, member = a[1], a[2], a[3], a[4], a[6]
  if kind == 'queue' then queue_for(dest, conn) end
  if redis.call('EXISTS', kx(source)) == 0 then return 0 end
  if remove_binding_member(source, member) then
    maybe_auto_delete_exchange(source)
    return 1
  end
  return 0
end

-- publish n (exchange key hcanon mandatory priority ttl body meta outbox_id due_ms message_id) * n
-- Routes and stores every envelope atomically; one with a due time still ahead is held in each queue
-- until then (lua_delayed), its length limits applied when it becomes ready. An envelope with an outbox
-- id is a dead letter: it is stored only if this call is the one that removes it from the outbox, and
-- a missing exchange drops it;
-- mandatory 'x' only removes it (a dead-letter cycle). A missing exchange fails the whole call, except
-- for bpublish (a client's buffered, unconfirmed publishes), which drops those envelopes and names them.
-- Returns {unroutable mandatory envelope indexes, refused queue names, outbox length,
-- missing exchange names, number of queues that may refuse a publish,
-- indexes of the envelopes not stored everywhere (a queue refused it, or its exchange is missing)}.
local function publish(a, lenient, o)
  o = o or 0  -- arguments before the publish's own
  local n = tonumber(a[1 + o])
  local missing, skip, nacked = {}, {}, {}
  for i = 0, n - 1 do
    local base = 2 + o + i * 11
    local exchange = a[base]
    if exchange ~= '' and a[base + 8] == '' and redis.call('EXISTS', kx(exchange)) == 0 then
      if not lenient then fail('NOT_FOUND', "no exchange '" .. exchange .. "' in vhost '/'") end
      missing[#missing + 1] = exchange
      skip[i] = true
      nacked[#nacked + 1] = i
    end
  end
  local returned, refused, cache = {}, {}, {}
  for i = 0, n - 1 do
    local base = 2 + o + i * 11
    local exchange, key, hcanon, mandatory = a[base], a[base + 1], a[base + 2], a[base + 3]
    local priority, ttl, body, meta, outbox = tonumber(a[base + 4]) or 0, tonumber(a[base + 5]),
      a[base + 6], a[base + 7], a[base + 8]
    local due = tonumber(a[base + 9])
    if due and due <= NOW then due = nil end
    local go = not skip[i]
    if outbox ~= '' then
      go = redis.call('XDEL', K_OUTBOX, outbox) == 1 and mandatory ~= 'x'
      if go and exchange ~= '' and redis.call('EXISTS', kx(exchange)) == 0 then go = false end
      mandatory = ''
    end
    if go then
      local names
      if exchange == '' then
        names = {key}
      else
        names = route(exchange, key, hcanon)
        if #names == 0 then
          local alt = redis.call('HGET', kx(exchange), 'alt')
          if alt and redis.call('EXISTS', kx(alt)) == 1 then names = route(alt, key, hcanon) end
        end
      end
      local stored, refusal = 0, false
      for _, name in ipairs(names) do
        local q = cache[name]
        if q == nil then
          q = live_queue(name) or false
          cache[name] = q
        end
        if q then
          stored = stored + 1
          if due then
            hold(q, body, meta, ttl, priority, due, a[base + 10])
          elseif not enqueue(q, body, meta, ttl, priority) then
            refused[#refused + 1] = name
            refusal = true
          end
        end
      end
      if refusal then nacked[#nacked + 1] = i end
      if stored == 0 and mandatory == '1' then returned[#returned + 1] = i end
    end
  end
  save_all(cache)
  return {returned, refused, redis.call('XLEN', K_OUTBOX), missing, redis.call('SCARD', K_REFUSING), nacked}
end

function ops.publish(a) return publish(a, false) end
function ops.bpublish(a) return publish(a, true) end

-- opub conn n (...) * n: bpublish for a client that asked for no reply (CLIENT REPLY OFF): the call is
-- counted, and what it refused kept as JSON [k (the call's number since the last confirm), nacked
-- indexes, refused queues, missing exchanges], for the client's next confirm.
function ops.opub(a)
  local conn = a[1]
  local r = publish(a, true, 1)
  local k = redis.call('HINCRBY', P .. 'opub', conn, 1)
  if #r[6] > 0 then
    redis.call('RPUSH', kc('nack', conn), cjson.encode({k, r[6], r[2], r[4]}))
  end
  return 1
end

-- confirm conn -> {opub calls since the last confirm, outbox length, refusal JSON...}
function ops.confirm(a)
  local conn = a[1]
  local out = {tonumber(redis.call('HGET', P .. 'opub', conn) or 0), redis.call('XLEN', K_OUTBOX)}
  redis.call('HDEL', P .. 'opub', conn)
  for _, nack in ipairs(redis.call('LRANGE', kc('nack', conn), 0, -1)) do out[#out + 1] = nack end
  redis.call('DEL', kc('nack', conn))
  return out
end

-- claim conn n (queue room no_ack tag window key) * n m (room) * m: deliveries for the connection's
-- consumers. A consumer's window is 0, or the number (1..m) of its channel's global window: the room
-- after the specs, which the channel's consumers take from in turn, so a consumer whose queue is empty
-- leaves it to the others. Returns {outbox length, tag, suffix, id, body, meta, deliveries, ...}; then
-- 'gone', tag for each consumer whose queue no longer exists, or exists without the consumer's
-- registration (its key, as consume made it): deleted, maybe declared again since (the client cancels
-- it); with nothing to deliver or cancel, a 'watch' marker, the ms until the next scheduled sweep (-1:
-- none), then the streams to watch for new entries as (key, last id) pairs.
function ops.claim(a)
  local conn, n = a[1], tonumber(a[2])
  check_alive(conn)
  sweep_due(4)
  for i = 0, n - 1 do sweep_if_due(a[3 + i * 6]) end
  local windows = {}
  for k = 1, tonumber(a[3 + n * 6]) do windows[k] = tonumber(a[3 + n * 6 + k]) end
  local out = {0}
  local cache = {}
  for i = 0, n - 1 do
    local base = 3 + i * 6
    local name, room, window = a[base], tonumber(a[base + 1]), tonumber(a[base + 4])
    if window > 0 then room = math.min(room, windows[window]) end
    local q = cache[name]
    if q == nil then
      q = load_queue(name) or false
      cache[name] = q
    end
    local registered = q and redis.call('HEXISTS', kqc(name), conn .. ':' .. a[base + 5]) == 1
    if registered and room > 0 and q.ready > 0 then
      local taken = take(q, conn, room, a[base + 2] == '1', a[base + 3], out)
      if window > 0 then windows[window] = windows[window] - taken end
    elseif not registered then
      out[#out + 1] = 'gone'
      out[#out + 1] = a[base + 3]
    end
  end
  save_all(cache)
  if #out == 1 then
    out[#out + 1] = 'watch'
    -- ms until the next scheduled sweep (a delayed message due, an expiry), -1 for none: the client's
    -- blocking wait ends then, so what becomes due is moved and delivered on time.
    local next_at = redis.call('ZRANGE', K_TIMED, 0, 0, 'WITHSCORES')[2]
    out[#out + 1] = next_at and math.max(0, tonumber(next_at) - NOW) or -1
    for i = 0, n - 1 do
      local base = 3 + i * 6
      local name, window = a[base], tonumber(a[base + 4])
      local q = cache[name]
      if q and tonumber(a[base + 1]) > 0 and (window == 0 or windows[window] > 0) then
        -- Every stream the queue may get, existing or not: XREAD on a missing key waits for its creation.
        for level = q.mp, 0, -1 do
          for _, suffix in ipairs({'r' .. level, tostring(level)}) do
            local s = kqs(name, suffix)
            local last = redis.call('XREVRANGE', s, '+', '-', 'COUNT', 1)[1]
            out[#out + 1] = s
            out[#out + 1] = last and last[1] or '0-0'
          end
        end
      end
    end
    -- A delayed message held due sooner than this client's wait ends adds to P wake (lua_delayed).
    if #out > 3 then
      local wake = redis.call('XREVRANGE', P .. 'wake', '+', '-', 'COUNT', 1)[1]
      out[#out + 1] = P .. 'wake'
      out[#out + 1] = wake and wake[1] or '0-0'
    end
  end
  out[1] = redis.call('XLEN', K_OUTBOX)
  return out
end

-- get conn queue no_ack -> {outbox length, ready after, suffix, id, body, meta, deliveries}
function ops.get(a)
  local conn, name, no_ack = a[1], a[2], a[3] == '1'
  check_alive(conn)
  sweep_due(4)
  sweep_if_due(name)
  local q = queue_for(name, conn)
  touch(q)
  local out = {}
  take(q, conn, 1, no_ack, '', out)
  save_counters(q)
  local result = {redis.call('XLEN', K_OUTBOX), q.ready}
  for i = 2, #out do result[#result + 1] = out[i] end
  return result
end

-- settle conn requeue n (queue suffix id) * n: requeue (requeue=1) or drop / dead-letter (0).
function ops.settle(a)
  local requeueing, n = a[2] == '1', tonumber(a[3])
  check_alive(a[1])
  local dirty = {}
  for i = 0, n - 1 do
    local base = 4 + i * 3
    local name, suffix, id = a[base], a[base + 1], a[base + 2]
    if requeueing then
      requeue(name, suffix, {id}, dirty)
    else
      local s = kqs(name, suffix)
      if redis.call('XACK', s, G, id) == 1 then
        local e = redis.call('XRANGE', s, id, id)[1]
        redis.call('XDEL', s, id)
        local q = load_queue(name)
        if e and q then
          local f = entry_fields(e[2])
          dead_letter(q, f.b, f.m, 'rejected')
        end
      end
    end
  end
  save_all(dirty)
  return redis.call('XLEN', K_OUTBOX)
end

-- ack (queue suffix k id * k) ...: the acked entries leave their stream (XACK + XDEL); each queue counts
-- the acks it took ('ack' in its hash: an entry no longer pending, as after a reap, is not counted).
function ops.ack(a)
  local i = 1
  while i < #a do
    local name, suffix, last = a[i], a[i + 1], i + 2 + tonumber(a[i + 2])
    local s = kqs(name, suffix)
    local acked = 0
    for j = i + 3, last, 500 do  -- in chunks: Lua's unpack has a limit
      local chunk = {unpack(a, j, math.min(j + 499, last))}
      acked = acked + redis.call('XACK', s, G, unpack(chunk))
      redis.call('XDEL', s, unpack(chunk))
    end
    -- Pending entries mean the queue exists: its streams go with it.
    if acked > 0 then redis.call('HINCRBY', kq(name), 'ack', acked) end
    i = last + 1
  end
  return 0
end

-- consume conn queue channel:tag
function ops.consume(a)
  local conn, name, ct = a[1], a[2], a[3]
  check_alive(conn)
  local q = queue_for(name, conn)
  redis.call('HSET', kqc(name), conn .. ':' .. ct, '1')
  redis.call('HSET', kc('cons', conn), ct, name)
  redis.call('HSET', kq(name), 'hc', '1', 'used', NOW)
  return q.ready
end

-- cancel conn channel:tag
function ops.cancel(a)
  local conn, ct = a[1], a[2]
  local name = redis.call('HGET', kc('cons', conn), ct)
  if not name then return 0 end
  redis.call('HDEL', kc('cons', conn), ct)
  redis.call('HDEL', kqc(name), conn .. ':' .. ct)
  consumer_left(name)
  return 1
end

-- outbox n -> {id, queue, reason, dlx, has dlk, dlk, body, meta, ...}: the oldest dead letters
function ops.outbox(a)
  local out = {}
  for _, e in ipairs(redis.call('XRANGE', K_OUTBOX, '-', '+', 'COUNT', tonumber(a[1]))) do
    local f = fields(e[2])
    -- Missing fields (an entry added from outside kelp) read as empty: nil would shift every later value.
    local row = {e[1], f.q or '', f.r or '', f.x or '', f.k and 1 or 0, f.k or '', f.b or '', f.m or ''}
    for _, v in ipairs(row) do out[#out + 1] = v end
  end
  return out
end
"""
