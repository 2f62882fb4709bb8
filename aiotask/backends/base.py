"""The result-backend seam: stores result records (bytes) by task id, and group progress.

Contract, for every implementation:
- `store` is batched. For a task already in a ready state (SUCCESS, FAILURE, REVOKED) later
  writes are ignored: the first final writer wins, so a duplicate execution cannot overwrite
  a result. Non-final states (RETRY, STARTED, custom progress) overwrite each other.
- Every record expires after its `ttl` seconds.
- `wait` returns the record once it is ready, woken by the store where it can notify (no
  polling), and raises ResultTimeout when `timeout` passes first. A record stored before the
  wait began is seen.
- `add_to_groups` (and its one-report form `add_to_group`) records chord/group member reports,
  a whole batch in one round trip; each report is atomic and idempotent per index: a
  duplicated report for the same index neither counts twice nor fires twice. Exactly one
  report sees `fire=True` (all members succeeded) and at most one sees `first_failure=True`
  (see `group_step`, the state machine every backend implements; Redis mirrors it in Lua).
  Until `groups_sent` records that the decision's follow-ups were published, a *duplicate*
  report (a redelivered member) sees `fire_again` / `failure_again` with the same body and
  records, so a worker that died between the decision and publishing is replaced.
- `revoke` writes tombstones with a ttl; `revoked` returns which of the ids carry one;
  `revocations` returns every live tombstone (a worker loads them when it starts, then
  follows `broadcast`s, so checking a message costs no round trip).
- `broadcast` sends a small control payload to every live `control()` iterator (every worker):
  best effort, no persistence (a worker that is down learns from the tombstones instead).
- The worker registry: `register_worker` writes (or refreshes) one worker's record, which
  expires after `ttl` unless written again; `workers` returns every live record by name, from
  the store alone (it answers with every worker down); `unregister_worker` removes one.
- Replies to control requests: `reply` appends a payload under a request's reply id (kept
  `ttl` seconds); `replies` waits up to `wait` seconds for at least one and returns (and
  removes) every payload there so far, [] when none came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import orjson

from aiotask.exceptions import SerializationError
from aiotask.security import results as signed
from aiotask.serializer import ExceptionInfo
from aiotask.states import READY_STATES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from aiotask.beat.store import ScheduleStore
    from aiotask.coordination.store import CoordinationStore
    from aiotask.coordination.unique import LockStore
    from aiotask.security.signing import Keyring


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """What a task ended with (or its latest state while running)."""

    task_id: str
    state: str
    #: the return value, or the custom meta of a progress state
    result: Any = None
    exception: ExceptionInfo | None = None
    task: str | None = None
    retries: int = 0
    date_done: float | None = None
    #: the stored bytes when they carry a result seal (result_signing), for the reader to
    #: verify (aiotask.security.results.check); None for an unsigned record
    sealed: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


@dataclass(frozen=True, slots=True)
class EncodedResult:
    """A record already turned into bytes once, by the worker; backends store `data` as is."""

    task_id: str
    state: str
    data: bytes
    ttl: float
    #: the producer's channel (Message.reply_to), for a backend that pushes results there
    reply_to: str | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    @classmethod
    def of(cls, record: ResultRecord, ttl: float, keyring: Keyring | None = None) -> EncodedResult:
        """Encode a record, sealed with `keyring` (result_signing). Raises SerializationError
        if its result is not JSON."""
        data = encode_record(record)
        if keyring is not None:
            data = signed.seal(keyring, data)
        return cls(record.task_id, record.state, data, ttl)


_new = object.__new__
_set_task_id, _set_state, _set_data, _set_ttl, _set_reply_to = (
    EncodedResult.__dict__[name].__set__ for name in ("task_id", "state", "data", "ttl", "reply_to")
)


def encoded_result(
    task_id: str, state: str, data: bytes, ttl: float, reply_to: str | None = None
) -> EncodedResult:
    """`EncodedResult(task_id, state, data, ttl)` for the worker's hot path: the same frozen
    object, its slots set directly (a frozen dataclass's __init__ goes through
    object.__setattr__ per field: ~3,400 instructions more per result)."""
    result: EncodedResult = _new(EncodedResult)
    _set_task_id(result, task_id)
    _set_state(result, state)
    _set_data(result, data)
    _set_ttl(result, ttl)
    _set_reply_to(result, reply_to)
    return result


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """The state of a group after one member reported."""

    size: int
    done: int
    #: True for exactly one caller: the one whose report completed a fully successful group
    fire: bool = False
    #: True for exactly one caller: the first to report a failure
    first_failure: bool = False
    #: the group's stored body (e.g. a chord body), returned with `fire` or `first_failure`
    body: bytes | None = None
    #: the members' records in index order, returned with `fire` and `fire_again`
    records: list[ResultRecord] = field(default_factory=list)
    #: a duplicate report found the group fired but its body not yet marked sent: fire again
    fire_again: bool = False
    #: a duplicate report of a failed member found the failure's follow-ups not marked sent
    failure_again: bool = False


@dataclass(frozen=True, slots=True)
class MemberReport:
    """One group member's report: its index in the group and its final record."""

    group_id: str
    index: int
    result: EncodedResult


