"""The head of the redis script: the key layout, the per-call values, small helpers.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module."""

LUA = r"""-- kelp's broker on Redis: one script, one operation per call:
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
--   P q:<q>           hash   queue: declaration, parsed x-arguments, counters (ready, bytes), used (ms),
--                            traffic since declared: pub (entries added), dlv (delivered), ack (acked)
--   P qc:<q>          hash   consumers: <conn>:<channel>:<tag> -> 1
--   P qss:<q>         set    stream suffixes created for the queue: "<level>" and "r<level>"
--   P qlv:<q>         zset   suffixes that may hold ready entries, best first (requeued before fresh,
--                            higher priority before lower)
--   P qs:<suffix>:<q> stream entries b (body) m (meta) [x (expires at, ms)] [n (deliveries so far)];
--                            one consumer group "g"; a consumer per connection, named by its id
--   P alive           zset   connection id -> liveness deadline (server ms)
--   P clients         hash   connection id -> CLIENT ID of its pipelined connection (clients check that
--                            it is still listed; reap removes it)
--   P opub, P c:nack:<conn>   hash conn -> opub calls since its last confirm; list of their refusals
--   P timed           zset   queue -> next time something may expire there (ms)
--   P outbox          stream dead letters waiting for a client to rewrite their headers and route them
--   P c:q:<conn>, P c:x:<conn>   sets: queues the connection read with acks, exclusive queues it owns
--   P c:cons:<conn>   hash   <channel>:<tag> -> queue
--   P qd:<q>, P qdm:<q>, P qdi:<q>, P dq, P dseq   delayed messages held until due (lua_delayed)
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
-- Defined with the delayed messages (lua_delayed), called from queue deletion before that.
local drop_held

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

"""
