"""Lua sources for the Redis Streams broker: each runs atomically on the keys of ONE queue.

Every script touches only keys sharing the queue's `{hash tag}`, so it stays valid on Redis
Cluster. A delayed message is a sorted-set member packed as
`<band digit><len(message_id)>:<message_id><body>` (scored by its eta in ms), so the mover
needs no second key and a duplicate publish of the same message collapses into one member.
Stream entries carry `m` (message id), `b` (body) and, for a handed-back message, `n` (the
deliveries it already had); `w` marks a wake-up entry that carries no message.
"""

from __future__ import annotations

from aiotask.brokers._redis_fair_lua import ADD_DELAYED_FN, RING_ADD_FN

#: Publish one queue's part of a batch, at most once however often it is retried: the first
#: run sets the batch's marker (SET NX) and adds the messages; a retry that finds the marker
#: does nothing. Delayed messages go to the sorted set; one due before the current head adds a
#: wake-up entry to the band-0 stream so a consumer blocked in XREADGROUP re-reads the
#: earliest eta. Markers of batches whose reply already arrived are deleted on the way.
#: KEYS: marker, band 0, 1, 2 streams, delayed zset, confirmed markers to delete...
#: ARGV: marker ttl_ms, immediate count, then (band, message_id, body) per immediate message,
#: then (score, member) per delayed one. Returns 1, or 0 for a batch already published.
PUBLISH = (
    ADD_DELAYED_FN
    + """
if #KEYS > 5 then redis.call('UNLINK', unpack(KEYS, 6)) end
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local last = 2 + 3 * tonumber(ARGV[2])
for i = 3, last, 3 do
  redis.call('XADD', KEYS[2 + tonumber(ARGV[i])], '*', 'm', ARGV[i + 1], 'b', ARGV[i + 2])
end
if last < #ARGV then add_delayed(KEYS[5], KEYS[2], last + 1) end
return 1
"""
)

