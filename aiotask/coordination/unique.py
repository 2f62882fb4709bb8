"""Unique tasks and debounce, the pure part: options, lock keys, headers and the store seam.

A send with `unique=True` takes a lock named after its *unique key* (the task name plus a
hash of the key's value) whose value is the task id; the message carries the lock's name in
a header so the worker that settles it can release it (compare-and-delete: only the holder
releases). A send with `debounce=SECONDS` records itself as the latest send for its key and
is delivered after the window; a worker runs it only if no later send replaced it.
The I/O lives in coordination/sending.py (producers) and worker/_coordination.py (workers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Header naming the unique lock a message holds (its value: the lock key).
UNIQUE_HEADER = "aiotask-unique"
#: Present (value "started") when the lock is released as the task starts.
UNTIL_HEADER = "aiotask-unique-until"
#: Header naming the debounce key of a debounced message.
DEBOUNCE_HEADER = "aiotask-debounce"
#: When a debounced send was made (its first eta, kept when a deferral moves the eta).
DEBOUNCE_AT_HEADER = "aiotask-debounce-at"
#: Options accepted on `@app.task(...)` and per call.
OPTION_NAMES = frozenset(
    {
        "unique",
        "unique_key",
        "unique_for",
        "unique_until",
        "on_conflict",
        "debounce",
        "debounce_key",
    }
)

Until = Literal["started", "finished"]
OnConflict = Literal["return_existing", "replace", "ignore"]
#: A kwarg name, several names, or a callable of the task's (args, kwargs) -> any JSON value.
KeySpec = str | Sequence[str] | Callable[..., Any] | None


class LockStore(Protocol):
    """Named locks whose value is an owner id, each with a lifetime (the safety net).

    Every call is atomic on the server (Lua on Redis, a transaction on SQLite); `release` is
    batched and only deletes a lock still held by the named owner.
    """

    async def acquire(self, name: str, owner: str, ttl: float) -> str | None:
        """Take `name` for `owner` if nobody holds it: None, else the current owner."""
        ...

    async def swap(self, name: str, expect: str, owner: str, ttl: float) -> bool:
        """Hand `name` from `expect` to `owner`; False if `expect` no longer holds it."""
        ...

    async def put(self, name: str, owner: str, ttl: float) -> None:
        """Set `name` to `owner` whoever held it (debounce: the latest send wins)."""
        ...

    async def get(self, name: str) -> str | None: ...

    async def release(self, locks: Sequence[tuple[str, str]]) -> None:
        """Delete each (name, owner) lock that `owner` still holds."""
        ...


@dataclass(frozen=True, slots=True)
class Coordination:
    """Validated unique/debounce options of a task or of one call (None fields: not set)."""

    unique: bool | None = None
    unique_key: KeySpec = None
    unique_for: float | None = None
    unique_until: Until | None = None
    on_conflict: OnConflict | None = None
    debounce: float | None = None
    debounce_key: KeySpec = None

    @property
    def is_unique(self) -> bool:
        """`unique=True`, or a `unique_key` (unless a call said `unique=False`)."""
        if self.unique is False:
            return False
        return bool(self.unique) or self.unique_key is not None

    def over(self, base: Coordination | None) -> Coordination:
        """These (call) options over `base` (the task's): a field set here wins."""
        if base is None:
            return self
        merged = {
            name: getattr(self, name) if getattr(self, name) is not None else getattr(base, name)
            for name in OPTION_NAMES
        }
        return Coordination(**merged)


def build(task: str, raw: Mapping[str, Any]) -> Coordination | None:
    """Check the unique/debounce options among `raw`; None when none is given."""
    given = {k: v for k, v in raw.items() if k in OPTION_NAMES and v is not None}
    if not given:
        return None
    until = given.get("unique_until")
    if until is not None and until not in ("started", "finished"):
        raise ConfigurationError(
            f"task {task}: unique_until must be 'started' or 'finished', got {until!r}"
        )
    conflict = given.get("on_conflict")
    if conflict is not None and conflict not in ("return_existing", "replace", "ignore"):
        raise ConfigurationError(
            f"task {task}: on_conflict must be 'return_existing', 'replace' or 'ignore', "
            f"got {conflict!r}"
        )
    for name in ("unique_for", "debounce"):
        value = given.get(name)
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise ConfigurationError(f"task {task}: {name} must be positive seconds, got {value!r}")
    for name in ("unique_key", "debounce_key"):
        _check_spec(task, name, given.get(name))
    return Coordination(**given)


def check(task: str, coord: Coordination) -> None:
    """Reject combinations that have no meaning, once call and task options are merged."""
    if coord.debounce is not None and coord.is_unique:
        raise ConfigurationError(
            f"task {task}: debounce and unique cannot be combined (debounce already keeps one "
            "waiting send per key); use debounce_key= to choose the key"
        )


def _check_spec(task: str, name: str, spec: object) -> None:
    if spec is None or callable(spec) or isinstance(spec, str):
        return
    if isinstance(spec, list | tuple) and spec and all(isinstance(s, str) for s in spec):
        return
    raise ConfigurationError(
        f"task {task}: {name} must be a kwarg name, a list of names or a callable, got {spec!r}"
    )


def key_value(
    spec: KeySpec,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    sig: inspect.Signature | None = None,
) -> Any:
    """What identifies a call: all its arguments as written (no spec: `f(1)` and `f(x=1)`
    differ, so a sender that has only the task's name computes the same key), named
    arguments, or a callable's answer. Names are looked up among the arguments bound to the
    task's signature `sig` (defaults applied), so a parameter passed by position is found."""
    if spec is None:
        return [list(args), dict(kwargs)]
    if callable(spec):
        return spec(*args, **kwargs)
    bound = _bind(sig, args, kwargs)
    found = bound if bound is not None else dict(kwargs)
    names = [spec] if isinstance(spec, str) else list(spec)
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigurationError(
            f"unique/debounce key argument(s) {', '.join(missing)} not given in this call "
            "(send_task of a task this process did not import finds names among kwargs only)"
        )
    values = [found[n] for n in names]
    return values[0] if isinstance(spec, str) else values


def signature_of(fn: Callable[..., Any], bind: bool) -> inspect.Signature | None:
    """The parameters a caller passes (a bound task's context parameter dropped)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if bind:
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    return sig


def _bind(
    sig: inspect.Signature | None, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any] | None:
    if sig is None:
        return None
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    out = dict(bound.arguments)
    for param in sig.parameters.values():  # **kwargs: its names count as parameters
        if param.kind is param.VAR_KEYWORD and isinstance(out.get(param.name), dict):
            out.update(out.pop(param.name))
    return out


def canonical(value: Any) -> bytes:
    """Bytes equal for equal JSON values: sorted keys, tuples as lists."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise ConfigurationError(f"unique/debounce key is not JSON-encodable: {exc}") from None


def lock_key(task: str, value: Any) -> str:
    """The lock name of one call: task name plus a digest of the key's canonical value."""
    import hashlib  # here, not at the top: 0.7 MiB of an idle SQLite worker's RSS

    digest = hashlib.sha256(canonical(value)).hexdigest()[:32]
    return f"{task}:{digest}"


def unique_key(
    task: str,
    spec: KeySpec,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    sig: inspect.Signature | None = None,
) -> str:
    """The unique lock name of a call (default: the task name and all its arguments)."""
    return "u:" + lock_key(task, key_value(spec, args, kwargs, sig))


def debounce_key(
    task: str,
    spec: KeySpec,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    sig: inspect.Signature | None = None,
) -> str:
    """The debounce key of a call (default: the task name alone, whatever the arguments)."""
    value = None if spec is None else key_value(spec, args, kwargs, sig)
    return "d:" + lock_key(task, value)


def latest_lock(key: str) -> str:
    """The debounce record of the latest send for `key`."""
    return key + ":latest"


def latest_value(message_id: str, at: str) -> str:
    """The latest-send record: the message id and when it was sent (DEBOUNCE_AT_HEADER)."""
    return f"{message_id} {at}"


#: How long a debounced message waits for its own latest-send record (the sender publishes,
#: then records): past this, the sender is taken to have died in between and the message runs.
RECORD_GRACE = 5.0


class Debounce(Enum):
    """What a debounced message does when it comes up."""

    RUN = "run"
    SUPERSEDED = "superseded"  # a later send of the key is recorded: it runs instead
    WAIT = "wait"  # this send is not recorded yet: look again shortly


def _sent_at(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def debounce_verdict(
    latest: str | None, message_id: str, at: str | None, at_now: float
) -> Debounce:
    """Compare the latest-send record with this message (see record_latest for the writes).

    Records only move forward in send time, so a record older than this message means this
    sender's own write has not landed yet: waiting for it, rather than treating the message as
    superseded, is what keeps a slow write from dropping every send of the window. Across an
    upgrade: a record without a time (an older sender's) counts as older than a timed message,
    and a message without a time (an older sender's) compares by id alone, as it used to.
    """
    if latest is None:
        return Debounce.RUN
    latest_id, _, latest_at = latest.partition(" ")
    if latest_id == message_id:
        return Debounce.RUN
    mine = _sent_at(at)
    if mine is None:
        return Debounce.SUPERSEDED
    theirs = _sent_at(latest_at)
    if theirs is not None and theirs > mine:
        return Debounce.SUPERSEDED
    return Debounce.WAIT if at_now < mine + RECORD_GRACE else Debounce.RUN


async def record_latest(store: LockStore, name: str, message_id: str, at: str, ttl: float) -> None:
    """Record this send as the latest unless a later one already is (compare and swap), so
    concurrent senders whose writes land out of order still leave the last send recorded. A
    record without a time (an older version's) is replaced."""
    value = latest_value(message_id, at)
    mine = _sent_at(at)
    for _ in range(20):
        current = await store.acquire(name, value, ttl)
        if current is None or current == value:
            return
        theirs = _sent_at(current.partition(" ")[2])
        if theirs is not None and mine is not None and theirs > mine:
            return  # a later send is recorded already
        if await store.swap(name, current, value, ttl):
            return
    await store.put(name, value, ttl)  # contended all along: the last resort is to overwrite


def running_lock(key: str) -> str:
    """The debounce lock held while one send for `key` runs (at most one at a time)."""
    return key + ":running"
