"""Lua for brokers/kombu_redis.py: take messages and record them unacked in one atomic step,
and move an unacked message back to its list only if nobody moved it first."""

from __future__ import annotations

#: KEYS: unacked hash, unacked_index zset, then the lists in the order to drain them.
#: ARGV: now (unix seconds), limit. Returns flat [list key, delivery tag, payload, ...].
#: The hash entry is kombu's `[payload, exchange, routing_key]`, the payload kept byte-exact.
TAKE = """
local out = {}
local limit = tonumber(ARGV[2])
local taken = 0
for i = 3, #KEYS do
  while taken < limit do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    local ex, rk, tag = '', '', nil
    local ok, doc = pcall(cjson.decode, raw)
    if ok and type(doc) == 'table' and type(doc['properties']) == 'table' then
      local props = doc['properties']
      tag = props['delivery_tag']
      local info = props['delivery_info']
      if type(info) == 'table' then
        if type(info['exchange']) == 'string' then ex = info['exchange'] end
        if type(info['routing_key']) == 'string' then rk = info['routing_key'] end
      end
    end
    if type(tag) ~= 'string' then tag = 'aiotask-' .. ARGV[1] .. '-' .. i .. '-' .. taken end
    redis.call('HSET', KEYS[1], tag,
      '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    out[#out + 1] = KEYS[i]
    out[#out + 1] = tag
    out[#out + 1] = raw
    taken = taken + 1
  end
end
return out
"""

#: KEYS: unacked hash, unacked_index zset, target list. ARGV: tag, the unacked entry as read,
#: the payload to push, "1" to push at the far end (consumed last) else the near end.
#: Returns 1 when moved, 0 when the entry changed or went (acked, or restored by another).
RESTORE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[3], ARGV[3])
else
  redis.call('RPUSH', KEYS[3], ARGV[3])
end
return 1
"""

#: KEYS: unacked hash, unacked_index zset, dead-letter list. ARGV: tag, dead-letter record.
DEAD = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"""