#: Move due delayed messages to their band stream; return the next eta (ms) or nil. A keyed
#: message (band digit 3-5, fairness: _redis_fair_lua.PUBLISH_FAIR) goes to its key's stream.
#: KEYS: delayed zset, band 0, band 1, band 2 streams. ARGV: now_ms, max to move.
MOVE_DUE = (
    RING_ADD_FN
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local keyed, base = 0, string.sub(KEYS[1], 1, -9)
for _, m in ipairs(due) do
  local band = tonumber(string.sub(m, 1, 1))
  local colon = string.find(m, ':', 2, true)
  local n = tonumber(string.sub(m, 2, colon - 1))
  if band > 2 then
    local key = string.sub(m, colon + 1, colon + n)
    local rest = colon + n + 1
    local c2 = string.find(m, ':', rest, true)
    local k = tonumber(string.sub(m, rest, c2 - 1))
    local s = base .. ':f:' .. key .. ':s' .. (band - 3)
    redis.call('XADD', s, '*', 'm', string.sub(m, c2 + 1, c2 + k), 'b', string.sub(m, c2 + k + 1))
    redis.call('SADD', base .. ':fkeys', s)
    ring_add(base, key)
    keyed = keyed + 1
  else
    redis.call('XADD', KEYS[2 + band], '*',
      'm', string.sub(m, colon + 1, colon + n), 'b', string.sub(m, colon + n + 1))
  end
  redis.call('ZREM', KEYS[1], m)
end
if keyed > 1 then wake(base, KEYS[2], keyed - 1) end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return head[2]
"""
)

#: Take over entries idle past the lease (a dead consumer's, or our own lost ones) from the
#: cursor on; dead-letter those past max_deliveries; drop consumers that own nothing and were
#: idle past prune_ms (re-created on their next read). Returns {next cursor, {{id,
#: message_id, body, deliveries}, ...}}.
#: KEYS: stream, dead-letter stream. ARGV: group, consumer, min_idle_ms, count,
#: max_deliveries, dead-letter maxlen, prune_ms, queue, now (unix s), cursor, reason head,
#: reason tail (the dead-letter reason is head .. deliveries .. tail, worded by _common).
RECLAIM = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[10],
  'COUNT', ARGV[4])
local out = {}
local max = tonumber(ARGV[5])
for _, e in ipairs(claimed[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local id, f, fields = e[1], e[2], {}
    for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local count = 1
    if pending[1] then count = pending[1][4] end
    count = count + tonumber(fields['n'] or '0')
    if fields['w'] then
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
    elseif count > max then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
        'message_id', fields['m'] or id, 'body', fields['b'] or f[2] or '',
        'reason', ARGV[11] .. (count - 1) .. ARGV[12],
        'queue', ARGV[8], 'time', ARGV[9])
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
    else
      out[#out + 1] = {id, fields['m'] or id, fields['b'] or f[2] or '', count}
    end
  end
end
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[7]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
  end
end
return {claimed[1], out}
"""

#: Give back every entry this consumer still owns (re-added at the tail carrying its
#: delivery count, the old entry acked and deleted), then drop the consumer.
#: KEYS: stream. ARGV: group, consumer.
HAND_BACK = """
local moved = 0
while true do
  local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 500, ARGV[2])
  if pending.err then return 0 end
  if #pending == 0 then break end
  for _, p in ipairs(pending) do
    local id = p[1]
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    if entry[1] then
      local f, fields = entry[1][2], {}
      for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
      if not fields['w'] then
        local n = tonumber(fields['n'] or '0') + p[4]
        if fields['m'] and fields['b'] then
          redis.call('XADD', KEYS[1], '*', 'm', fields['m'], 'b', fields['b'], 'n', n)
        else
          redis.call('XADD', KEYS[1], '*', unpack(f))
        end
        moved = moved + 1
      end
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
  end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return moved
"""

# Read new entries from the streams in KEYS, in order (highest priority band first), at most
# ARGV[3] in all: strict priority with no over-fetch, in one round trip. Never blocks.
# ARGV: group, consumer, limit.
READ_BANDS = """
local left = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if left <= 0 then break end
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', key, '>')
  if r then
    left = left - #r[1][2]
    out[#out + 1] = r[1]
  end
end
return out
"""

#: Renew the lease of the ids this consumer still owns (XCLAIM ... 0 JUSTID resets their idle
#: time); an id another consumer took over after a lapse is left alone, never taken back.
#: Returns how many were renewed. KEYS: stream. ARGV: group, consumer, id, id, ...
EXTEND = """
local mine = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then mine[#mine + 1] = ARGV[i] end
end
local renewed = #mine - 5
if renewed > 0 then
  mine[#mine + 1] = 'JUSTID'
  redis.call(unpack(mine))
end
return renewed
"""

#: Hand back entries this consumer still owns: re-add each at the tail with `n`, the deliveries
#: the next delivery builds on (uncounted: the one being handed back is not counted; counted:
#: it is), ack and delete the old entry. A counted hand-back of an exhausted message
#: dead-letters it instead. Entries another consumer owns by now are left alone.
#: KEYS: stream, dead-letter stream. ARGV: group, consumer, counted (0/1), max_deliveries,
#: dead-letter maxlen, queue, now (unix s), reason head, reason tail, then (id, deliveries)...
NACK = """
local counted, max = ARGV[3] == '1', tonumber(ARGV[4])
local buried = 0
for i = 10, #ARGV, 2 do
  local id, d = ARGV[i], tonumber(ARGV[i + 1])
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    if entry[1] then
      local f, fields = entry[1][2], {}
      for j = 1, #f, 2 do fields[f[j]] = f[j + 1] end
      local m, b = fields['m'] or id, fields['b'] or f[2] or ''
      if fields['w'] then
        -- a wake-up entry: nothing to hand back
      elseif counted and d >= max then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'message_id', m, 'body', b,
          'reason', ARGV[8] .. d .. ARGV[9], 'queue', ARGV[6], 'time', ARGV[7])
        buried = buried + 1
      else
        local n = d - 1
        if counted then n = d end
        if n > 0 then
          redis.call('XADD', KEYS[1], '*', 'm', m, 'b', b, 'n', n)
        else
          redis.call('XADD', KEYS[1], '*', 'm', m, 'b', b)
        end
      end
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
  end
end
return buried
"""

#: A consumer's liveness: its heartbeat expiry (server clock, ms) in the queue's consumer set.
#: KEYS: consumers zset. ARGV: consumer, lost_after_ms, key ttl_ms.
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

#: Take over the entries of consumers whose heartbeat expired (never one with a fresh
#: heartbeat, nor one that never sent any: those keep the lease rule), at most `count` in all;
#: dead-letter those past max_deliveries; forget a lost consumer once it owns nothing.
#: Returns {more (1 if a lost consumer still owns entries), {{band, id, message_id, body,
#: deliveries}, ...}, ms until the next other consumer's heartbeat expires (-1: none)}.
#: KEYS: consumers zset, dead-letter stream, band 0, 1, 2 streams. ARGV: group, consumer,
#: count, max_deliveries, dead-letter maxlen, queue, now (unix s), reason head, reason tail.
TAKEOVER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local left, max, more, out = tonumber(ARGV[3]), tonumber(ARGV[4]), 0, {}
for _, c in ipairs(lost) do
  if c ~= ARGV[2] and left > 0 then
    local drained = true
    for s = 3, 5 do
      if left <= 0 then
        drained = false
        break
      end
      local pending = redis.pcall('XPENDING', KEYS[s], ARGV[1], '-', '+', left, c)
      if type(pending) == 'table' and not pending.err and #pending > 0 then
        if #pending >= left then drained = false end
        local counts, claim = {}, {'XCLAIM', KEYS[s], ARGV[1], ARGV[2], 0}
        for _, p in ipairs(pending) do
          counts[p[1]] = p[4]
          claim[#claim + 1] = p[1]
        end
        for _, e in ipairs(redis.call(unpack(claim))) do
          if type(e) == 'table' and type(e[2]) == 'table' then
            local id, f, fields = e[1], e[2], {}
            for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
            local count = (counts[id] or 0) + 1 + tonumber(fields['n'] or '0')
            if fields['w'] then
              redis.call('XACK', KEYS[s], ARGV[1], id)
              redis.call('XDEL', KEYS[s], id)
            elseif count > max then
              redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
                'message_id', fields['m'] or id, 'body', fields['b'] or f[2] or '',
                'reason', ARGV[8] .. (count - 1) .. ARGV[9], 'queue', ARGV[6], 'time', ARGV[7])
              redis.call('XACK', KEYS[s], ARGV[1], id)
              redis.call('XDEL', KEYS[s], id)
            else
              out[#out + 1] = {s - 3, id, fields['m'] or id, fields['b'] or f[2] or '', count}
              left = left - 1
            end
          end
        end
      end
    end
    if drained then
      redis.call('ZREM', KEYS[1], c)
      for s = 3, 5 do redis.pcall('XGROUP', 'DELCONSUMER', KEYS[s], ARGV[1], c) end
    else
      more = 1
    end
  elseif c ~= ARGV[2] then
    more = 1
  end
end
local wait, head = -1, redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
for i = 1, #head, 2 do
  if head[i] ~= ARGV[2] then
    wait = math.max(tonumber(head[i + 1]) - now, 0)
    break
  end
end
return {more, out, wait}
"""

#: Counts for `aiotask queues`: {ready, delayed, in flight, dead}. Every acked entry is
#: deleted, so a band's undelivered entries are its last XLEN - pending ones; wake-up entries
#: among them (no message) are left out when there are at most ARGV[2] to look at.
#: KEYS: band 0, 1, 2 streams, delayed zset, dead-letter stream. ARGV: group, scan cap.
QUEUE_STATS = """
local ready, leased, cap = 0, 0, tonumber(ARGV[2])
for s = 1, 3 do
  local len = redis.call('XLEN', KEYS[s])
  local pending = 0
  local p = redis.pcall('XPENDING', KEYS[s], ARGV[1])
  if type(p) == 'table' and not p.err and p[1] then pending = tonumber(p[1]) end
  local undelivered = math.max(len - pending, 0)
  if undelivered > 0 and undelivered <= cap then
    for _, e in ipairs(redis.call('XREVRANGE', KEYS[s], '+', '-', 'COUNT', undelivered)) do
      local f, wake = e[2], false
      for i = 1, #f, 2 do if f[i] == 'w' then wake = true end end
      if not wake then ready = ready + 1 end
    end
  else
    ready = ready + undelivered
  end
  leased = leased + pending
end
return {ready, redis.call('ZCARD', KEYS[4]), leased, redis.call('XLEN', KEYS[5])}
"""
