"""Task: a registered function plus its options; sends itself to workers or runs locally."""

from __future__ import annotations

import inspect
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypedDict, Unpack, cast

if TYPE_CHECKING:
    from typing_extensions import TypeVar  # PEP 696 defaults (in `typing` from 3.13)
else:
    from typing import TypeVar

from aiotask._time import now, parse_rate, to_timestamp
from aiotask.canvas.primitives import Group, Signature, chunks, xmap, xstarmap
from aiotask.context import TaskContext
from aiotask.coordination import fairness
from aiotask.coordination import sending as _coordinated
from aiotask.coordination import spec as limit_spec
from aiotask.coordination.unique import OPTION_NAMES as COORDINATION_OPTIONS
from aiotask.coordination.unique import Coordination, KeySpec, OnConflict, Until, signature_of
from aiotask.coordination.unique import build as build_coordination
from aiotask.exceptions import ConfigurationError
from aiotask.protocol import Message, new_id
from aiotask.result import SyncResult
from aiotask.retry import RetryPolicy
from aiotask.sync import run_sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from aiotask.app import App
    from aiotask.result import AsyncResult
    from aiotask.states import State

P = ParamSpec("P")
R = TypeVar("R")
#: What calling the task object returns: a coroutine of R for an async task, R for a plain
#: function. `@app.task` fills it in; an annotation `Task[P, R]` leaves it Any.
if TYPE_CHECKING:
    L = TypeVar("L", default=Any)
else:  # the default is for type checkers; Task.__class_getitem__ applies it at run time
    L = TypeVar("L")


