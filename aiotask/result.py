"""Result handles: AsyncResult and GroupResult, thin views over a ResultBackend; SyncResult,
the blocking handle for plain (non-async) code."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from aiotask._time import now
from aiotask.backends.base import EncodedResult, ResultBackend, ResultRecord
from aiotask.exceptions import ResultTimeout, TaskRevoked
from aiotask.security import results as signed
from aiotask.serializer import ExceptionInfo, caller_exception
from aiotask.states import FAILURE, PENDING, READY_STATES, REVOKED, SUCCESS
from aiotask.sync import run_sync

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.security.signing import Keyring

R = TypeVar("R")


class ResultSource(Protocol):
    """What a result handle needs from its App (kept abstract so results never import the App)."""

    async def result_backend(self) -> ResultBackend: ...

    @property
    def result_keyring(self) -> Keyring | None:
        """The keys that verify stored results (None: result_signing is off)."""
        ...

    async def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> None: ...


class AsyncResult(Generic[R]):
    """A handle on one task's outcome; cheap to create, does I/O only when awaited."""

    __slots__ = ("_source", "id")

    def __init__(self, task_id: str, source: ResultSource) -> None:
        self.id = task_id
        self._source = source

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def _record(self) -> ResultRecord | None:
        record = await (await self._source.result_backend()).get(self.id)
        return verified(record, self.id, self._source.result_keyring)

    async def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the result (no polling). A failure re-raises the task's exception; with
        result_signing, a record that fails its check raises ResultSignatureError."""
        backend = await self._source.result_backend()
        record = await backend.wait(self.id, timeout)
        verified(record, self.id, self._source.result_keyring)
        return outcome_of(record, propagate)  # type: ignore[no-any-return]

    async def state(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED or a custom state."""
        record = await self._record()
        return record.state if record is not None else PENDING

    async def info(self) -> Any:
        """The result, the exception, or the custom meta of a progress state."""
        record = await self._record()
        if record is None:
            return None
        if record.exception is not None:
            return caller_exception(record.exception)
        return record.result

    async def ready(self) -> bool:
        return await self.state() in READY_STATES

    async def successful(self) -> bool:
        return await self.state() == SUCCESS

    async def failed(self) -> bool:
        return await self.state() == FAILURE

    async def revoke(self, terminate: bool = False) -> None:
        """Stop the task: a pending one never runs; with terminate=True a running one is stopped."""
        await self._source.revoke([self.id], terminate=terminate)

    async def forget(self) -> None:
        """Delete the stored result."""
        await (await self._source.result_backend()).forget([self.id])


class SyncResult(Generic[R]):
    """The blocking twin of AsyncResult, for plain code (what `task.delay()` returns):
    `r.id`, `r.get(timeout=10)`, `r.state`, `r.revoke()`. Each call runs the async call on the
    process's loop thread (see aiotask.sync); calling it on an event loop's thread raises
    SyncCallInEventLoop."""

    __slots__ = ("async_result",)

    def __init__(self, result: AsyncResult[R]) -> None:
        #: the async handle, for code that also has an event loop
        self.async_result = result

    @property
    def id(self) -> str:
        return self.async_result.id

    def __repr__(self) -> str:
        return f"<SyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Block until the result is ready (ResultTimeout after `timeout` seconds); a failure
        re-raises the task's exception."""
        return run_sync(self.async_result.get(timeout, propagate))

    @property
    def state(self) -> str:
        """PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED or a custom state
        (a property, as in Celery: one backend read per access)."""
        return run_sync(self.async_result.state())

    @property
    def info(self) -> Any:
        """The result, the exception, or the custom meta of a progress state."""
        return run_sync(self.async_result.info())

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    def revoke(self, terminate: bool = False) -> None:
        """Stop the task: a pending one never runs; with terminate=True a running one is stopped."""
        run_sync(self.async_result.revoke(terminate))

    def forget(self) -> None:
        """Delete the stored result."""
        run_sync(self.async_result.forget())


class GroupResult(Generic[R]):
    """Handles on a group's members, in order."""

    def __init__(self, group_id: str, results: list[AsyncResult[R]], source: ResultSource) -> None:
        self.id = group_id
        self.results = results
        self._source = source

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} ({len(self.results)} results)>"

    def __len__(self) -> int:
        return len(self.results)

    async def get(self, timeout: float | None = None, propagate: bool = True) -> list[R]:
        """All results in order; one backend read for the ready ones, then waits for the rest."""
        backend = await self._source.result_backend()
        ids = [r.id for r in self.results]
        records = await backend.get_many(ids)
        missing = [i for i, rec in enumerate(records) if rec is None or not rec.ready]
        if missing:
            try:
                async with asyncio.timeout(timeout):
                    waited = await asyncio.gather(*(backend.wait(ids[i], None) for i in missing))
            except TimeoutError as exc:  # asyncio's plain TimeoutError: ours, like AsyncResult's
                if isinstance(exc, ResultTimeout):
                    raise
                raise ResultTimeout(
                    f"group {self.id}: {len(missing)} of {len(ids)} results not ready after "
                    f"{timeout}s; is a worker consuming their queues?"
                ) from None
            for i, rec in zip(missing, waited, strict=True):
                records[i] = rec
        self._verify(ids, records)
        return [outcome_of(rec, propagate) for rec in records if rec is not None]

    async def _records(self) -> list[ResultRecord | None]:
        ids = [r.id for r in self.results]
        records = await (await self._source.result_backend()).get_many(ids)
        self._verify(ids, records)
        return records

    def _verify(self, ids: list[str], records: Sequence[ResultRecord | None]) -> None:
        keyring = self._source.result_keyring
        if keyring is not None:
            for task_id, rec in zip(ids, records, strict=True):
                verified(rec, task_id, keyring)

    async def completed_count(self) -> int:
        records = await self._records()
        return sum(1 for rec in records if rec is not None and rec.state == SUCCESS)

    async def ready(self) -> bool:
        records = await self._records()
        return all(rec is not None and rec.ready for rec in records)


def verified(
    record: ResultRecord | None, task_id: str, keyring: Keyring | None
) -> ResultRecord | None:
    """`record` once it passed the result_signing check (no check without a keyring);
    ResultSignatureError naming `task_id` when it is unsigned, forged or another task's."""
    if keyring is not None and record is not None:
        signed.check(keyring, task_id, record.task_id, record.sealed)
    return record


def outcome_of(record: ResultRecord, propagate: bool) -> Any:
    """The value of a ready record, or its exception (raised when `propagate`)."""
    if record.state == SUCCESS:
        return record.result
    if record.state == REVOKED:
        exc: BaseException = TaskRevoked(f"task {record.task_id} was revoked")
    else:
        info = record.exception or ExceptionInfo("builtins.Exception", str(record.result))
        exc = caller_exception(info)
    if propagate:
        raise exc
    return exc


def revoked_record(task_id: str) -> ResultRecord:
    """The REVOKED record a revoke writes at once, so state() answers REVOKED immediately."""
    return ResultRecord(task_id, REVOKED, date_done=now())


def encode_revoked(
    task_ids: Sequence[str], ttl: float, keyring: Keyring | None = None
) -> list[EncodedResult]:
    return [EncodedResult.of(revoked_record(t), ttl, keyring) for t in task_ids]
