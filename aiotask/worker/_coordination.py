"""The worker side of unique tasks and debounce (the model: coordination/unique.py).

Before a coordinated task runs, `Gate.before` releases a unique lock held only until start,
and lets a debounced message run only if it is still the latest send of its key and no other
send of that key is running. After any outcome, `Gate.after` names the locks the settler
releases before the ack — except when the same message goes on (a retry, a requeue, a
deferred debounce): its locks stay with it.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from aiotask._log import get_logger
from aiotask._time import now
from aiotask.coordination.unique import (
    DEBOUNCE_AT_HEADER,
    DEBOUNCE_HEADER,
    UNIQUE_HEADER,
    UNTIL_HEADER,
    Debounce,
    debounce_verdict,
    latest_lock,
    running_lock,
)
from aiotask.worker.outcome import Settlement

if TYPE_CHECKING:
    from aiotask.app import App
    from aiotask.brokers.base import Delivery
    from aiotask.coordination.unique import LockStore
    from aiotask.protocol import Message
    from aiotask.task import Task

log = get_logger(__name__)

#: Seconds a debounced message waits before looking again while another send of its key runs.
DEFER_DELAY = 0.5


class Verdict(Enum):
    RUN = "run"
    SUPERSEDED = "superseded"
    DEFER = "defer"


def coordinated(message: Message) -> bool:
    """True for a message sent with unique or debounce options (a dict lookup or two)."""
    headers = message.headers
    return bool(headers) and (UNIQUE_HEADER in headers or DEBOUNCE_HEADER in headers)


class Gate:
    """Checks and releases coordination locks in the app's result backend."""

    def __init__(self, app: App) -> None:
        self.app = app

    def _store(self) -> LockStore | None:
        backend = self.app.backend
        return None if backend is None else backend.lock_store()

    async def before(self, message: Message, task: Task[Any, Any]) -> Verdict:
        """Whether a coordinated message runs now. A store error lets it run: the task runs
        twice at worst (at-least-once), never not at all."""
        store = self._store()
        if store is None:
            return Verdict.RUN
        headers = message.headers
        try:
            key = headers.get(UNIQUE_HEADER)
            if key is not None and headers.get(UNTIL_HEADER) == "started":
                await store.release([(key, message.id)])
            key = headers.get(DEBOUNCE_HEADER)
            if key is None:
                return Verdict.RUN
            latest = await store.get(latest_lock(key))
            verdict = debounce_verdict(latest, message.id, headers.get(DEBOUNCE_AT_HEADER), now())
            if verdict is Debounce.WAIT:
                return Verdict.DEFER  # its sender has not recorded it yet
            if verdict is Debounce.SUPERSEDED:
                assert latest is not None  # noqa: S101 - SUPERSEDED names a record
                log.info(
                    "task %s[%s] superseded by a later send (%s): not run",
                    message.task,
                    message.id,
                    latest.partition(" ")[0],
                    extra={"task_name": message.task, "task_id": message.id},
                )
                return Verdict.SUPERSEDED
            coord = task.options.coordination
            ttl = (coord.unique_for if coord is not None else None) or self.app.conf.unique_for
            holder = await store.acquire(running_lock(key), message.id, ttl)
        except Exception as exc:
            log.warning(
                "task %s[%s]: cannot check its unique/debounce lock, running it: %s",
                message.task,
                message.id,
                exc,
            )
            return Verdict.RUN
        if holder is not None and holder != message.id:
            return Verdict.DEFER  # an earlier send of the key is still running
        return Verdict.RUN

    def defer(self, delivery: Delivery, message: Message) -> Settlement:
        """Publish the same message (same id) a little later, then ack this delivery."""
        return Settlement(delivery, publish=[message.evolve(eta=now() + DEFER_DELAY)])

    def after(self, settlement: Settlement, message: Message) -> None:
        """Name the locks to release with this settlement (compare-and-delete: a lock that
        someone else holds by now is left alone)."""
        if settlement.action == "requeue":
            return
        if any(m.id == message.id for m in settlement.publish):
            return  # a retry or a deferred debounce: the same task goes on, with its locks
        headers = message.headers
        locks: list[tuple[str, str]] = []
        key = headers.get(UNIQUE_HEADER)
        if key is not None:
            locks.append((key, message.id))
        key = headers.get(DEBOUNCE_HEADER)
        if key is not None:
            locks.append((running_lock(key), message.id))
        settlement.release = tuple(locks)
