"""Settles finished deliveries in batches: store results, publish follow-ups, then ack/nack.

Order of durability: a result is stored and follow-up messages are published *before* the
ack. A crash between the steps causes a redelivery and a duplicate run, never a loss.

A flush runs in stages (`_Flush.STAGES`). A stage that fails is retried with backoff — for as
long as `broker_unreachable_timeout` when a server is unreachable, the same deadline the broker
path tolerates — and the flush resumes at that stage: what an earlier stage did (results
stored, follow-ups published) is not done again.

Canvas (chains, chords): the follow-ups of every finished task of the batch are derived by
canvas/runtime.py; their chord reports go to the backend in one `add_to_groups` call. A chord
whose completion was decided but not yet marked sent is decided again by a redelivered header
task (`fire_again`), so a worker dying between the decision and the publish cannot lose the
body; the decided groups are marked sent right after the publish.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import TYPE_CHECKING, Any

from aiotask._backoff import Backoff
from aiotask._log import get_logger
from aiotask._time import now
from aiotask.backends.base import EncodedResult, MemberReport, ResultRecord
from aiotask.canvas import runtime
from aiotask.canvas.compile import CHAIN_STATE
from aiotask.exceptions import BrokerConnectionError, ResultSignatureError
from aiotask.result import verified
from aiotask.security import Refused, seal
from aiotask.serializer import ExceptionInfo
from aiotask.states import FAILURE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from aiotask.app import App
    from aiotask.backends.base import GroupProgress, ResultBackend
    from aiotask.brokers.base import Delivery
    from aiotask.canvas.compile import GroupReport, Plan
    from aiotask.protocol import Message
    from aiotask.security.signing import Keyring
    from aiotask.worker._probe import Probe
    from aiotask.worker.outcome import Settlement

log = get_logger(__name__)

#: Attempts at one stage before giving up, for errors other than an unreachable server.
FLUSH_ATTEMPTS = 5
#: Test-only fault injection: `AIOTASK_TEST_CRASH_AT=<point>` makes the worker process exit
#: (os._exit) at that point; `<point>:raise` raises InjectedCrash instead (in-process tests),
#: `<point>:error` a BrokerConnectionError (a server failing at that stage; retried).
CRASH_AT_ENV = "AIOTASK_TEST_CRASH_AT"
CRASH_EXIT_CODE = 70
_EARLIER_STEP = ExceptionInfo(
    "aiotask.exceptions.TaskError", "an earlier step of the workflow failed"
)


class InjectedCrash(Exception):
    """A fault injected by a test at a named point; the settler never retries it."""


def fault_point(point: str) -> None:
    """Die here if a test asked for it (see CRASH_AT_ENV); a no-op otherwise."""
    wanted = os.environ.get(CRASH_AT_ENV)
    if wanted is None:
        return
    name, _, mode = wanted.partition(":")
    if name != point:
        return
    if mode == "raise":
        raise InjectedCrash(point)
    if mode == "error":
        raise BrokerConnectionError(f"injected failure at {point}")
    log.critical("injected crash at %s (%s is set): exiting now", point, CRASH_AT_ENV)
    os._exit(CRASH_EXIT_CODE)


@dataclass(slots=True)
class _Flush:
    """One batch and how far its settling got (a retry resumes at `stage`)."""

    batch: list[Settlement]
    stage: int = 0
    #: derived by the canvas stage, used by the next ones
    messages: list[Message] = field(default_factory=list)
    records: list[EncodedResult] = field(default_factory=list)
    decided: set[str] = field(default_factory=set)
    #: dead-letter reasons already nacked (a retry of the `dead` stage skips them)
    dead_done: set[str] = field(default_factory=set)


class Settler:
    """Collects settlements while a flush is in flight, so the next flush carries them all."""

    def __init__(self, app: App, on_settled: Callable[[Sequence[Delivery]], None]) -> None:
        self.app = app
        self._on_settled = on_settled
        self._pending: list[Settlement] = []
        self._wake = asyncio.Event()
        self._stopping = False
        #: metrics hooks (worker/_probe.py); None when nothing watches
        self.probe: Probe | None = None

    def add(self, settlement: Settlement) -> None:
        pending = self._pending
        pending.append(settlement)
        if len(pending) == 1:  # the first since the last flush took them: wake the settler
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
            await self._settle(_Flush(batch))
            self._on_settled([s.delivery for s in batch])

    async def _settle(self, flush: _Flush) -> None:
        """Run the stages in order; a failed stage is retried, then the next ones run."""
        stages: tuple[tuple[str, Callable[[_Flush], Awaitable[None]]], ...] = (
            ("store", self._store),
            ("canvas", self._canvas),
            ("store_canvas", self._store_canvas),
            ("publish", self._publish),
            ("mark_sent", self._mark_sent),
            ("release", self._release),
            ("ack", self._ack),
            ("requeue", self._requeue),
            ("dead", self._dead),
        )
        backoff = Backoff(0.25, 5.0, self.app.conf.broker_unreachable_timeout)
        attempt = 0
        while flush.stage < len(stages):
            where, stage = stages[flush.stage]
            try:
                await stage(flush)
            except InjectedCrash:
                raise
            except Exception as exc:
                attempt += 1
                size = len(flush.batch)
                # an unreachable server is waited out up to the deadline; anything else is
                # retried a few times (it is unlikely to pass on its own)
                unreachable = isinstance(exc, BrokerConnectionError | OSError)
                if (not unreachable and attempt >= FLUSH_ATTEMPTS) or backoff.expired:
                    log.critical(
                        "cannot settle %d deliveries (%s failed %d times over %.0fs), giving "
                        "up: %s",
                        size,
                        where,
                        attempt,
                        backoff.elapsed,
                        exc,
                    )
                    raise
                if attempt == 1 or not unreachable:
                    log.error(
                        "settling %d deliveries failed at %s (attempt %d), retrying for up to "
                        "%.0fs: %s",
                        size,
                        where,
                        attempt,
                        backoff.deadline,
                        exc,
                    )
                await asyncio.sleep(backoff.next_delay())
                continue
            if attempt:
                log.warning("settling resumed at %s after %d failed attempts", where, attempt)
            flush.stage += 1
            attempt = 0
            backoff.reset()

    async def _store(self, flush: _Flush) -> None:
        backend = self.app.backend
        stores = [s.store for s in flush.batch if s.store is not None]
        if stores and backend is not None:
            await backend.store(stores)

    async def _canvas(self, flush: _Flush) -> None:
        """Derive the batch's follow-ups; report chord members (one round trip per round).

        Idempotent, so a retry redoes it whole: a report already recorded answers as a
        duplicate, and a decided but unsent chord is decided again (`fire_again`).
        """
        finished = [s for s in flush.batch if s.finished is not None]
        flush.messages, flush.records, flush.decided = [], [], set()
        if not finished:
            return
        backend = self.app.backend
        if backend is None:
            log.error("canvas needs a result backend; follow-up steps were dropped")
            return
        work = await self._follow_ups(backend, finished)
        ttl = self.app.conf.result_expires
        keyring = self.app.wire.keyring
        sealer = self.app.result_keyring
        while work:
            reports: list[tuple[Settlement, GroupReport, EncodedResult]] = []
            for settlement, plan in work:
                assert settlement.finished is not None  # noqa: S101 - filtered above
                for group in plan.groups:
                    body = seal.seal(keyring, group.body)
                    await backend.open_group(group.group_id, group.size, body, ttl)
                error = settlement.finished.error or _EARLIER_STEP
                flush.records += [
                    _blob(key, seal.seal_steps(keyring, steps), ttl, sealer)
                    for key, steps in plan.blobs
                ]
                flush.records += [_failure(t, error, ttl, sealer) for t in plan.failed]
                flush.messages += plan.messages
                own = settlement.store
                for report in plan.reports:
                    mine = own is not None and own.task_id == report.task_id
                    record = (
                        own
                        if own is not None and mine
                        else _failure(report.task_id, error, ttl, sealer)
                    )
                    reports.append((settlement, report, record))
            work = await self._report(backend, reports, flush.decided) if reports else []

    async def _follow_ups(
        self, backend: ResultBackend, finished: list[Settlement]
    ) -> list[tuple[Settlement, Plan]]:
        """Each finished task's plan, with the chain remainders they refer to read at once."""
        keys = runtime.chain_keys(s.finished for s in finished if s.finished is not None)
        stored: dict[str, list[Any]] = {}
        if keys:
            found = await backend.get_many(keys)
            stored = self._unsealed(keys, found)
        work: list[tuple[Settlement, Plan]] = []
        for settlement in finished:
            assert settlement.finished is not None  # noqa: S101 - filtered by the caller
            plan = runtime.follow_ups(settlement.finished, stored, self.app.message_factory)
            if plan is None:
                message = settlement.finished.message
                log.error(
                    "task %s[%s]: its chain's stored remainder is gone (expired after "
                    "result_expires?); the rest of the chain does not run",
                    message.task,
                    message.id,
                )
                continue
            work.append((settlement, plan))
        return work

    def _unsealed(
        self, keys: list[str], found: Sequence[ResultRecord | None]
    ) -> dict[str, list[Any]]:
        """Stored chain remainders that may be used: with signing keys, only sealed ones that
        verify (a forged remainder is left out: its chain stops, logged)."""
        keyring = self.app.wire.keyring
        stored: dict[str, list[Any]] = {}
        for key, record in zip(keys, found, strict=True):
            if record is None:
                continue
            try:
                stored[key] = seal.unseal_steps(keyring, record.result)
            except Refused as exc:
                log.error("chain state %s not used (%s): %s", key, exc.reason, exc.detail)
        return stored

    def _verified(self, group_id: str, verdict: GroupProgress) -> GroupProgress:
        """A chord's stored body, unsealed; with a bad seal it is dropped (the body never
        runs, logged)."""
        if verdict.body is None:
            return verdict
        try:
            body = seal.unseal(self.app.wire.keyring, verdict.body)
        except Refused as exc:
            log.error("chord %s: stored body not used (%s): %s", group_id, exc.reason, exc.detail)
            return replace(verdict, body=None)
        sealer = self.app.result_keyring
        try:  # the body's input: with result_signing, only results a key holder stored
            for rec in verdict.records if sealer is not None else ():
                verified(rec, rec.task_id, sealer)
        except ResultSignatureError as exc:
            log.error("chord %s: body not run, a member's stored result: %s", group_id, exc)
            return replace(verdict, body=None)
        return replace(verdict, body=body)

    async def _report(
        self,
        backend: ResultBackend,
        reports: list[tuple[Settlement, GroupReport, EncodedResult]],
        decided: set[str],
    ) -> list[tuple[Settlement, Plan]]:
        """One round trip for every report; the bodies and failures the answers call for."""
        batch = [MemberReport(r.group_id, r.index, record) for _, r, record in reports]
        progress = await backend.add_to_groups(batch)
        if any(p.fire or p.fire_again for p in progress):
            fault_point("chord-fired")
        answers = []
        for (settlement, report, _), verdict in zip(reports, progress, strict=True):
            assert settlement.finished is not None  # noqa: S101 - only finished ones report
            verdict = self._verified(report.group_id, verdict)
            answers.append((settlement.finished.message, report, verdict))
            if verdict.fire_again or verdict.failure_again:
                log.warning(
                    "chord %s: a redelivered member found its outcome not yet sent; "
                    "deriving it again",
                    report.group_id,
                )
        factory = self.app.message_factory
        return [
            (reports[i][0], plan) for i, plan in runtime.after_reports(answers, factory, decided)
        ]

    async def _store_canvas(self, flush: _Flush) -> None:
        """Failed steps and stored chain remainders, before anything refers to them."""
        backend = self.app.backend
        if flush.records and backend is not None:
            await backend.store(flush.records)

    async def _publish(self, flush: _Flush) -> None:
        publish = [m for s in flush.batch for m in s.publish] + flush.messages
        if publish:
            await self.app.publish(publish)

    async def _mark_sent(self, flush: _Flush) -> None:
        backend = self.app.backend
        if flush.decided and backend is not None:
            fault_point("chord-published")
            await backend.groups_sent(sorted(flush.decided))

    async def _release(self, flush: _Flush) -> None:
        """Unique/debounce locks of finished tasks, before the ack: a crash in between runs
        the task again (at-least-once) instead of leaving the lock to expire."""
        locks = [lock for s in flush.batch for lock in s.release]
        backend = self.app.backend
        if locks and backend is not None:
            await backend.lock_store().release(locks)

    async def _ack(self, flush: _Flush) -> None:
        acks = [s.delivery for s in flush.batch if s.action == "ack"]
        if acks:
            await self.app.broker.ack(acks)

    async def _requeue(self, flush: _Flush) -> None:
        requeue = [s.delivery for s in flush.batch if s.action == "requeue"]
        if requeue:
            await self.app.broker.nack(requeue, requeue=True)

    async def _dead(self, flush: _Flush) -> None:
        dead = [s for s in flush.batch if s.action == "dead"]  # a list: no generator step per item
        if not dead:
            return
        dead.sort(key=lambda s: s.reason)
        for reason, group in groupby(dead, key=lambda s: s.reason):
            if reason in flush.dead_done:
                continue
            deliveries = [s.delivery for s in group]
            await self.app.broker.nack(deliveries, requeue=False, reason=reason)
            flush.dead_done.add(reason)
            if self.probe is not None:
                self.probe.dead_lettered(deliveries)


def _blob(key: str, steps: object, ttl: float, sealer: Keyring | None) -> EncodedResult:
    return EncodedResult.of(ResultRecord(key, CHAIN_STATE, steps), ttl, sealer)


def _failure(task_id: str, exc: ExceptionInfo, ttl: float, sealer: Keyring | None) -> EncodedResult:
    record = ResultRecord(task_id, FAILURE, exception=exc, date_done=now())
    return EncodedResult.of(record, ttl, sealer)
