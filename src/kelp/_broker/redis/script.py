"""The server side of the ``redis://`` transport: one Lua script holding every atomic broker operation.

Loaded once per connection (``SCRIPT LOAD``) and called as ``EVALSHA sha 1 "{prefix}:" <op> <args...>``;
the comments in :data:`SOURCE` describe the key layout and each operation. Routing here mirrors
:mod:`kelp.routing` exactly (tests compare the two with hypothesis); dead-lettering is split: the script
moves a dead letter to the prefix's outbox stream atomically, and the client rewrites its headers with
:func:`kelp._broker.queue_args.dead_letter` and routes it (removing it from the outbox in the same script
call), so the ``x-death`` rules exist once, in Python.
"""

from __future__ import annotations

import hashlib

__all__ = ["SHA", "SOURCE"]

SOURCE = r"""-- kelp's broker on Redis: one script, one operation per call:
--   EVALSHA sha 1 "{prefix}:" <op> <args...>
--
-- Every operation that must be atomic (routing a publish to every matched queue, claiming deliveries,
-- requeueing, reaping a dead connection) runs here, so it is all-or-nothing for every other client.
-- KEYS[1] is the key prefix "{prefix}:"; every key this script touches starts with it, so with Redis
-- Cluster all of one prefix's keys hash to one slot (the braces are a hash tag).
--
-- Layout (P = KEYS[1]; <name> is always the LAST part of a key, so any name is safe):
--   P x:<ex>          hash   exchange: type durable ad internal args alt
--   P xb:<ex>         set    bindings of the exchange, one JSON member each (see codec.binding_member)
--   P xk:<ex>         hash   routing key -> JSON {destination: count} (direct, topic, fanout)
--   P xt:<ex>         hash   topic exchange: its bindings as a trie of words (see trie_change), as
--                            many as the exchange hash's field 'trie' says (see ensure_trie)
--   P rb:<q:|e:><n>   hash   reverse index: source exchange -> number of bindings to this destination
--   P rbm:<q:|e:><n>  set    the bindings to this destination, JSON [source, xb member] each
--   P exchanges, P queues   sets of names
--   P refusing        set    queues whose x-overflow may refuse a publish (reject-publish[-dlx]); it
--                            tells clients whether an unconfirmed publish may be buffered
--   P q:<q>           hash   queue: declaration, parsed x-arguments, counters (ready, bytes), used (ms)
--   P qc:<q>          hash   consumers: <conn>:<channel>:<tag> -> 1
--   P qss:<q>         set    stream suffixes created for the queue: "<level>" and "r<level>"
--   P qlv:<q>         zset   suffixes that may hold ready entries, best first (requeued before fresh,
--                            higher priority before lower)
--   P qs:<suffix>:<q> stream entries b (body) m (meta) [x (expires at, ms)] [n (deliveries so far)];
--                            one consumer group "g"; a consumer per connection, named by its id
--   P alive           zset   connection id -> liveness deadline (server ms)
--   P timed           zset   queue -> next time something may expire there (ms)
--   P outbox          stream dead letters waiting for a client to rewrite their headers and route them
--   P c:q:<conn>, P c:x:<conn>   sets: queues the connection read with acks, exclusive queues it owns
--   P c:cons:<conn>   hash   <channel>:<tag> -> queue
local P = KEYS[1]
local G = 'g'
local unpack = unpack or table.unpack

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()

local function fail(code, message) error({kelp = code .. ':' .. message}) end

local function kx(name) return P .. 'x:' .. name end
local function kxb(name) return P .. 'xb:' .. name end
local function kxk(name) return P .. 'xk:' .. name end
local function krb(dest) return P .. 'rb:' .. dest end
local function krbm(dest) return P .. 'rbm:' .. dest end
local function kxt(name) return P .. 'xt:' .. name end
local function kq(name) return P .. 'q:' .. name end
local function kqc(name) return P .. 'qc:' .. name end
local function kqss(name) return P .. 'qss:' .. name end
local function kqlv(name) return P .. 'qlv:' .. name end
local function kqs(name, suffix) return P .. 'qs:' .. suffix .. ':' .. name end
local function kc(what, conn) return P .. 'c:' .. what .. ':' .. conn end
local K_ALIVE, K_TIMED, K_OUTBOX = P .. 'alive', P .. 'timed', P .. 'outbox'
local K_QUEUES, K_EXCHANGES, K_REFUSING = P .. 'queues', P .. 'exchanges', P .. 'refusing'

local function fields(list)
  local f = {}
  for i = 1, #list, 2 do f[list[i]] = list[i + 1] end
  return f
end

-- The fields of a queue entry. An entry added from outside kelp may lack its body or meta: it reads as an
-- empty body with empty meta, so it moves like any other and the client finds it malformed (malformed.py).
local function entry_fields(list)
  local f = fields(list)
  if not (f.b and f.m) then f.b, f.m = f.b or '', '' end
  return f
end

-- Remove ids from a stream's group and the stream itself, in chunks (Lua's unpack has a limit).
local function ack_delete(s, ids)
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    redis.call('XACK', s, G, unpack(chunk))
    redis.call('XDEL', s, unpack(chunk))
  end
end

------------------------------------------------------------------------------------------------ routing

local function split(s)
  local words = {}
  if s == '' then return words end
  local start = 1
  while true do
    local i = string.find(s, '.', start, true)
    if not i then
      words[#words + 1] = string.sub(s, start)
      return words
    end
    words[#words + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

-- kelp.routing.topic_match: words split on ".", "*" one word, "#" zero or more; backtracking to the
-- last "#" only, so the cost is O(len(pattern) * len(key)).
local function topic_match(pattern, key)
  local pw = {}
  for _, w in ipairs(split(pattern)) do
    if not (w == '#' and pw[#pw] == '#') then pw[#pw + 1] = w end
  end
  local words = split(key)
  local p, w, star, resume = 1, 1, 0, 0
  local np, nw = #pw, #words
  while w <= nw do
    if p <= np and pw[p] == '#' then
      star, resume = p, w
      p = p + 1
    elseif p <= np and (pw[p] == '*' or pw[p] == words[w]) then
      p, w = p + 1, w + 1
    elseif star > 0 then
      resume = resume + 1
      p, w = star + 1, resume
    else
      return false
    end
  end
  while p <= np and pw[p] == '#' do p = p + 1 end
  return p > np
end

-- kelp.routing.headers_match on canonical values (codec.canon); false in an item means "present".
local function headers_match(any, items, headers)
  if any == 1 then
    for _, item in ipairs(items) do
      local actual = headers[item[1]]
      if actual ~= nil and (item[2] == false or item[2] == actual) then return true end
    end
    return false
  end
  for _, item in ipairs(items) do
    local actual = headers[item[1]]
    if actual == nil or (item[2] ~= false and item[2] ~= actual) then return false end
  end
  return true
end

local function add_dests(found, json)
  for dest in pairs(cjson.decode(json)) do found[#found + 1] = dest end
end

-- Topic bindings as a trie of words (kelp._topic_trie), in the hash P xt:<ex>. A node's path is
-- "." .. word for each word of a normalised binding key ("#.#" is "#"): the root is "", one empty word is
-- ".". Field 'n' .. path counts the bindings whose key passes through that node; 'd' .. path holds the
-- JSON {destination: count} of those whose key ends there. A publish reads only the nodes its routing
-- key's words can reach (the word, "*", and "#" at every place it can stop), never every binding.
local function trie_paths(pattern)
  local paths, path, last = {''}, '', nil
  for _, w in ipairs(split(pattern)) do
    if not (w == '#' and last == '#') then
      path = path .. '.' .. w
      paths[#paths + 1] = path
      last = w
    end
  end
  return paths
end

local function trie_change(source, pattern, dest, delta)
  local t = kxt(source)
  local paths = trie_paths(pattern)
  for _, path in ipairs(paths) do
    if redis.call('HINCRBY', t, 'n' .. path, delta) <= 0 then redis.call('HDEL', t, 'n' .. path) end
  end
  local field = 'd' .. paths[#paths]
  local json = redis.call('HGET', t, field)
  local dests = json and cjson.decode(json) or {}
  local count = (dests[dest] or 0) + delta
  if count > 0 then dests[dest] = count else dests[dest] = nil end
  if next(dests) == nil then
    redis.call('HDEL', t, field)
  else
    redis.call('HSET', t, field, cjson.encode(dests))
  end
end

-- The exchange hash's field 'trie' is the number of bindings the trie holds. When it differs from the
-- number of bindings (P xb:), they were changed by something that does not keep the trie (bindings
-- stored before it existed, an older kelp during an upgrade): rebuild it from P xk:<ex>, once.
local function ensure_trie(name, count)
  local bindings = redis.call('SCARD', kxb(name))
  if tonumber(count) == bindings then return end
  redis.call('DEL', kxt(name))
  local all = redis.call('HGETALL', kxk(name))
  for i = 1, #all, 2 do
    for dest, n in pairs(cjson.decode(all[i + 1])) do trie_change(name, all[i], dest, n) end
  end
  redis.call('HSET', kx(name), 'trie', bindings)
end

local TRIE_VISITS = 0  -- nodes the topic walks of this call read (ops.routecost)

-- Add the destinations of every binding key in the trie t that matches words. Depth-first over (node
-- path, index of the next word) with a stack rather than recursion, each pair once: patterns with several
-- "#" reach a pair by many ways, and the walk must grow with nodes * words, not with the ways.
local function trie_match(t, words, found)
  local nw = #words
  local pending, seen = {{'', 1}}, {}
  while #pending > 0 do
    local top = table.remove(pending)
    local path, i = top[1], top[2]
    local id = path .. '|' .. i  -- unique: the last "|" separates the number from the path
    if not seen[id] then
      seen[id] = true
      TRIE_VISITS = TRIE_VISITS + 1
      local word = words[i]
      local fields = {'n' .. path .. '.*', 'n' .. path .. '.#'}
      if i > nw then
        fields[3] = 'd' .. path
      elseif word ~= '*' and word ~= '#' then  -- a literal "*" or "#" is matched by the wildcard edges
        fields[3] = 'n' .. path .. '.' .. word
      end
      local v = redis.call('HMGET', t, unpack(fields))
      if i > nw then
        if v[3] then add_dests(found, v[3]) end
      else
        if v[3] then pending[#pending + 1] = {path .. '.' .. word, i + 1} end
        if v[1] then pending[#pending + 1] = {path .. '.*', i + 1} end
      end
      if v[2] then  -- "#" swallows zero or more words: try every place it can stop
        for j = i, nw + 1 do pending[#pending + 1] = {path .. '.#', j} end
      end
    end
  end
end

-- kelp.routing.route: the queues reached from exchange, following exchange-to-exchange bindings, each
-- exchange visited once; the alternate exchange when nothing matched. Returns a list of queue names.
local function route(exchange, key, hcanon)
  local queues, seen_queue, order = {}, {}, {}
  local seen = {[exchange] = true}
  local pending = {exchange}
  local headers = nil
  while #pending > 0 do
    local name = table.remove(pending)
    local x = redis.call('HMGET', kx(name), 'type', 'trie')
    local xtype = x[1]
    if xtype then
      local found = {}
      if xtype == 'direct' then
        local json = redis.call('HGET', kxk(name), key)
        if json then add_dests(found, json) end
      elseif xtype == 'fanout' then
        for _, json in ipairs(redis.call('HVALS', kxk(name))) do add_dests(found, json) end
      elseif xtype == 'topic' then
        ensure_trie(name, x[2])
        trie_match(kxt(name), split(key), found)
      else
        if headers == nil then
          headers = (hcanon ~= '' and cjson.decode(hcanon)) or {}
        end
        for _, member in ipairs(redis.call('SMEMBERS', kxb(name))) do
          local b = cjson.decode(member)
          if headers_match(b[5], b[6], headers) then found[#found + 1] = b[1]:sub(1, 1) .. ':' .. b[2] end
        end
      end
      for _, dest in ipairs(found) do
        local kind, target = dest:sub(1, 1), dest:sub(3)
        if kind == 'q' then
          if not seen_queue[target] then
            seen_queue[target] = true
            order[#order + 1] = target
          end
        elseif not seen[target] then
          seen[target] = true
          pending[#pending + 1] = target
        end
      end
    end
  end
  return order
end

------------------------------------------------------------------------------------------------- queues

local QFIELDS = {'dur', 'excl', 'ad', 'args', 'ttl', 'exp', 'ml', 'mlb', 'ovf', 'mp', 'dlx', 'dlk',
                 'ready', 'bytes', 'used', 'hc', 'tx'}

local function load_queue(name)
  local v = redis.call('HMGET', kq(name), unpack(QFIELDS))
  if not v[1] then return nil end
  return {
    name = name, dur = v[1], excl = v[2], ad = v[3], args = v[4],
    ttl = tonumber(v[5]), exp = tonumber(v[6]), ml = tonumber(v[7]), mlb = tonumber(v[8]),
    ovf = v[9], mp = tonumber(v[10]) or 0, dlx = v[11], dlk = v[12],
    ready = tonumber(v[13]), bytes = tonumber(v[14]), used = tonumber(v[15]), hc = v[16], tx = v[17],
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
  redis.call('HSET', kq(q.name), 'ready', q.ready, 'bytes', q.bytes)
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

------------------------------------------------------------------------------------------------ entries

local function level_of(suffix)
  if suffix:sub(1, 1) == 'r' then return tonumber(suffix:sub(2)), true end
  return tonumber(suffix), false
end

local function add_entry(q, level, requeued, body, meta, expires, deliveries)
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

-- memory._enqueue: TTL (the lower of message and queue), priority level, length limits.
local function enqueue(q, body, meta, ttl, priority)
  if q.ttl then ttl = (ttl == nil) and q.ttl or math.min(ttl, q.ttl) end
  local expires = ttl and (NOW + ttl) or nil
  local level = math.max(0, math.min(priority, q.mp))
  local size = #body
  if (q.ml or q.mlb) and ((q.ml and q.ready + 1 > q.ml) or (q.mlb and q.bytes + size > q.mlb)) then
    if q.ovf ~= 'drop-head' then
      if q.ovf == 'reject-publish-dlx' then dead_letter(q, body, meta, 'maxlen') end
      return false
    end
    add_entry(q, level, false, body, meta, expires, 0)
    while ((q.ml and q.ready > q.ml) or (q.mlb and q.bytes > q.mlb)) and q.ready > 0 do
      if not drop_head(q, 'maxlen') then break end
    end
    return true
  end
  add_entry(q, level, false, body, meta, expires, 0)
  return true
end

-- The id of the last entry of stream s the group handed out.
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
  local due = nil
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
  if taken > 0 and not no_ack then redis.call('SADD', kc('q', conn), q.name) end
  return taken
end

-- Put pending entries back at the head of their queues, flagged redelivered. Only an entry still
-- pending (XACK returns 1) moves, so an owner and a reaper racing never requeue it twice.
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
        local level = level_of(suffix)
        add_entry(q, level, true, f.b, f.m, tonumber(f.x), (tonumber(f.n) or 0) + 1)
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
  return 0
end

-- A connection silent for longer than its liveness was released (its messages redelivered): it must
-- reconnect rather than go on as if it still held them.
local function check_alive(conn)
  if not redis.call('ZSCORE', K_ALIVE, conn) then
    fail('LOST', 'this connection was silent for longer than its liveness and was released')
  end
end

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
  if xtype == 'headers' and a[7] ~= '' then fail('VALUE', a[7]) end
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

-- publish n (exchange key hcanon mandatory priority ttl body meta outbox_id) * n
-- Routes and stores every envelope atomically. An envelope with an outbox id is a dead letter: it is
-- stored only if this call is the one that removes it from the outbox, and a missing exchange drops it;
-- mandatory 'x' only removes it (a dead-letter cycle). A missing exchange fails the whole call, except
-- for bpublish (a client's buffered, unconfirmed publishes), which drops those envelopes and names them.
-- Returns {unroutable mandatory envelope indexes, refused queue names, outbox length,
-- missing exchange names, number of queues that may refuse a publish}.
local function publish(a, lenient)
  local n = tonumber(a[1])
  local missing, skip = {}, {}
  for i = 0, n - 1 do
    local base = 2 + i * 9
    local exchange = a[base]
    if exchange ~= '' and a[base + 8] == '' and redis.call('EXISTS', kx(exchange)) == 0 then
      if not lenient then fail('NOT_FOUND', "no exchange '" .. exchange .. "' in vhost '/'") end
      missing[#missing + 1] = exchange
      skip[i] = true
    end
  end
  local returned, refused, cache = {}, {}, {}
  for i = 0, n - 1 do
    local base = 2 + i * 9
    local exchange, key, hcanon, mandatory = a[base], a[base + 1], a[base + 2], a[base + 3]
    local priority, ttl, body, meta, outbox = tonumber(a[base + 4]) or 0, tonumber(a[base + 5]),
      a[base + 6], a[base + 7], a[base + 8]
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
      local stored = 0
      for _, name in ipairs(names) do
        local q = cache[name]
        if q == nil then
          q = live_queue(name) or false
          cache[name] = q
        end
        if q then
          stored = stored + 1
          if not enqueue(q, body, meta, ttl, priority) then refused[#refused + 1] = name end
        end
      end
      if stored == 0 and mandatory == '1' then returned[#returned + 1] = i end
    end
  end
  save_all(cache)
  return {returned, refused, redis.call('XLEN', K_OUTBOX), missing, redis.call('SCARD', K_REFUSING)}
end

function ops.publish(a) return publish(a, false) end
function ops.bpublish(a) return publish(a, true) end

-- claim conn n (queue room no_ack tag) * n: deliveries for the connection's consumers.
-- Returns {outbox length, tag, suffix, id, body, meta, deliveries, ...}; then 'gone', tag for each consumer
-- whose queue no longer exists (deleted: the client cancels it); with nothing to deliver or cancel, the
-- streams to watch for new entries follow a 'watch' marker as (key, last id) pairs.
function ops.claim(a)
  local conn, n = a[1], tonumber(a[2])
  check_alive(conn)
  sweep_due(4)
  local out = {0}
  local cache = {}
  for i = 0, n - 1 do
    local base = 3 + i * 4
    local name, room = a[base], tonumber(a[base + 1])
    local q = cache[name]
    if q == nil then
      q = load_queue(name) or false
      cache[name] = q
    end
    if q and room > 0 and q.ready > 0 then
      take(q, conn, room, a[base + 2] == '1', a[base + 3], out)
    elseif not q then
      out[#out + 1] = 'gone'
      out[#out + 1] = a[base + 3]
    end
  end
  save_all(cache)
  if #out == 1 then
    out[#out + 1] = 'watch'
    for i = 0, n - 1 do
      local base = 3 + i * 4
      local name = a[base]
      local q = cache[name]
      if q and tonumber(a[base + 1]) > 0 then
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
  end
  out[1] = redis.call('XLEN', K_OUTBOX)
  return out
end

-- get conn queue no_ack -> {outbox length, ready after, suffix, id, body, meta, deliveries}
function ops.get(a)
  local conn, name, no_ack = a[1], a[2], a[3] == '1'
  check_alive(conn)
  sweep_due(4)
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

-- stats -> {name, ready, unacked, consumers, ...}
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

local handler = ops[ARGV[1]]
if not handler then return redis.error_reply('KELP:VALUE:unknown operation ' .. tostring(ARGV[1])) end
local args = {}
for i = 2, #ARGV do args[i - 1] = ARGV[i] end
local ok, result = pcall(handler, args)
if ok then return result end
if type(result) == 'table' and result.kelp then return redis.error_reply('KELP:' .. result.kelp) end
error(result)
"""

#: The script's SHA1, as EVALSHA names it.
SHA = hashlib.sha1(SOURCE.encode()).hexdigest()
