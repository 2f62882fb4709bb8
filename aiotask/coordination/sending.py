"""The producer side of unique tasks and debounce: take the lock (or record the latest send),
then publish. Lives beside task.py (it sends through the App); see unique.py for the model."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from aiotask._log import get_logger
from aiotask._time import now
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.coordination.unique import (
    DEBOUNCE_AT_HEADER,
    DEBOUNCE_HEADER,
    UNIQUE_HEADER,
    UNTIL_HEADER,
    check,
    debounce_key,
    latest_lock,
    record_latest,
    unique_key,
)
from aiotask.exceptions import AiotaskError
from aiotask.states import REVOKED

if TYPE_CHECKING:
    import inspect

    from aiotask.app import App
    from aiotask.backends.base import ResultBackend
    from aiotask.coordination.unique import Coordination, LockStore
    from aiotask.protocol import Message
    from aiotask.result import AsyncResult

log = get_logger(__name__)

#: Rounds of acquire / swap before giving up: a round repeats only when another sender
#: changed the lock between our two calls.
ATTEMPTS = 50
#: What `info()` of an `on_conflict="ignore"` handle says (its state is REVOKED at once).
NOT_SENT = "duplicate"


async def send(
    app: App,
    message: Message,
    coord: Coordination,
    sig: inspect.Signature | None,
) -> AsyncResult[Any]:
    """Send `message` under its unique or debounce options; the handle the caller gets."""
    check(message.task, coord)
    if coord.debounce is None and not coord.is_unique:  # e.g. a call's unique=False
        await app.publish([message])
        return app.AsyncResult(message.id)
    backend = await app.result_backend()
    store = backend.lock_store()
    if coord.debounce is not None:
        return await _debounced(app, store, message, coord, sig)
    return await _unique(app, backend, store, message, coord, sig)


async def _unique(
    app: App,
    backend: ResultBackend,
    store: LockStore,
    message: Message,
    coord: Coordination,
    sig: inspect.Signature | None,
) -> AsyncResult[Any]:
    """Acquire first, publish second: a duplicate never reaches the broker. A publish that
    fails releases the lock again."""
    key = unique_key(message.task, coord.unique_key, message.args, message.kwargs, sig)
    ttl = coord.unique_for or app.conf.unique_for
    headers = {**message.headers, UNIQUE_HEADER: key}
    if coord.unique_until == "started":
        headers[UNTIL_HEADER] = "started"
    message = message.evolve(headers=headers)
    conflict = coord.on_conflict or "return_existing"
    for _ in range(ATTEMPTS):
        holder = await store.acquire(key, message.id, ttl)
        if holder is None:
            return await _publish(app, store, key, message)
        if holder == message.id:  # sent before with this task_id: not a second copy
            return app.AsyncResult(holder)
        if await _finished(backend, holder):
            # its worker stored the outcome but has not released yet (or died in between)
            if await store.swap(key, holder, message.id, ttl):
                return await _publish(app, store, key, message)
            continue
        if conflict == "return_existing":
            log.info("task %s: unique key held by %s, not sent again", message.task, holder)
            return app.AsyncResult(holder)
        if conflict == "ignore":
            await _not_sent(app, backend, message, holder)
            return app.AsyncResult(message.id)
        if await store.swap(key, holder, message.id, ttl):  # replace
            log.info("task %s: replacing %s with %s", message.task, holder, message.id)
            await app.revoke([holder])
            return await _publish(app, store, key, message)
    raise AiotaskError(
        f"task {message.task}: the unique lock changed hands {ATTEMPTS} times while sending; "
        "nothing was sent"
    )


async def _finished(backend: ResultBackend, task_id: str) -> bool:
    record = await backend.get(task_id)
    return record is not None and record.ready


async def _publish(app: App, store: LockStore, key: str, message: Message) -> AsyncResult[Any]:
    try:
        await app.publish([message])
    except BaseException:
        with contextlib.suppress(Exception):
            await store.release([(key, message.id)])
        raise
    return app.AsyncResult(message.id)


async def _not_sent(app: App, backend: ResultBackend, message: Message, holder: str) -> None:
    """on_conflict="ignore": a handle that answers at once — REVOKED, never sent."""
    record = ResultRecord(
        message.id,
        REVOKED,
        {"not_sent": NOT_SENT, "existing_id": holder},
        task=message.task,
        date_done=now(),
    )
    await backend.store([EncodedResult.of(record, app.conf.result_expires, app.result_keyring)])


async def _debounced(
    app: App,
    store: LockStore,
    message: Message,
    coord: Coordination,
    sig: inspect.Signature | None,
) -> AsyncResult[Any]:
    """Publish with eta = now + window, then record this send as the latest for its key.

    Publish first: the latest record never names a message the broker does not hold (a
    failed publish leaves the previous send as the latest, which still runs). The record
    carries the send's time, so a message that comes up before its own record is written is
    not mistaken for a superseded one, and records only move forward (unique.record_latest).
    """
    window = coord.debounce
    assert window is not None  # noqa: S101 - the caller checked
    key = debounce_key(message.task, coord.debounce_key, message.args, message.kwargs, sig)
    eta = max(message.eta or 0.0, now() + window)
    at = repr(eta)
    headers = {**message.headers, DEBOUNCE_HEADER: key, DEBOUNCE_AT_HEADER: at}
    message = message.evolve(eta=eta, headers=headers)
    await app.publish([message])
    ttl = (eta - now()) + (coord.unique_for or app.conf.unique_for)
    await record_latest(store, latest_lock(key), message.id, at, ttl)
    return app.AsyncResult(message.id)
