"""The redis script's queue records: load and save counters, bindings, deletion, exclusivity.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module."""

LUA = r"""
------------------------------------------------------------------------------------------------- queues

local QFIELDS = {'dur', 'excl', 'ad', 'args', 'ttl', 'exp', 'ml', 'mlb', 'ovf', 'mp', 'dlx', 'dlk',
                 'ready', 'bytes', 'used', 'hc', 'tx', 'pub', 'dlv'}

local function load_queue(name)
  local v = redis.call('HMGET', kq(name), unpack(QFIELDS))
  if not v[1] then return nil end
  return {
    name = name, dur = v[1], excl = v[2], ad = v[3], args = v[4],
    ttl = tonumber(v[5]), exp = tonumber(v[6]), ml = tonumber(v[7]), mlb = tonumber(v[8]),
    ovf = v[9], mp = tonumber(v[10]) or 0, dlx = v[11], dlk = v[12],
    ready = tonumber(v[13]), bytes = tonumber(v[14]), used = tonumber(v[15]), hc = v[16], tx = v[17],
    pub = tonumber(v[18]) or 0, dlv = tonumber(v[19]) or 0,
  }
end

-- Entries added from outside kelp (a raw XADD) are not counted: when a counter would go negative, count
-- the ready entries again (every stream's length less its pending entries) and restart the byte count.
local function save_counters(q)
  if q.ready < 0 or q.bytes < 0 then
    local ready = 0
    for _, suffix in ipairs(redis.call('SMEMBERS', kqss(q.name))) do
      local s = kqs(q.name, suffix)
      ready = ready + redis.call('XLEN', s) - redis.call('XPENDING', s, G)[1]
    end
    q.ready, q.bytes = ready, math.max(q.bytes, 0)
  end
  redis.call('HSET', kq(q.name), 'ready', q.ready, 'bytes', q.bytes, 'pub', q.pub, 'dlv', q.dlv)
end

local function consumers(name) return redis.call('HLEN', kqc(name)) end

local function schedule(name, at) redis.call('ZADD', K_TIMED, 'LT', at, name) end

local function touch(q)
  q.used = NOW
  redis.call('HSET', kq(q.name), 'used', NOW)
  if q.exp and consumers(q.name) == 0 then schedule(q.name, NOW + q.exp) end
end

local function remove_binding_member(source, member)
  local x = redis.call('HMGET', kx(source), 'type', 'trie')
  local topic = x[1] == 'topic'
  if topic then ensure_trie(source, x[2]) end
  if redis.call('SREM', kxb(source), member) == 0 then return false end
  local b = cjson.decode(member)
  local dest = b[1]:sub(1, 1) .. ':' .. b[2]
  redis.call('SREM', krbm(dest), cjson.encode({source, member}))
  if topic then
    trie_change(source, b[3], dest, -1)
    redis.call('HINCRBY', kx(source), 'trie', -1)
  end
  local json = redis.call('HGET', kxk(source), b[3])
  if json then
    local dests = cjson.decode(json)
    local count = (dests[dest] or 1) - 1
    if count > 0 then dests[dest] = count else dests[dest] = nil end
    if next(dests) == nil then
      redis.call('HDEL', kxk(source), b[3])
    else
      redis.call('HSET', kxk(source), b[3], cjson.encode(dests))
    end
  end
  if redis.call('HINCRBY', krb(dest), source, -1) <= 0 then redis.call('HDEL', krb(dest), source) end
  return true
end

local function maybe_auto_delete_exchange(name)
  if redis.call('HGET', kx(name), 'ad') == '1' and redis.call('SCARD', kxb(name)) == 0 then
    redis.call('DEL', kx(name), kxb(name), kxk(name), kxt(name))
    redis.call('SREM', K_EXCHANGES, name)
  end
end

-- Remove every binding of source to dest ("q:name" / "e:name"); return how many. Found through the
-- destination's own index (P rbm:), so it costs that destination's bindings, not the exchange's.
local function remove_destination(source, dest)
  local expected = tonumber(redis.call('HGET', krb(dest), source)) or 0
  local removed = 0
  for _, entry in ipairs(redis.call('SMEMBERS', krbm(dest))) do
    local e = cjson.decode(entry)
    if e[1] == source and remove_binding_member(source, e[2]) then removed = removed + 1 end
  end
  if removed < expected then  -- bindings made before that index existed: look through the exchange's
    for _, member in ipairs(redis.call('SMEMBERS', kxb(source))) do
      local b = cjson.decode(member)
      if b[1]:sub(1, 1) .. ':' .. b[2] == dest and remove_binding_member(source, member) then
        removed = removed + 1
      end
    end
  end
  return removed
end

local function delete_queue(name)
  local q = load_queue(name)
  if not q then return 0 end
  for _, suffix in ipairs(redis.call('SMEMBERS', kqss(name))) do redis.call('DEL', kqs(name, suffix)) end
  redis.call('DEL', kq(name), kqc(name), kqss(name), kqlv(name))
  drop_held(name)
  redis.call('SREM', K_QUEUES, name)
  redis.call('SREM', K_REFUSING, name)
  redis.call('ZREM', K_TIMED, name)
  local dest = 'q:' .. name
  local sources = redis.call('HKEYS', krb(dest))
  for _, source in ipairs(sources) do
    if remove_destination(source, dest) > 0 then maybe_auto_delete_exchange(source) end
  end
  redis.call('DEL', krb(dest), krbm(dest))
  return q.ready
end

-- The queue, or nil when it does not exist or has just expired (x-expires: unused and no consumers).
local function live_queue(name)
  local q = load_queue(name)
  if q and q.exp and q.used + q.exp <= NOW and consumers(name) == 0 then
    delete_queue(name)
    return nil
  end
  return q
end

local function vhost_queue(name) return "no queue '" .. name .. "' in vhost '/'" end

local function check_exclusive(q, conn)
  if q.excl ~= '' and q.excl ~= conn then
    fail('LOCKED', "cannot obtain exclusive access to locked queue '" .. q.name ..
      "': it belongs to another connection")
  end
end

local function queue_for(name, conn)
  local q = live_queue(name)
  if not q then fail('NOT_FOUND', vhost_queue(name)) end
  check_exclusive(q, conn)
  return q
end

"""