class TaskOptionsDict(TypedDict, total=False):
    """The keyword options of `@app.task(...)` (Celery's names)."""

    name: str
    queue: str
    priority: int
    max_retries: int | None
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    default_retry_delay: float
    time_limit: float
    soft_time_limit: float
    rate_limit: str | float
    # coordination (docs/task-options.md): cluster-wide rate and concurrency limits
    rate_limit_scope: Literal["worker", "global"]
    rate_limit_key: str | Callable[..., object] | None
    concurrency_limit: int | None
    concurrency_key: str | Callable[..., object] | None
    ignore_result: bool
    acks_late: bool
    expires: float
    base: type[Task[Any, Any]]
    # unique tasks and debounce (docs/task-options.md)
    unique: bool
    unique_key: KeySpec
    unique_for: float
    unique_until: Until
    on_conflict: OnConflict
    debounce: float
    debounce_key: KeySpec
    # fairness across keys (aiotask/coordination/fairness.py)
    fairness_key: str | Callable[..., object] | None


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Validated per-task options; call options override them, they override settings."""

    name: str
    queue: str | None = None
    priority: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: float | None = None  # tasks per second
    ignore_result: bool = False
    #: coordinated limits (aiotask/coordination): scope "global" shares the rate across workers
    rate_limit_scope: str = "worker"
    rate_limit_key: str | Callable[..., object] | None = None
    concurrency_limit: int | None = None
    concurrency_key: str | Callable[..., object] | None = None
    acks_late: bool = True
    expires: float | None = None
    bind: bool = False
    #: unique / debounce options (None: neither)
    coordination: Coordination | None = None
    #: fairness: a parameter name or callable whose value the queue is served round-robin by
    fairness_key: str | Callable[..., object] | None = None

    @classmethod
    def build(cls, name: str, bind: bool, raw: Mapping[str, Any]) -> TaskOptions:
        """Check options at definition time, so a typo fails at import, not in production."""
        retry_keys = set(RetryPolicy.__dataclass_fields__)
        retry = RetryPolicy(**{k: v for k, v in raw.items() if k in retry_keys})
        if isinstance(retry.autoretry_for, type):
            retry = RetryPolicy(**{**_fields(retry), "autoretry_for": (retry.autoretry_for,)})
        priority = raw.get("priority")
        if priority is not None and not 0 <= priority <= 9:
            raise ConfigurationError(f"task {name}: priority must be 0..9, got {priority!r}")
        if raw.get("acks_late", True) is not True:
            raise ConfigurationError(
                f"task {name}: acks_late={raw['acks_late']!r} is not supported: aiotask always "
                "acknowledges a message after its result is stored (at-least-once), so a worker "
                "that dies mid-task never loses it; make the task idempotent instead"
            )
        for key in ("time_limit", "soft_time_limit", "expires"):
            value = raw.get(key)
            if value is not None and value <= 0:
                raise ConfigurationError(f"task {name}: {key} must be positive, got {value!r}")
        limit_keys = {k: raw.get(k) for k in ("rate_limit_key", "concurrency_key")}
        limit_spec.check(
            name, raw.get("rate_limit_scope"), raw.get("concurrency_limit"), limit_keys
        )
        return cls(
            name=name,
            queue=raw.get("queue"),
            priority=priority,
            retry=retry,
            time_limit=raw.get("time_limit"),
            soft_time_limit=raw.get("soft_time_limit"),
            rate_limit=parse_rate(raw.get("rate_limit")),
            ignore_result=bool(raw.get("ignore_result", False)),
            acks_late=True,
            expires=raw.get("expires"),
            bind=bind,
            coordination=build_coordination(name, raw),
            rate_limit_scope=raw.get("rate_limit_scope") or "worker",
            rate_limit_key=raw.get("rate_limit_key"),
            concurrency_limit=raw.get("concurrency_limit"),
            concurrency_key=raw.get("concurrency_key"),
            fairness_key=_fairness_key(name, raw.get("fairness_key")),
        )


def _fairness_key(name: str, key: object) -> str | Callable[..., object] | None:
    fairness.check(name, key)
    return cast("str | Callable[..., object] | None", key)


def _fields(policy: RetryPolicy) -> dict[str, Any]:
    return {f: getattr(policy, f) for f in RetryPolicy.__dataclass_fields__}


KNOWN_OPTIONS = frozenset(TaskOptionsDict.__annotations__) | {"bind"}


class CallOptions(TypedDict, total=False):
    """Per-call options of `apply_async(...)` (Celery's names)."""

    countdown: float | None
    eta: datetime | float | None
    expires: float | datetime | None
    priority: int | None
    queue: str | None
    task_id: str | None
    headers: Mapping[str, str] | None
    ignore_result: bool | None
    # False: return once the message is written, before RabbitMQ confirms it (docs/rabbitmq.md)
    confirm: bool | None
    # unique tasks and debounce: over the task's own (docs/task-options.md)
    unique: bool | None
    unique_key: KeySpec
    unique_for: float | None
    unique_until: Until | None
    on_conflict: OnConflict | None
    debounce: float | None
    debounce_key: KeySpec
    # coordination: per-call limits, carried in headers with their keys resolved at send
    rate_limit: str | float | None
    rate_limit_scope: Literal["worker", "global"] | None
    rate_limit_key: str | Callable[..., object] | None
    concurrency_limit: int | None
    concurrency_key: str | Callable[..., object] | None
    # fairness across keys: over the task's own
    fairness_key: str | Callable[..., object] | None


#: The per-call options that become limit headers (aiotask/coordination/spec.py).
LIMIT_OPTIONS = frozenset(
    ("rate_limit", "rate_limit_scope", "rate_limit_key", "concurrency_limit", "concurrency_key")
)
#: Per-call options of apply_async / send_task.
SEND_OPTIONS = frozenset(CallOptions.__annotations__)
#: Per-call options a signature may carry (`sig.set(...)`, `signature(options=...)`);
#: a signature's id is frozen by the canvas instead, and canvas steps are not unique.
CALL_OPTIONS = SEND_OPTIONS - {"task_id", "confirm"} - COORDINATION_OPTIONS


def check_call_options(task: str, options: Mapping[str, object], known: frozenset[str]) -> None:
    """One error for an unknown per-call option, on every path (apply_async, send_task,
    canvas): ConfigurationError, like an unknown `@app.task` option, and naming the task."""
    unknown = options.keys() - known
    if unknown:
        raise ConfigurationError(
            f"unknown call option(s) {', '.join(sorted(unknown))} on {task}; known: "
            f"{', '.join(sorted(known))}"
        )


@dataclass(frozen=True, slots=True)
class Call(Generic[P]):
    """One call's arguments, checked against the task's signature: `add.call(1, y=2)`."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Task(Generic[P, R, L]):
    """A registered task. Subclass it (`base=`) to add async lifecycle hooks.

    Calling the task runs the function here, in this process (a coroutine for async tasks);
    `send()` / `apply_async()` run it on a worker.
    """

    def __class_getitem__(cls, params: Any) -> Any:
        """`Task[P, R]` at run time means `Task[P, R, Any]`, as L's default says to type
        checkers, without importing typing_extensions for it (0.4 MiB of an idle worker)."""
        own = getattr(cls, "__parameters__", ())
        last = own[-1] if own else None
        if isinstance(params, tuple) and last is L and len(params) == len(own) - 1:  # type: ignore[misc]
            params = (*params, Any)
        return super().__class_getitem__(params)  # type: ignore[misc]

    def __init__(self, app: App, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        cls = type(self)
        #: hooks run only when a subclass overrides them: no per-task cost otherwise
        self.has_hooks = any(
            getattr(cls, hook) is not getattr(Task, hook)
            for hook in ("on_success", "on_failure", "on_retry", "after_return")
        )
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> L:
        """Run here: a coroutine (await it) for an async task, the value for a plain one."""
        if self.options.bind:
            ctx = TaskContext(str(uuid.uuid4()), self.name, list(args), dict(kwargs))
            return self.fn(ctx, *args, **kwargs)  # type: ignore[no-any-return]
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send with default options; returns once the broker holds the message."""
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncResult[R]:
        """Send with per-call options (Celery's names); returns once the broker holds it."""
        coord = self.options.coordination
        plain = cast("dict[str, Any]", options)  # this call's own dict: popping is safe
        confirm = True
        if options:
            check_call_options(self.name, options, SEND_OPTIONS)
            confirm = plain.pop("confirm", None) is not False
            if COORDINATION_OPTIONS & options.keys():
                coord = self._call_coordination(plain)
        message = self.message(args, kwargs, **plain)
        if coord is not None:  # unique/debounce sends stay confirmed: their lock depends on it
            sig = signature_of(self.fn, self.options.bind)
            return await _coordinated.send(self.app, message, coord, sig)
        if not message.ignore_result:  # before the publish: it may be built into the bytes
            message.reply_to = self.app._reply_to(message.id)
        await self.app.publish([message], confirm=confirm)
        return self.app.AsyncResult(message.id)

    def _call_coordination(self, options: dict[str, Any]) -> Coordination | None:
        """Pop the unique/debounce call options; merged over the task's own."""
        raw = {k: options.pop(k) for k in COORDINATION_OPTIONS & options.keys()}
        call = build_coordination(self.name, raw)
        if call is None:
            return self.options.coordination
        return call.over(self.options.coordination)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
        """Send from plain (non-async) code: Django/Flask views, scripts, threads. Blocks until
        the broker holds the message; thread-safe; see docs/sync.md. On a thread that runs an
        event loop it raises SyncCallInEventLoop: use `await task.send(...)` there."""
        return SyncResult(run_sync(self.apply_async(args, kwargs)))

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[P]:
        """One call's arguments for `send_batch`, type-checked like a direct call."""
        return Call(args, kwargs)

    async def send_batch(
        self, calls: Iterable[Call[P] | tuple[object, ...]]
    ) -> list[AsyncResult[R]]:
        """Send one message per call, in one pipelined publish: `task.call(...)` values
        (checked against the task's parameters), or tuples of positional arguments."""
        if self.options.coordination is not None:  # each send takes its own lock
            return [
                await self.apply_async(c.args, c.kwargs)
                if isinstance(c, Call)
                else await self.apply_async(c)
                for c in calls
            ]
        messages = [
            self.message(c.args, c.kwargs) if isinstance(c, Call) else self.message(c)
            for c in calls
        ]
        await self.app.publish(messages)
        return [self.app.AsyncResult(m.id) for m in messages]

    def message(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        expires: float | datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        ignore_result: bool | None = None,
        **limits: Any,
    ) -> Message:
        """The envelope a send would publish; options resolved call > task > settings."""
        opts = self.options
        fair = limits.pop("fairness_key", opts.fairness_key)  # fairness: resolved at send
        if fair is not None:
            args = list(args) if args is not None else []
            fair_extra = fairness.fair_headers(
                self.name, fair, args, kwargs or {}, self.fn, opts.bind
            )
            headers = {**(headers or {}), **fair_extra}
        if limits:
            check_call_options(self.name, limits, LIMIT_OPTIONS)
            args = list(args) if args is not None else []
            extra = limit_spec.call_headers(
                self.name, limits, args, kwargs or {}, self.fn, opts.bind
            )
            headers = {**(headers or {}), **extra}
        conf = self.app.conf
        when: float | None = None
        if countdown is not None:
            when = now() + countdown
        elif eta is not None:
            when = to_timestamp(eta) if isinstance(eta, datetime) else float(eta)
        exp = expires if expires is not None else opts.expires
        expires_at: float | None = None
        if isinstance(exp, datetime):
            expires_at = to_timestamp(exp)
        elif exp is not None:
            expires_at = now() + exp
        ident = task_id or new_id()
        return Message(
            id=ident,
            task=self.name,
            args=list(args) if args is not None else [],
            kwargs=dict(kwargs) if kwargs else {},
            queue=queue or opts.queue or self.app.route(self.name),
            priority=priority
            if priority is not None
            else (opts.priority if opts.priority is not None else conf.default_priority),
            eta=when,
            expires=expires_at,
            root_id=ident,
            headers=dict(headers) if headers else {},
            ignore_result=opts.ignore_result if ignore_result is None else ignore_result,
        )

    # Canvas ------------------------------------------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: the parent's result (in a chain) is prepended to `args`."""
        return Signature(self.name, args, kwargs, runner=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: ignores the parent's result."""
        return Signature(self.name, args, kwargs, immutable=True, runner=self.app)

    def map(self, items: Iterable[Any]) -> Signature:
        """One message calling the task once per item; the result is the list of results."""
        return xmap(self.s(), items)

    def starmap(self, items: Iterable[Iterable[Any]]) -> Signature:
        """One message calling the task once per argument tuple."""
        return xstarmap(self.s(), items)

    def chunks(self, items: Iterable[Iterable[Any]], size: int) -> Group:
        """A group of starmap messages of `size` calls each (one pipelined publish)."""
        return chunks(self.s(), items, size)

    # Lifecycle hooks, for subclasses (`base=`). Async only; Celery's signatures.
    async def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Called on the worker after the task returned."""

    async def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        """Called on the worker after the task failed for good."""

    async def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
    ) -> None:
        """Called on the worker when the task will be retried."""

    async def after_return(
        self, status: State, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: str | None
    ) -> None:
        """Called on the worker after any of the above."""