#: Group decision flags: not decided, decided (follow-ups maybe unpublished), follow-ups sent.
UNDECIDED, DECIDED, SENT = 0, 1, 2

GroupStep = Literal["", "fire", "first_failure", "fire_again", "failure_again"]


def group_step(
    *,
    size: int,
    done: int,
    succeeded: int,
    fired: int,
    failed: int,
    new: bool,
    member_failed: bool,
) -> tuple[GroupStep, int, int]:
    """The group state machine: (what this report means, new `fired`, new `failed`).

    `done`/`succeeded` count recorded members after this report; `new` is False for a
    duplicate index; `member_failed` is the *recorded* state of this index (the first report
    wins, so a redelivery that ends differently changes nothing). Pure; memory and SQLite
    call it, the Redis Lua script mirrors it line by line.
    """
    if new:
        if member_failed and failed == UNDECIDED and fired == UNDECIDED:
            return "first_failure", fired, DECIDED
        if done == size and succeeded == size and fired == UNDECIDED and failed == UNDECIDED:
            return "fire", DECIDED, failed
        return "", fired, failed
    if fired == DECIDED:
        return "fire_again", fired, failed
    if failed == DECIDED and member_failed:
        return "failure_again", fired, failed
    return "", fired, failed


def encode_record(record: ResultRecord) -> bytes:
    """The stored bytes of a record (a small JSON object)."""
    r = record
    return encode_fields(r.task_id, r.state, r.result, r.exception, r.task, r.retries, r.date_done)


def encode_fields(
    task_id: str,
    state: str,
    result: Any,
    exception: ExceptionInfo | None,
    task: str | None,
    retries: int,
    date_done: float | None,
) -> bytes:
    """encode_record without the record: the worker encodes each result once, from these."""
    data: dict[str, object] = {"id": task_id, "state": state}
    if result is not None:
        data["result"] = result
    if exception is not None:
        data["exc"] = exception.to_dict()
    if task:
        data["task"] = task
    if retries:
        data["retries"] = retries
    if date_done is not None:
        data["date_done"] = date_done
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise SerializationError(
            f"result of task {task or task_id} cannot be encoded as JSON: {exc}"
        ) from exc


def decode_record(data: bytes) -> ResultRecord:
    """Parse stored bytes back into a record (a sealed one keeps its bytes, unverified)."""
    blob = data
    data, is_sealed = signed.unsealed(data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"stored result is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or "id" not in obj or "state" not in obj:
        raise SerializationError("stored result lacks 'id' or 'state'")
    exc_data = obj.get("exc")
    return ResultRecord(
        task_id=str(obj["id"]),
        state=str(obj["state"]),
        result=obj.get("result"),
        exception=ExceptionInfo.from_dict(exc_data) if exc_data is not None else None,
        task=obj.get("task"),
        retries=int(obj.get("retries", 0)),
        date_done=obj.get("date_done"),
        sealed=blob if is_sealed else None,
    )


@runtime_checkable
class ResultBackend(Protocol):
    """Where results and group progress live; see the module docstring for the contract."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def store(self, results: Sequence[EncodedResult]) -> None: ...

    async def get(self, task_id: str) -> ResultRecord | None: ...

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]: ...

    async def wait(self, task_id: str, timeout: float | None) -> ResultRecord: ...

    async def forget(self, task_ids: Sequence[str]) -> None: ...

    async def open_group(
        self, group_id: str, size: int, body: bytes | None, ttl: float
    ) -> None: ...

    async def add_to_group(
        self, group_id: str, index: int, result: EncodedResult
    ) -> GroupProgress: ...

    async def add_to_groups(self, reports: Sequence[MemberReport]) -> list[GroupProgress]: ...

    async def groups_sent(self, group_ids: Sequence[str]) -> None: ...

    async def revoke(self, task_ids: Sequence[str], ttl: float) -> None: ...

    async def revocations(self) -> frozenset[str]: ...

    async def broadcast(self, payload: bytes) -> None: ...

    def control(self, subscribed: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """Broadcast payloads sent after the subscription; `subscribed()` is called once it
        is in place (a worker is not "ready" before it would hear a request)."""
        ...

    async def register_worker(self, name: str, record: bytes, ttl: float) -> None: ...

    async def unregister_worker(self, name: str) -> None: ...

    async def workers(self) -> dict[str, bytes]: ...

    async def reply(self, reply_to: str, payload: bytes, ttl: float) -> None: ...

    async def replies(self, reply_to: str, wait: float) -> list[bytes]: ...

    def schedule_store(self, app_name: str) -> ScheduleStore:
        """Where the beats of `app_name` agree on slots (aiotask/beat/store.py)."""
        ...

    def lock_store(self) -> LockStore:
        """Unique-task and debounce locks (aiotask/coordination/unique.py). Not per app name:
        a producer app and a worker app of other names share them (key_prefix separates)."""

    def coordination_store(self, app_name: str) -> CoordinationStore:
        """Where the workers of `app_name` share rate budgets and concurrency slots."""
        ...
