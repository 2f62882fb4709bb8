"""App: the task registry, settings, and broker/backend connections."""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import weakref
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, Unpack, overload

import orjson

from aiotask import backends, brokers, protocol
from aiotask._log import get_logger
from aiotask._urls import redact
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.beat.api import Schedules
from aiotask.beat.entry import Entry, entry_from_mapping
from aiotask.brokers.base import Outgoing
from aiotask.canvas import runtime
from aiotask.canvas.compile import CHAIN_STATE
from aiotask.canvas.primitives import MAP_TASK, STARMAP_TASK
from aiotask.events.follow import emit_sent
from aiotask.exceptions import (
    ConfigurationError,
    MessageTooLarge,
    NotRegistered,
    SerializationError,
)
from aiotask.result import AsyncResult, GroupResult, encode_revoked
from aiotask.serializer import unencodable_message
from aiotask.settings import FROM_BROKER, Settings
from aiotask.task import (
    CALL_OPTIONS,
    KNOWN_OPTIONS,
    CallOptions,
    Task,
    TaskOptions,
    TaskOptionsDict,
    check_call_options,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
    from types import TracebackType
    from typing import Concatenate, Self

    from aiotask.backends.base import ResultBackend
    from aiotask.brokers.base import Broker
    from aiotask.canvas.primitives import Canvas
    from aiotask.context import TaskContext
    from aiotask.middleware import Middleware
    from aiotask.protocol import Message

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
log = get_logger(__name__)

_UNSET: Any = object()
#: task names whose queue App.route remembers (cleared when full)
ROUTE_CACHE_SIZE = 10_000
#: every App created in this process, so pool children can find a task by name
_APPS: weakref.WeakSet[App] = weakref.WeakSet()


class _Decorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Task[P, R, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R, R]: ...


class _BoundDecorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[Concatenate[TaskContext, P], Coroutine[Any, Any, R]], /
    ) -> Task[P, R, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[TaskContext, P], R], /) -> Task[P, R, R]: ...


