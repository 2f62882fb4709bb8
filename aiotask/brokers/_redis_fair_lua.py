"""Lua sources for fairness across keys on the Redis Streams broker (see _redis_fair.py).

Per queue (every key hash-tagged `{queue}`, so each script stays in one slot on a Cluster):
- `<base>:f:<key>:s<band>`: a keyed message's stream (one per key and priority band), read
  through the same consumer group as the queue's own band streams (created by the reader
  script the first time it reads one, from id 0, so nothing added before is skipped);
- `<base>:fring`: a list, the round-robin ring of the keys with new entries. The member ""
  stands for the queue's own (unkeyed) band streams and is in the ring while it exists; the
  next key served is the list's TAIL and a served key goes back to the HEAD (RPOPLPUSH, any
  Redis version). The ring existing is what switches a queue's reads to round-robin;
- `<base>:fset`: the keys in the ring (membership test);
- `<base>:fkeys`: every keyed stream that exists (lease reclaim, takeover, stats, purge, and
  the clean-up of drained streams walk it).
Keyed stream names are built inside the scripts from the queue's base name, so they are not
declared in KEYS: they share the declared keys' hash slot by construction.
"""

from __future__ import annotations

#: Put `key` in the ring (at the back of the rotation) unless it is there; creates the ring,
#: with the unkeyed member first, when the queue had no keyed message waiting.
RING_ADD_FN = """
local function ring_add(base, key)
  local ring = base .. ':fring'
  if redis.call('SADD', base .. ':fset', key) == 1 then
    if redis.call('LLEN', ring) == 0 then redis.call('LPUSH', ring, '') end
    redis.call('LPUSH', ring, key)
  end
end
local function wake(base, stream0, wanted)
  -- blocked readers wait on the queue's own streams: one wake-up entry per live consumer
  -- at most (they block with COUNT 1), less those still unread at the stream's tail, so
  -- keyed sends with no worker running do not pile wake-ups up
  local alive = redis.call('ZCARD', base .. ':consumers')
  local n = math.min(wanted, math.max(alive, 1))
  for _, e in ipairs(redis.call('XREVRANGE', stream0, '+', '-', 'COUNT', n)) do
    if e[2][1] ~= 'w' then break end
    n = n - 1
  end
  for _ = 1, n do redis.call('XADD', stream0, '*', 'w', '1') end
end
"""

#: Add the (score, member) pairs of ARGV from `first` on to the delayed set; one due before the
#: current head adds a wake-up entry to `stream0`, so a reader blocked in XREADGROUP re-reads
#: the earliest eta (PUBLISH and PUBLISH_FAIR share it).
ADD_DELAYED_FN = """
local function add_delayed(zset, stream0, first)
  local head = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  local earliest = nil
  for i = first, #ARGV, 2 do
    local score = tonumber(ARGV[i])
    redis.call('ZADD', zset, score, ARGV[i + 1])
    if earliest == nil or score < earliest then earliest = score end
  end
  if head[2] == nil or earliest < tonumber(head[2]) then
    redis.call('XADD', stream0, '*', 'w', '1')
  end
end
"""

