"""Lua sources for the Redis Streams broker: each runs atomically on the keys of ONE queue.

Every script touches only keys sharing the queue's `{hash tag}`, so it stays valid on Redis
Cluster. A delayed message is a sorted-set member packed as
`<band digit><len(message_id)>:<message_id><body>` (scored by its eta in ms), so the mover
needs no second key and a duplicate publish of the same message collapses into one member.
Stream entries carry `m` (message id), `b` (body) and, for a handed-back message, `n` (the
deliveries it already had); `w` marks a wake-up entry that carries no message.
"""

from __future__ import annotations

#: ZADD delayed messages; when one is due before the current head of the set, add a wake-up
#: entry to the stream so a consumer blocked in XREADGROUP re-reads the earliest eta.
#: KEYS: delayed zset, band-0 stream. ARGV: score, member, score, member, ...
SCHEDULE = """
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local earliest = nil
for i = 1, #ARGV, 2 do
  local score = tonumber(ARGV[i])
  redis.call('ZADD', KEYS[1], score, ARGV[i + 1])
  if earliest == nil or score < earliest then earliest = score end
end
if head[2] == nil or earliest < tonumber(head[2]) then
  redis.call('XADD', KEYS[2], '*', 'w', '1')
end
return 1
"""

#: Move due delayed messages to their band stream; return the next eta (ms) or nil.
#: KEYS: delayed zset, band 0, band 1, band 2 streams. ARGV: now_ms, max to move.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local band = tonumber(string.sub(m, 1, 1))
  local colon = string.find(m, ':', 2, true)
  local n = tonumber(string.sub(m, 2, colon - 1))
  redis.call('XADD', KEYS[2 + band], '*',
    'm', string.sub(m, colon + 1, colon + n), 'b', string.sub(m, colon + n + 1))
  redis.call('ZREM', KEYS[1], m)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return head[2]
"""

#: Take over entries idle past the lease (a dead consumer's, or our own lost ones) from the
#: cursor on; dead-letter those past max_deliveries; drop consumers that own nothing and were
#: idle past prune_ms (re-created on their next read). Returns {next cursor, {{id,
#: message_id, body, deliveries}, ...}}.
#: KEYS: stream, dead-letter stream. ARGV: group, consumer, min_idle_ms, count,
#: max_deliveries, dead-letter maxlen, prune_ms, queue, now (unix s), cursor.
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
        'reason', 'delivered ' .. (count - 1) .. ' times without being settled (max_deliveries='
          .. max .. ')',
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
