"""Settles finished deliveries in batches: store results, publish follow-ups, then ack/nack.

Order of durability: a result is stored and follow-up messages are published *before* the
ack. A crash between the steps causes a redelivery and a duplicate run, never a loss.
"""

from __future__ import annotations

import asyncio
from itertools import groupby
from typing import TYPE_CHECKING, Any

from aiotask._log import get_logger
from aiotask._time import now
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.canvas.compile import CHAIN_STATE, on_chord_complete, on_chord_failure
from aiotask.serializer import ExceptionInfo
from aiotask.states import FAILURE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aiotask.app import App
    from aiotask.brokers.base import Delivery
    from aiotask.protocol import Message
    from aiotask.worker.outcome import Settlement

log = get_logger(__name__)

#: Attempts at flushing one batch before the worker gives up and exits (to be restarted).
FLUSH_ATTEMPTS = 5


class Settler:
    """Collects settlements while a flush is in flight, so the next flush carries them all."""

    def __init__(self, app: App, on_settled: Callable[[Sequence[Delivery]], None]) -> None:
        self.app = app
        self._on_settled = on_settled
        self._pending: list[Settlement] = []
        self._wake = asyncio.Event()
        self._stopping = False

    def add(self, settlement: Settlement) -> None:
        self._pending.append(settlement)
        self._wake.set()

    async def run(self) -> None:
        """Flush whenever something is pending; after stop(), flush once more and return."""
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
        await self.flush()

    def stop(self) -> None:
        """Ask run() to finish its current flush, flush the rest, and return (never cancel it)."""
        self._stopping = True
        self._wake.set()

    async def flush(self) -> None:
        """Settle everything pending now; retried with backoff, raises if the servers stay down."""
        while self._pending:
            batch, self._pending = self._pending, []
            for attempt in range(1, FLUSH_ATTEMPTS + 1):
                try:
                    await self._settle(batch)
                    break
                except Exception as exc:
                    if attempt == FLUSH_ATTEMPTS:
                        log.critical("cannot settle %d deliveries, giving up: %s", len(batch), exc)
                        raise
                    log.error(
                        "settling %d deliveries failed (attempt %d): %s", len(batch), attempt, exc
                    )
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
            self._on_settled([s.delivery for s in batch])

    async def _settle(self, batch: list[Settlement]) -> None:
        backend = self.app.backend
        stores = [s.store for s in batch if s.store is not None]
        if stores and backend is not None:
            await backend.store(stores)
        publish = [m for s in batch for m in s.publish]
        canvas = [s for s in batch if s.plan is not None]
        if canvas:
            publish += await self._advance(canvas)
        if publish:
            await self.app.publish(publish)
        broker = self.app.broker
        acks = [s.delivery for s in batch if s.action == "ack"]
        if acks:
            await broker.ack(acks)
        requeue = [s.delivery for s in batch if s.action == "requeue"]
        if requeue:
            await broker.nack(requeue, requeue=True)
        dead = sorted((s for s in batch if s.action == "dead"), key=lambda s: s.reason)
        # (canvas follow-ups were published above, before any ack)
        for reason, group in groupby(dead, key=lambda s: s.reason):
            await broker.nack([s.delivery for s in group], requeue=False, reason=reason)

    async def _advance(self, settlements: list[Settlement]) -> list[Message]:
        """Canvas: open groups, record failed steps, report chord members; return messages.

        Runs before the ack: a crash here redelivers the finished task, and the backend's
        idempotent group reports make the repeat harmless.
        """
        backend = self.app.backend
        if backend is None:
            log.error("canvas needs a result backend; follow-up steps were dropped")
            return []
        ttl = self.app.conf.result_expires
        factory = self.app.message_factory
        messages: list[Message] = []
        failed: list[EncodedResult] = []
        work = [(s, s.plan) for s in settlements if s.plan is not None]
        while work:
            settlement, plan = work.pop()
            assert settlement.message is not None  # noqa: S101 - set with plan
            exc = settlement.exc or ExceptionInfo(
                "aiotask.exceptions.TaskError", "an earlier step of the workflow failed"
            )
            for group in plan.groups:
                await backend.open_group(group.group_id, group.size, group.body, ttl)
            failed += [_blob(key, steps, ttl) for key, steps in plan.blobs]
            failed += [_failure(task_id, exc, ttl) for task_id in plan.failed]
            for report in plan.reports:
                own = settlement.store
                record = (
                    own
                    if own is not None and own.task_id == report.task_id
                    else (_failure(report.task_id, exc, ttl))
                )
                progress = await backend.add_to_group(report.group_id, report.index, record)
                if progress.fire and progress.body is not None:
                    results = [r.result for r in progress.records]
                    work.append(
                        (
                            settlement,
                            on_chord_complete(progress.body, results, settlement.message, factory),
                        )
                    )
                elif progress.first_failure and progress.body is not None:
                    work.append(
                        (settlement, on_chord_failure(progress.body, report.task_id, factory))
                    )
            messages += plan.messages
        if failed:
            await backend.store(failed)  # failures and stored chain remainders, before publishing
        return messages


def _blob(key: str, steps: list[Any], ttl: float) -> EncodedResult:
    return EncodedResult.of(ResultRecord(key, CHAIN_STATE, steps), ttl)


def _failure(task_id: str, exc: ExceptionInfo, ttl: float) -> EncodedResult:
    record = ResultRecord(task_id, FAILURE, exception=exc, date_done=now())
    return EncodedResult.of(record, ttl)
