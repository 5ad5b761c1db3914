"""The redis script's reading operations: queue statistics, the bindings, and the router and matchers
exposed for tests and bench/scale.py.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module."""

LUA = r"""
-- stats -> {name, ready, unacked, consumers, delayed, published, delivered, acked, ...}
function ops.stats(a)
  sweep_due(16)
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', K_QUEUES)) do
    local q = load_queue(name)
    if q then
      local unacked = 0
      for _, suffix in ipairs(redis.call('SMEMBERS', kqss(name))) do
        unacked = unacked + redis.call('XPENDING', kqs(name, suffix), G)[1]
      end
      out[#out + 1] = name
      out[#out + 1] = q.ready
      out[#out + 1] = unacked
      out[#out + 1] = consumers(name)
      out[#out + 1] = held_count(name)
      out[#out + 1] = q.pub
      out[#out + 1] = q.dlv
      out[#out + 1] = tonumber(redis.call('HGET', kq(name), 'ack')) or 0
    end
  end
  return out
end

-- bindings -> {source, member, ...}
function ops.bindings(a)
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', K_EXCHANGES)) do
    for _, member in ipairs(redis.call('SMEMBERS', kxb(name))) do
      out[#out + 1] = name
      out[#out + 1] = member
    end
  end
  return out
end

-- route exchange key hcanon -> queue names (for tests: the Lua router on the stored bindings)
function ops.route(a) return route(a[1], a[2], a[3]) end

-- routecost exchange key hcanon -> {queues reached, topic trie nodes read} (for tests and bench/scale.py)
function ops.routecost(a)
  local names = route(a[1], a[2], a[3])
  return {#names, TRIE_VISITS}
end

-- topic pattern key ... -> 1/0 per pair (for tests: the Lua topic matcher)
function ops.topic(a)
  local out = {}
  for i = 1, #a, 2 do out[#out + 1] = topic_match(a[i], a[i + 1]) and 1 or 0 end
  return out
end

-- headers member hcanon ... -> 1/0 per pair (for tests: the Lua headers matcher on binding members)
function ops.headers(a)
  local out = {}
  for i = 1, #a, 2 do
    local b = cjson.decode(a[i])
    local headers = (a[i + 1] ~= '' and cjson.decode(a[i + 1])) or {}
    out[#out + 1] = headers_match(b[5], b[6], headers) and 1 or 0
  end
  return out
end
"""
