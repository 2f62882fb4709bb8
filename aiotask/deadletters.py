"""`app.dead_letters`: list, show, replay and purge dead-lettered messages, on every broker.

Brokers keep dead letters as bytes per queue (`Broker.dead_letters`); the task name, priority
and arguments come from decoding each body here, so an undecodable body still lists (task
None) and can be replayed or purged. Replay publishes a copy of the original bytes to the
dead letter's queue (a fresh message: its delivery counter starts again at zero) and only
then deletes the dead letter, in batches: an interruption between the two leaves a duplicate
(the message runs again, at-least-once), never a loss. Also `queue_stats()`, the counts
behind `aiotask queues`.
"""

from __future__ import annotations

import builtins
import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiotask.brokers._common import DEAD_LETTER_CAP
from aiotask.brokers.base import Outgoing
from aiotask.coordination.fairness import fair_key
from aiotask.exceptions import AiotaskError
from aiotask.protocol import preview
from aiotask.security import peek

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from aiotask.app import App
    from aiotask.brokers.base import DeadLetter, QueueStats
    from aiotask.protocol import Message

#: Dead letters replayed (published, then deleted) per broker call.
REPLAY_BATCH = 500


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """One dead letter, decoded where its body is a valid message."""

    #: the task id (the broker's message id)
    id: str
    queue: str
    reason: str
    #: the task name; None when the body is not a message this version can decode
    task: str | None
    #: unix seconds it was dead-lettered (None where the broker does not record it)
    died_at: float | None
    body: bytes = field(repr=False)
    message: Message | None = field(default=None, repr=False)
    #: the broker's entry (its handle deletes exactly this one)
    entry: DeadLetter | None = field(default=None, repr=False, compare=False)

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """`dlq list --json` entries; `full` adds the message (`dlq show`)."""
        out: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason,
            "died_at": self.died_at,
        }
        if not full:
            return out
        m = self.message
        if m is None:
            out["body"] = preview(self.body, 2000)
            return out
        out.update(
            args=m.args,
            kwargs=m.kwargs,
            priority=m.priority,
            retries=m.retries,
            eta=m.eta,
            expires=m.expires,
            root_id=m.root_id,
            parent_id=m.parent_id,
            group_id=m.group_id,
            headers=m.headers,
        )
        return out


@dataclass(frozen=True, slots=True)
class DeadLetterReport:
    """What replay or purge did: the ids handled, and requested ids that are no dead letter."""

    ids: list[str]
    missing: list[str]


@dataclass(frozen=True, slots=True)
class _Filter:
    ids: frozenset[str] | None
    task: str | None
    reason: str | None

    def __call__(self, info: DeadLetterInfo) -> bool:
        if self.ids is not None and info.id not in self.ids:
            return False
        if self.task is not None and (
            info.task is None or not fnmatch.fnmatchcase(info.task, self.task)
        ):
            return False
        return self.reason is None or self.reason.lower() in info.reason.lower()


def configured_queues(app: App) -> list[str]:
    """The queues the app's code names: default_queue, task_routes targets, tasks' queues."""
    names = {app.conf.default_queue, *app.conf.task_routes.values()}
    names.update(t.options.queue for t in app.tasks.values() if t.options.queue)
    names.update(e.queue for e in app.beat_entries.values() if e.queue)
    return sorted(names)


def _info(dead: DeadLetter, queue: str) -> DeadLetterInfo:
    try:
        message: Message | None = peek(dead.body)
    except AiotaskError:
        message = None
    return DeadLetterInfo(
        id=dead.message_id,
        queue=dead.queue or queue,
        reason=dead.reason,
        task=message.task if message is not None else None,
        died_at=dead.died_at,
        body=dead.body,
        message=message,
        entry=dead,
    )


