"""The redis script's router: kelp.routing (direct, fanout, topic trie, headers) in Lua.

A part of :data:`kelp._broker.redis.script.SOURCE`, which joins the parts in order; see that module."""

LUA = r"""
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

"""