#: Publish one queue's keyed messages, at most once (the batch marker, as in PUBLISH).
#: Delayed ones go to the queue's delayed set packed as
#: `<band + 3><len(key)>:<key><len(message_id)>:<message_id><body>` (MOVE_DUE knows the form).
#: KEYS: marker, band-0 stream, delayed zset. ARGV: marker ttl_ms, base, immediate count, then
#: (band, key, message_id, body) per immediate message, then (score, member) per delayed one.
PUBLISH_FAIR = (
    RING_ADD_FN
    + ADD_DELAYED_FN
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local base, n = ARGV[2], tonumber(ARGV[3])
local last = 3 + 4 * n
for i = 4, last, 4 do
  local s = base .. ':f:' .. ARGV[i + 1] .. ':s' .. ARGV[i]
  redis.call('XADD', s, '*', 'm', ARGV[i + 2], 'b', ARGV[i + 3])
  redis.call('SADD', base .. ':fkeys', s)
  ring_add(base, ARGV[i + 1])
end
if n > 0 then wake(base, KEYS[2], n) end
if last < #ARGV then add_delayed(KEYS[3], KEYS[2], last + 1) end
return 1
"""
)

#: The strict-priority look of every receive, round-robin across keys where a queue has them.
#: Per queue (in the order given): when its ring does not exist, the band streams high first,
#: exactly as READ_BANDS; when it does, one entry per turn from the key at the ring's tail
#: (bands high first within a key; the "" member reads the queue's own band streams), the key
#: moved to the head after a served turn, dropped when it has nothing new (the "" member
#: stays); the ring is deleted when only "" is left. Wake-up entries met on the queue's own
#: streams are acked and deleted here, and returned (so the caller re-reads its delays)
#: without using a turn.
#: Never blocks; at most ARGV[3] messages. KEYS: per queue ring, band 2, band 1, band 0 stream.
#: ARGV: group, consumer, limit.
READ = """
local group, consumer, left = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
local function read_key(s)
  if redis.call('EXISTS', s) == 0 then return nil end
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', s, '>')
  if type(r) == 'table' and r.err then
    redis.call('XGROUP', 'CREATE', s, group, '0')
    r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', s, '>')
  end
  if r then return r[1] end
  return nil
end
local function read_own(i)
  for b = i + 1, i + 3 do
    while true do
      local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS',
        KEYS[b], '>')
      if not r then break end
      out[#out + 1] = r[1]
      local e = r[1][2][1]
      if e[2][1] ~= 'w' then return true end
      redis.call('XACK', KEYS[b], group, e[1])
      redis.call('XDEL', KEYS[b], e[1])
    end
  end
  return false
end
local function fair(i)
  local ring = KEYS[i]
  local base = string.sub(ring, 1, -7)
  local n, empties = redis.call('LLEN', ring), 0
  while left > 0 and empties < n do
    local key = redis.call('LINDEX', ring, -1)
    local got = false
    if key == '' then
      got = read_own(i)
    else
      for b = 2, 0, -1 do
        local r = read_key(base .. ':f:' .. key .. ':s' .. b)
        if r then
          out[#out + 1] = r
          got = true
          break
        end
      end
    end
    if got then
      left = left - 1
      empties = 0
      redis.call('RPOPLPUSH', ring, ring)
    elseif key == '' then
      empties = empties + 1
      redis.call('RPOPLPUSH', ring, ring)
    else
      redis.call('RPOP', ring)
      redis.call('SREM', base .. ':fset', key)
      n = n - 1
    end
  end
  if redis.call('LLEN', ring) <= 1 then redis.call('DEL', ring, base .. ':fset') end
end
for i = 1, #KEYS, 4 do
  if left <= 0 then break end
  if redis.call('EXISTS', KEYS[i]) == 1 then
    fair(i)
  else
    for b = i + 1, i + 3 do
      if left <= 0 then break end
      local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', left, 'STREAMS',
        KEYS[b], '>')
      if r then
        left = left - #r[1][2]
        out[#out + 1] = r[1]
      end
    end
  end
end
return out
"""

#: Shared by RECLAIM_FAIR and TAKEOVER_FAIR: one claimed entry of keyed stream `s` delivered
#: `count` times in all: dead-lettered past max_deliveries, or returned as {stream, id,
#: message_id, body, count}. ARGV: group, consumer, (3), (4), max_deliveries, dead-letter
#: maxlen, queue, now (unix s), reason head, reason tail. KEYS[2]: dead-letter stream.
_SETTLE_FN = """
local function settle(s, e, count, out)
  local id, f, fields = e[1], e[2], {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  count = count + tonumber(fields['n'] or '0')
  if count > tonumber(ARGV[5]) then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
      'message_id', fields['m'] or id, 'body', fields['b'] or f[2] or '',
      'reason', ARGV[9] .. (count - 1) .. ARGV[10], 'queue', ARGV[7], 'time', ARGV[8])
    redis.call('XACK', s, ARGV[1], id)
    redis.call('XDEL', s, id)
    return false
  end
  out[#out + 1] = {s, id, fields['m'] or id, fields['b'] or f[2] or '', count}
  return true
end
"""

#: Lease lapse on the keyed streams: XAUTOCLAIM entries idle past min_idle from each stream of
#: `fkeys` (at most `count` in all), dead-lettering exhausted ones; a stream left with no entry
#: at all is deleted (its key is forgotten until its next message). Returns {{stream, id,
#: message_id, body, deliveries}, ...}. KEYS: fkeys set, dead-letter stream. ARGV: group,
#: consumer, min_idle_ms, count, max_deliveries, dead-letter maxlen, queue, now, reason head,
#: reason tail.
RECLAIM_FAIR = (
    _SETTLE_FN
    + """
local out, left = {}, tonumber(ARGV[4])
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('XLEN', s) == 0 then
    redis.call('DEL', s)
    redis.call('SREM', KEYS[1], s)
  elseif left > 0 then
    local claimed = redis.pcall('XAUTOCLAIM', s, ARGV[1], ARGV[2], ARGV[3], '0-0',
      'COUNT', left)
    if type(claimed) == 'table' and not claimed.err then
      for _, e in ipairs(claimed[2]) do
        if type(e) == 'table' and type(e[2]) == 'table' then
          local p = redis.call('XPENDING', s, ARGV[1], e[1], e[1], 1)
          local count = 1
          if p[1] then count = p[1][4] end
          if settle(s, e, count, out) then left = left - 1 end
        end
      end
    end
  end
end
return out
"""
)

#: Heartbeat lapse on the keyed streams: take over the entries lost consumers own (never
#: this one's, never a fresh heartbeat's), at most `count`. Runs before TAKEOVER, which
#: forgets a lost consumer once the queue's own streams are drained of it (what is left here
#: then returns by the lease rule). Returns {more (1: a lost consumer still owns entries
#: here), {{stream, id, message_id, body, deliveries}, ...}}.
#: KEYS: consumers zset, dead-letter stream, fkeys set. ARGV: as RECLAIM_FAIR's, with
#: ARGV[3] unused.
TAKEOVER_FAIR = (
    _SETTLE_FN
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local left, more, out = tonumber(ARGV[4]), 0, {}
local streams = redis.call('SMEMBERS', KEYS[3])
for _, c in ipairs(lost) do
  if c ~= ARGV[2] then
    for _, s in ipairs(streams) do
      local pending = redis.pcall('XPENDING', s, ARGV[1], '-', '+', math.max(left, 1), c)
      if type(pending) == 'table' and not pending.err and #pending > 0 then
        if left <= 0 then
          more = 1
        else
          local counts, claim = {}, {'XCLAIM', s, ARGV[1], ARGV[2], 0}
          for _, p in ipairs(pending) do
            counts[p[1]] = p[4]
            claim[#claim + 1] = p[1]
          end
          if #pending >= left then more = 1 end
          for _, e in ipairs(redis.call(unpack(claim))) do
            if type(e) == 'table' and type(e[2]) == 'table' then
              if settle(s, e, (counts[e[1]] or 0) + 1, out) then left = left - 1 end
            end
          end
        end
      end
    end
  end
end
return {more, out}
"""
)

#: Put keys back in the ring after their entries were handed back (nack, close), and wake a
#: blocked reader. Returns 0 (nack() sums its replies as dead-lettered counts).
#: KEYS: band-0 stream. ARGV: base, key...
RING = (
    RING_ADD_FN
    + """
for i = 2, #ARGV do ring_add(ARGV[1], ARGV[i]) end
wake(ARGV[1], KEYS[1], #ARGV - 1)
return 0
"""
)

#: Counts of the keyed streams for `aiotask queues`: {ready, in flight}.
#: KEYS: fkeys set. ARGV: group.
STATS_FAIR = """
local ready, leased = 0, 0
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local len = redis.call('XLEN', s)
  local pending = 0
  local p = redis.pcall('XPENDING', s, ARGV[1])
  if type(p) == 'table' and not p.err and p[1] then pending = tonumber(p[1]) end
  ready = ready + math.max(len - pending, 0)
  leased = leased + pending
end
return {ready, leased}
"""

#: Drop every keyed entry of a queue (the streams and their groups stay until the clean-up);
#: returns how many entries there were. KEYS: fkeys set, ring, ring member set.
PURGE_FAIR = """
local n = 0
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('XLEN', s)
  redis.call('XTRIM', s, 'MAXLEN', 0)
end
redis.call('DEL', KEYS[2], KEYS[3])
return n
"""