class DeadLetters:
    """Dead letters of one app's queues (`app.dead_letters`); see the module docstring.

    Without `queue=`, every queue the app knows is looked at: the configured ones (default
    queue, task_routes targets, tasks' own queues) and those the broker can list (SQLite,
    Redis and memory can; RabbitMQ cannot without its management API, so pass `queue=` for
    queues only a worker's `-Q` names).
    """

    def __init__(self, app: App) -> None:
        self._app = app

    async def queues(self, extra: Iterable[str] = ()) -> builtins.list[str]:
        """Configured queues, `extra`, and the queues the broker knows, sorted."""
        await self._app.connect()
        known = await self._app.broker.known_queues()
        return sorted({*configured_queues(self._app), *extra, *known})

    async def queue_stats(self, queues: Iterable[str] = ()) -> builtins.list[QueueStats]:
        """Ready, delayed, in flight and dead counts of `queues` plus every known queue."""
        names = await self.queues(queues)
        return await self._app.broker.queue_stats(names)

    async def _scan(
        self, queue: str | Sequence[str] | None, keep: _Filter, limit: int | None = None
    ) -> builtins.list[DeadLetterInfo]:
        if isinstance(queue, str):
            names: Sequence[str] = [queue]
        elif queue is not None:
            names = queue
        else:
            names = await self.queues()
        await self._app.connect()
        found: builtins.list[DeadLetterInfo] = []
        for name in names:
            for dead in await self._app.broker.dead_letters(name, DEAD_LETTER_CAP):
                info = _info(dead, name)
                if keep(info):
                    found.append(info)
                    if limit is not None and len(found) >= limit:
                        return found
        return found

    async def list(
        self,
        *,
        queue: str | Sequence[str] | None = None,
        task: str | None = None,
        reason: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[DeadLetterInfo]:
        """Dead letters, oldest first per queue. `task` is a name or glob (`proj.*`);
        `reason` a case-insensitive substring of the reason."""
        return await self._scan(queue, _Filter(None, task, reason), limit)

    async def show(
        self, task_id: str, *, queue: str | Sequence[str] | None = None
    ) -> DeadLetterInfo | None:
        """The dead letter of one task id, or None when it is not a dead letter."""
        found = await self._scan(queue, _Filter(frozenset({task_id}), None, None), 1)
        return found[0] if found else None

    async def _select(
        self,
        ids: Iterable[str] | None,
        queue: str | Sequence[str] | None,
        task: str | None,
        reason: str | None,
    ) -> tuple[dict[str, dict[str, builtins.list[DeadLetterInfo]]], builtins.list[str]]:
        """Matching entries by queue, then by id (a message dead-lettered twice: two)."""
        wanted = None if ids is None else frozenset(ids)
        by_queue: dict[str, dict[str, builtins.list[DeadLetterInfo]]] = {}
        for info in await self._scan(queue, _Filter(wanted, task, reason)):
            by_queue.setdefault(info.queue, {}).setdefault(info.id, []).append(info)
        seen = {i for entries in by_queue.values() for i in entries}
        missing = sorted(wanted - seen) if wanted is not None else []
        return by_queue, missing

    async def replay(
        self,
        ids: Iterable[str] | None = None,
        *,
        queue: str | Sequence[str] | None = None,
        task: str | None = None,
        reason: str | None = None,
    ) -> DeadLetterReport:
        """Send dead letters back to their queue with their delivery counter reset.

        `ids` None means every dead letter the filters match. Each batch is published
        (confirmed) before it is deleted: interrupted, a message may run twice, never zero
        times. Ids that are no dead letter are returned in `missing`, nothing else happens
        for them.
        """
        by_queue, missing = await self._select(ids, queue, task, reason)
        broker = self._app.broker
        done: builtins.list[str] = []
        for name, entries in by_queue.items():
            groups = builtins.list(entries.values())
            for start in range(0, len(groups), REPLAY_BATCH):
                chunk = groups[start : start + REPLAY_BATCH]
                # one copy per id; then exactly the entries listed, never a newer dead letter
                # of the same id (a fast worker may reject the copy before this delete runs)
                await broker.publish([_copy(same[0], name) for same in chunk])
                await broker.delete_dead_letters(name, _entries(chunk))
                done += [same[0].id for same in chunk]
        return DeadLetterReport(done, missing)

    async def purge(
        self,
        ids: Iterable[str] | None = None,
        *,
        queue: str | Sequence[str] | None = None,
        task: str | None = None,
        reason: str | None = None,
    ) -> DeadLetterReport:
        """Delete dead letters for good; `ids` None means every one the filters match."""
        by_queue, missing = await self._select(ids, queue, task, reason)
        done: builtins.list[str] = []
        for name, entries in by_queue.items():
            await self._app.broker.delete_dead_letters(name, _entries(entries.values()))
            done += builtins.list(entries)
        return DeadLetterReport(done, missing)


def _entries(groups: Iterable[list[DeadLetterInfo]]) -> list[DeadLetter]:
    return [info.entry for same in groups for info in same if info.entry is not None]


def _copy(info: DeadLetterInfo, queue: str) -> Outgoing:
    """The original bytes (signature and all), due now, at the message's own priority."""
    priority = info.message.priority if info.message is not None else 0
    key = fair_key(info.message.headers) if info.message is not None else ""  # fairness
    return Outgoing(
        queue=queue, body=info.body, message_id=info.id, priority=priority, fair_key=key
    )