class App:
    """An aiotask application: `App("proj", broker=..., backend=...)`.

    With no `broker`, the URL comes from AIOTASK_BROKER_URL, else the embedded SQLite file.
    With no `backend`, Redis and SQLite brokers keep results on the same server/file;
    `backend=None` disables results.
    """

    def __init__(
        self,
        main: str = "aiotask",
        *,
        broker: str | None = None,
        backend: str | None = _UNSET,
        middleware: Sequence[Middleware] = (),
        **settings: Any,
    ) -> None:
        overrides = dict(settings)
        if broker is not None:
            overrides["broker_url"] = broker
            if backend is _UNSET:
                overrides.setdefault("result_backend", FROM_BROKER)
        if backend is not _UNSET:
            overrides["result_backend"] = backend
        self.main = main
        self.middleware: list[Middleware] = list(middleware)
        self.conf: Settings = Settings.from_env(**overrides)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._connected = False
        self._lock: asyncio.Lock | None = None
        self._routes: tuple[Settings, dict[str, str]] = (self.conf, {})
        for builtin in (MAP_TASK, STARMAP_TASK):  # run by the worker's executor itself
            self.tasks[builtin] = Task(self, _never, TaskOptions(name=builtin))
        #: periodic entries defined in code (`beat_schedule`, `@app.periodic`), by name
        self.beat_entries: dict[str, Entry] = {
            name: entry_from_mapping(name, spec) for name, spec in self.conf.beat_schedule.items()
        }
        self._schedules: Schedules | None = None
        _APPS.add(self)

    def __repr__(self) -> str:
        return f"<App {self.main} broker={redact(self.conf.broker_url)}>"

    # --- tasks ---------------------------------------------------------------------------
    @overload
    def task(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Task[P, R, Coroutine[Any, Any, R]]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R, R]: ...
    @overload
    def task(
        self, /, *, bind: Literal[True], **options: Unpack[TaskOptionsDict]
    ) -> _BoundDecorator: ...
    @overload
    def task(
        self, /, *, bind: Literal[False] = False, **options: Unpack[TaskOptionsDict]
    ) -> _Decorator: ...
    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a coroutine (runs on the worker's loop) or a plain function (process pool)."""
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown task option(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(KNOWN_OPTIONS))}"
            )

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            name = options.get("name") or f"{func.__module__}.{func.__qualname__}"
            if name in self.tasks:
                raise ConfigurationError(
                    f"task name {name!r} is already registered in app {self.main!r}: "
                    "give one of them name=..."
                )
            base: type[Task[Any, Any]] = options.get("base", Task)
            opts = TaskOptions.build(name, bool(options.get("bind", False)), options)
            task = base(self, func, opts)
            self.tasks[name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        name: str | None = None,
        **entry: Any,
    ) -> Callable[[T], T]:
        """Send a task on a schedule (stack above `@app.task`); see docs/periodic.md.

        `entry` takes the other keys of a `beat_schedule` entry: args, kwargs, queue,
        priority, overlap, catch_up, catch_up_limit, jitter, expires. Errors are raised here.
        """
        spec: dict[str, Any] = {k: v for k, v in entry.items() if v is not None}
        spec.update({k: v for k, v in (("cron", cron), ("every", every), ("tz", tz)) if v})

        def register(task: T) -> T:
            if not isinstance(task, Task):
                raise ConfigurationError(
                    "@app.periodic(...) goes above @app.task: it schedules a registered task"
                )
            entry_name = name or task.name
            if entry_name in self.beat_entries:
                raise ConfigurationError(f"periodic entry {entry_name!r} is defined twice")
            self.beat_entries[entry_name] = entry_from_mapping(
                entry_name, {"task": task.name, **spec}
            )
            return task

        return register

    @property
    def schedules(self) -> Schedules:
        """Periodic entries at run time: add, change, pause, resume, remove, list, run_now."""
        if self._schedules is None:
            self._schedules = Schedules(self)
        return self._schedules

    def route(self, task_name: str) -> str:
        """The queue for a task with no explicit queue: `task_routes`, else the default queue.

        Patterns are matched once per task name and the answer cached; the cache belongs to
        one settings object, so assigning a new `app.conf` starts a fresh one.
        """
        conf = self.conf
        cache = self._routes
        if cache[0] is not conf:
            cache = self._routes = (conf, {})
        queue = cache[1].get(task_name)
        if queue is None:
            if len(cache[1]) >= ROUTE_CACHE_SIZE:  # send_task with endless distinct names
                cache[1].clear()
            queue = cache[1][task_name] = _match_route(conf, task_name)
        return queue

    # --- connections -----------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = brokers.from_url(self.conf.broker_url, self.conf, self.main)
        return self._broker

    @property
    def backend(self) -> ResultBackend | None:
        url = self.conf.backend_url
        if self._backend is None and url is not None:
            self._backend = backends.from_url(url, self.conf)
            share = getattr(self._backend, "use_client_of", None)
            if share is not None:  # Redis: one connection pool when both are the same server
                share(self.broker)
        return self._backend

    async def connect(self) -> None:
        """Open broker and backend connections (idempotent); for a FastAPI lifespan."""
        if self._connected:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._connected:
                return
            await self.broker.connect()
            backend = self.backend
            if backend is not None:
                await backend.connect()
            self._connected = True

    async def close(self) -> None:
        """Close connections; unsettled deliveries are handed back by the broker."""
        if not self._connected:
            return
        self._connected = False
        try:
            if self._broker is not None:
                await self._broker.close()
        finally:
            if self._backend is not None:
                await self._backend.close()
        # The instances are kept: connect() reopens them, and memory:// keeps its data.

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def result_backend(self) -> ResultBackend:
        """The connected backend, or a clear error when results are disabled."""
        await self.connect()
        backend = self.backend
        if backend is None:
            raise ConfigurationError(
                f"app {self.main!r} has no result backend: pass backend='redis://...' (or "
                "sqlite:///...) to App(), or set AIOTASK_RESULT_BACKEND"
            )
        return backend

    # --- sending -----------------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        """Encode and publish a batch in one broker call.

        Every send path (send, apply_async, send_task, send_batch, canvas) ends here. Nothing
        is sent if one message fails to encode or is over `max_message_size` (MessageTooLarge).
        """
        if self.middleware:
            messages = [await self._before_send(m) for m in messages]
        cap = self.conf.max_message_size
        batch = [Outgoing(m.queue, _encode(m, cap), m.id, m.priority, m.eta) for m in messages]
        if not self._connected:
            await self.connect()
        await self.broker.publish(batch)
        if self.conf.events:  # one more call per batch, only with the `events` setting
            await emit_sent(self, messages)

    async def _before_send(self, message: Message) -> Message:
        for mw in self.middleware:
            message = await mw.before_send(message)
        return message

    async def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncResult[Any]:
        """Send by name, without importing the task (a stand-in with defaults is used)."""
        task = self.tasks.get(name) or Task(self, _never, TaskOptions(name=name))
        return await task.apply_async(args, kwargs, **options)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:  # noqa: N802 - Celery's name
        """Rebuild a result handle from an id."""
        return AsyncResult(task_id, self)

    # --- canvas ------------------------------------------------------------------------------
    def message_factory(
        self,
        task: str,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        task_id: str,
    ) -> Message:
        """A routed message for a canvas step, with the task's own options applied."""
        check_call_options(task, options, CALL_OPTIONS)
        stand_in = self.tasks.get(task) or Task(self, _never, TaskOptions(name=task))
        return stand_in.message(args, kwargs, task_id=task_id, **options)

    async def send_canvas(self, canvas: Canvas, args: tuple[Any, ...] = ()) -> Any:
        """Compile a canvas, register its chord groups, publish every message in one batch."""
        plan, ids = runtime.start(canvas, args, self.message_factory)
        if plan.groups or plan.blobs:
            backend = await self.result_backend()
            ttl = self.conf.result_expires
            if plan.blobs:  # long chain remainders, stored once, before anything refers to them
                await backend.store(
                    [
                        EncodedResult.of(ResultRecord(key, CHAIN_STATE, steps), ttl)
                        for key, steps in plan.blobs
                    ]
                )
            for g in plan.groups:
                await backend.open_group(g.group_id, g.size, g.body, ttl)
        await self.publish(plan.messages)
        if isinstance(ids, str):
            return self.AsyncResult(ids)
        return GroupResult(ids[0], [self.AsyncResult(i) for i in ids[1]], self)

    async def call_local(self, task: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run a task in this process (what calling a signature does)."""
        if task in (MAP_TASK, STARMAP_TASK):
            target, items = args
            spread = task == STARMAP_TASK
            return [await self.call_local(target, list(i) if spread else [i], {}) for i in items]
        found = self.tasks.get(task)
        if found is None:
            raise NotRegistered(task)
        out = found(*args, **kwargs)
        return await out if inspect.isawaitable(out) else out

    async def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> None:
        """Tombstone the ids (workers skip them) and record REVOKED where no result exists."""
        backend = await self.result_backend()
        ttl = self.conf.result_expires
        await backend.revoke(task_ids, ttl)
        await backend.store(encode_revoked(task_ids, ttl))
        # Workers already holding (or running) one of these learn it now, not at the next message.
        command = {"op": "revoke", "ids": list(task_ids), "terminate": terminate}
        await backend.broadcast(orjson.dumps(command))


def _match_route(conf: Settings, task_name: str) -> str:
    routes = conf.task_routes
    if task_name in routes:
        return routes[task_name]
    for pattern, queue in routes.items():
        if fnmatch.fnmatchcase(task_name, pattern):
            return queue
    return conf.default_queue


def _never(*args: Any, **kwargs: Any) -> Awaitable[None]:
    raise NotRegistered("<send_task stand-in>")


def _encode(message: Message, limit: int) -> bytes:
    """The wire bytes, or an error naming the task and what to change."""
    try:
        body = protocol.encode(message)
    except SerializationError as exc:
        values: dict[str, object] = {f"args[{i}]": v for i, v in enumerate(message.args)}
        values.update({f"kwargs[{k!r}]": v for k, v in message.kwargs.items()})
        error = str(exc.__cause__ or exc)
        raise SerializationError(unencodable_message(message.task, values, error)) from None
    if limit and len(body) > limit:
        raise MessageTooLarge(message.task, len(body), limit)
    return body


def find_task(name: str) -> Task[Any, Any]:
    """Look a task up in every App of this process (used by pool children)."""
    for app in list(_APPS):
        task = app.tasks.get(name)
        if task is not None:
            return task
    raise NotRegistered(name)
