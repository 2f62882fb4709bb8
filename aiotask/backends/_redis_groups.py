"""Lua for group (chord) progress on Redis: a batch of reports in one script call.

The script mirrors `aiotask.backends.base.group_step` (the pure state machine memory and SQLite
call): keep the two in step. A group is a hash `{size, body, fired, failed}` (flags: absent or
0 undecided, 1 decided, 2 follow-ups sent) and a member hash `index -> kind byte + record`,
kind `s` (SUCCESS), `f` (FAILURE) or `o` (other).
"""

from __future__ import annotations

#: KEYS: group hash, member hash, per report. ARGV: index, kind byte + data, per report.
#: Returns one reply per report: {size, done, fire, failure, body?, {values in index order}?}
#: where fire/failure are 0 (no), 1 (first decision) or 2 (again: decided, not yet sent).
ADD_TO_GROUPS = """
local out = {}
for r = 1, #KEYS / 2 do
  local meta, members = KEYS[2 * r - 1], KEYS[2 * r]
  local index, value = ARGV[2 * r - 1], ARGV[2 * r]
  local size = tonumber(redis.call('HGET', meta, 'size') or '0')
  if size == 0 then
    out[r] = {0, 0, 0, 0}
  else
    local new = redis.call('HSETNX', members, index, value) == 1
    local ttl = redis.call('PTTL', meta)
    if new and ttl > 0 then redis.call('PEXPIRE', members, ttl) end
    local done = redis.call('HLEN', members)
    local recorded = new and value or redis.call('HGET', members, index)
    local member_failed = string.sub(recorded, 1, 1) == 'f'
    local fired = tonumber(redis.call('HGET', meta, 'fired') or '0')
    local failed = tonumber(redis.call('HGET', meta, 'failed') or '0')
    local fire, failure = 0, 0
    if new then
      if member_failed and failed == 0 and fired == 0 then
        redis.call('HSET', meta, 'failed', '1')
        failure = 1
      elseif done == size and fired == 0 and failed == 0 then
        fire = 1
        for _, v in ipairs(redis.call('HVALS', members)) do
          if string.sub(v, 1, 1) ~= 's' then fire = 0 break end
        end
        if fire == 1 then redis.call('HSET', meta, 'fired', '1') end
      end
    elseif fired == 1 then
      fire = 2
    elseif failed == 1 and member_failed then
      failure = 2
    end
    if fire > 0 then
      local all, values = redis.call('HGETALL', members), {}
      for i = 1, #all, 2 do values[tonumber(all[i]) + 1] = all[i + 1] end
      out[r] = {size, done, fire, 0, redis.call('HGET', meta, 'body'), values}
    elseif failure > 0 then
      out[r] = {size, done, 0, failure, redis.call('HGET', meta, 'body') or false}
    else
      out[r] = {size, done, 0, 0}
    end
  end
end
return out
"""

#: KEYS: group hashes whose decision's follow-ups were published: decided (1) -> sent (2).
GROUPS_SENT = """
for _, meta in ipairs(KEYS) do
  if redis.call('HGET', meta, 'fired') == '1' then redis.call('HSET', meta, 'fired', '2') end
  if redis.call('HGET', meta, 'failed') == '1' then redis.call('HSET', meta, 'failed', '2') end
end
return #KEYS
"""
