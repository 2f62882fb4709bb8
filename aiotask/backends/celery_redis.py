"""Results in Celery's Redis layout: `celery-task-meta-<id>` keys holding Celery's JSON meta.

Chosen by `from_url` for redis:// with `celery_compat`: an unmodified Celery client's
`AsyncResult(id).get()` reads what aiotask workers store here, and aiotask reads what Celery
workers store. Like Celery's own RedisBackend, a ready result is SET with its ttl and
PUBLISHed on a channel named like its key (Celery's result consumer subscribes there). The
first ready writer wins, as in the native layout. Group progress, revocations and the worker
registry keep aiotask's own keys (Celery readers never look at them).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiotask.backends.base import ResultRecord, decode_record
from aiotask.backends.redis import RedisBackend, _bytes, _ms
from aiotask.celery_compat import results as celery_results
from aiotask.exceptions import BrokerConnectionError, ResultTimeout
from aiotask.states import READY_STATES

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from aiotask.backends.base import EncodedResult

#: KEYS: result keys. ARGV: value, ttl_ms, ready flag, ... per key. A stored ready status
#: (Celery's or ours) is never overwritten.
_STORE_CELERY = """
for i, key in ipairs(KEYS) do
  local value = ARGV[3 * i - 2]
  local done = false
  local cur = redis.call('GET', key)
  if cur then
    local ok, doc = pcall(cjson.decode, cur)
    if ok and type(doc) == 'table' then
      local s = doc['status']
      done = (s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED')
    end
  end
  if not done then
    redis.call('SET', key, value, 'PX', ARGV[3 * i - 1])
    if ARGV[3 * i] == '1' then redis.call('PUBLISH', key, value) end
  end
end
return #KEYS
"""


def _record(raw: bytes) -> ResultRecord:
    meta = celery_results.loads(raw)
    return ResultRecord(
        meta.task_id, meta.state, meta.result, meta.exception, date_done=meta.date_done
    )


async def _flagged(value: Awaitable[bytes | None]) -> bytes | None:
    """The subscriber's check wants the native layout's ready flag in front."""
    raw = await value
    return None if raw is None else b"1" + raw


class CeleryRedisBackend(RedisBackend):
    """RedisBackend whose task results use Celery's keys and JSON format."""

    def _key(self, task_id: str) -> str:
        return celery_results.key(task_id)

    async def store(self, results: Sequence[EncodedResult]) -> None:
        if not results:
            return
        args: list[bytes | int] = []
        for r in results:
            rec = decode_record(r.data)
            meta = celery_results.Meta(
                r.task_id, rec.state, rec.result, rec.exception, rec.date_done
            )
            args += (celery_results.dumps(meta), _ms(r.ttl), 1 if r.ready else 0)
        client = self._client()
        with self._map_errors():
            await client.eval(
                _STORE_CELERY, len(results), *(self._key(r.task_id) for r in results), *args
            )

    async def get(self, task_id: str) -> ResultRecord | None:
        with self._map_errors():
            raw = await self._client().get(self._key(task_id))
        return _record(_bytes(raw)) if raw else None

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        if not task_ids:
            return []
        raws = await self._fetch_many([self._key(t) for t in task_ids])
        return [_record(raw) if raw else None for raw in raws]

    async def wait(self, task_id: str, timeout: float | None) -> ResultRecord:
        key = self._key(task_id)
        sub = self._sub
        if sub is None:
            raise BrokerConnectionError("the Redis result backend is not connected")

        async def ready_value() -> bytes | None:
            raw = await asyncio.shield(self._fetch(key))
            return raw if raw is not None and _record(raw).state in READY_STATES else None

        try:
            async with asyncio.timeout(timeout):
                raw = await ready_value()
                if raw is not None:
                    return _record(raw)
                data = await sub.wait(key.encode(), lambda: _flagged(ready_value()))
        except TimeoutError:
            raise ResultTimeout(
                f"task {task_id} not ready after {timeout}s; is a worker consuming its queue?"
            ) from None
        return _record(data)
