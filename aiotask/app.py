"""App: the task registry, settings, and broker/backend connections."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import inspect
import os
import weakref
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, Unpack, overload

import orjson

from aiotask import backends, brokers
from aiotask._connections import Connections, is_memory
from aiotask._log import get_logger
from aiotask._urls import redact
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.brokers.base import Outgoing
from aiotask.canvas import runtime
from aiotask.canvas.compile import CHAIN_STATE
from aiotask.canvas.primitives import MAP_TASK, STARMAP_TASK
from aiotask.control import Control
from aiotask.coordination.fairness import fair_key
from aiotask.exceptions import (
    ConfigurationError,
    MessageTooLarge,
    NotRegistered,
    SerializationError,
)
from aiotask.result import AsyncResult, GroupResult, SyncResult, encode_revoked
from aiotask.security import Wire, seal
from aiotask.serializer import unencodable_message
from aiotask.settings import FROM_BROKER, Settings
from aiotask.sync import run_sync
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
    from collections.abc import (
        Awaitable,
        Callable,
        Coroutine,
        Iterable,
        Mapping,
        Sequence,
    )
    from types import TracebackType
    from typing import Concatenate, Self

    from aiotask.backends.base import ResultBackend
    from aiotask.beat.api import Schedules
    from aiotask.beat.entry import Entry
    from aiotask.brokers.base import Broker
    from aiotask.canvas.primitives import Canvas
    from aiotask.context import TaskContext
    from aiotask.deadletters import DeadLetters
    from aiotask.middleware import Middleware
    from aiotask.protocol import Message
    from aiotask.security.signing import Keyring

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
        #: memory:// instances, shared by every event loop (their data lives in them)
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._routes: tuple[Settings, dict[str, str]] = (self.conf, {})
        self._wire: tuple[Settings, Wire] = (self.conf, Wire.from_settings(self.conf))
        #: one connection set per event loop (None: made from plain code, not yet bound)
        self._sets: dict[asyncio.AbstractEventLoop | None, Connections] = {}
        for builtin in (MAP_TASK, STARMAP_TASK):  # run by the worker's executor itself
            self.tasks[builtin] = Task(self, _never, TaskOptions(name=builtin))
        #: periodic entries defined in code (`beat_schedule`, `@app.periodic`), by name
        self.beat_entries: dict[str, Entry] = {}
        if self.conf.beat_schedule:  # beat's modules load with the first entry (idle RSS)
            from aiotask.beat.entry import entry_from_mapping

            self.beat_entries = {
                name: entry_from_mapping(name, spec)
                for name, spec in self.conf.beat_schedule.items()
            }
        self._schedules: Schedules | None = None
        self._control: Control | None = None
        _APPS.add(self)

    def __repr__(self) -> str:
        return f"<App {self.main} broker={redact(self.conf.broker_url)}>"

    @property
    def wire(self) -> Wire:
        """Message <-> bytes per the current settings (signing, caps, compression, serializer);
        rebuilt (and validated) when `conf` is replaced."""
        conf, wire = self._wire
        if conf is not self.conf:
            wire = Wire.from_settings(self.conf)
            self._wire = (self.conf, wire)
        return wire

    @property
    def result_keyring(self) -> Keyring | None:
        """The keys that seal stored results and verify them on read (None: result_signing
        is off)."""
        return self.wire.result_keyring

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
            from aiotask.beat.entry import entry_from_mapping

            self.beat_entries[entry_name] = entry_from_mapping(
                entry_name, {"task": task.name, **spec}
            )
            return task

        return register

    @property
    def schedules(self) -> Schedules:
        """Periodic entries at run time: add, change, pause, resume, remove, list, run_now."""
        if self._schedules is None:
            from aiotask.beat.api import Schedules

            self._schedules = Schedules(self)
        return self._schedules

    @property
    def control(self) -> Control:
        """Running workers: the registry (`workers`), `inspect`, `revoke`, `rate_limit`..."""
        if self._control is None:
            self._control = Control(self)
        return self._control

    @functools.cached_property
    def dead_letters(self) -> DeadLetters:
        """Dead letters of this app's queues: list, show, replay, purge; and queue counts."""
        from aiotask.deadletters import DeadLetters

        return DeadLetters(self)

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
    # A connection set (broker + backend) belongs to the event loop it was opened on and is
    # used only there: `asyncio.run(add.send(1, 2))` twice opens two sets, and the second loop
    # never touches the first loop's transports. A set closes itself when its loop shuts down
    # (asyncio.run, pytest-asyncio), or on `await app.close()` from its own loop.
    def _conns(self) -> Connections:
        """The connection set of the running loop (or of plain code, when no loop runs)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        sets = self._sets
        found = sets.get(loop)
        if found is not None:
            return found
        if loop is not None:
            for old in [old for old in list(sets) if old is not None and old.is_closed()]:
                # Its loop closed without shutting down its async generators: drop the set
                # without I/O (its transports belong to a dead loop).
                sets.pop(old, None)
            unbound = sets.get(None)
            if unbound is not None and not unbound.connected:
                # Instances made from plain code (`app.broker` before any loop) serve the first
                # loop that uses them.
                del sets[None]
                unbound.loop = loop
                sets[loop] = unbound
                return unbound
        made = Connections(loop, *self._instances())
        sets[loop] = made
        return made

    def _instances(self) -> tuple[Broker, ResultBackend | None]:
        """A fresh broker and backend, except memory:// ones: their data lives in the instance,
        so every loop shares them (they are in-process and loop-agnostic)."""
        conf = self.conf
        if is_memory(conf.broker_url):
            if self._broker is None:
                self._broker = brokers.from_url(conf.broker_url, conf, self.main)
            broker = self._broker
        else:
            broker = brokers.from_url(conf.broker_url, conf, self.main)
        url = conf.backend_url
        backend: ResultBackend | None = None
        if url is not None and is_memory(url):
            if self._backend is None:
                self._backend = backends.from_url(url, conf)
            backend = self._backend
        elif url is not None:
            backend = backends.from_url(url, conf)
            share = getattr(backend, "use_client_of", None)
            if share is not None:  # Redis: one connection pool when both are the same server
                share(broker)
        return broker, backend

    @property
    def broker(self) -> Broker:
        """The broker of the running event loop's connection set."""
        return self._conns().broker

    @property
    def backend(self) -> ResultBackend | None:
        """The result backend of the running event loop's connection set (None: disabled)."""
        return self._conns().backend

    async def connect(self) -> None:
        """Open broker and backend connections for this event loop (idempotent); for a FastAPI
        lifespan. Another event loop (another `asyncio.run`, a thread) gets its own set."""
        conns = self._conns()
        if conns.connected:
            return
        if conns.lock is None:
            conns.lock = asyncio.Lock()
        async with conns.lock:
            if conns.connected:
                return
            await conns.broker.connect()
            if conns.backend is not None:
                await conns.backend.connect()
            conns.connected = True
            if conns.loop is not None:
                await conns.close_with_loop()

    async def close(self) -> None:
        """Close this event loop's connections; unsettled deliveries are handed back by the
        broker. The next connect() opens fresh instances (memory:// keeps its data)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - an async def always has a running loop
            return
        conns = self._sets.get(loop)
        if conns is None or not conns.connected:
            return
        if self._sets.get(loop) is conns:
            del self._sets[loop]
        await conns.close()

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
    async def publish(self, messages: Sequence[Message], *, confirm: bool = True) -> None:
        """Encode and publish a batch in one broker call.

        Every send path (send, apply_async, send_task, send_batch, canvas) ends here. Nothing
        is sent if one message fails to encode or is over `max_message_size` (MessageTooLarge).
        `confirm=False` (the `confirm` call option): return before the broker confirms.
        """
        if self.middleware:
            messages = [await self._before_send(m) for m in messages]
        wire = self.wire
        batch = [
            Outgoing(
                m.queue, _encode(m, wire), m.id, m.priority, m.eta, confirm, fair_key(m.headers)
            )
            for m in messages
        ]  # fair_key: fairness across keys (aiotask/coordination/fairness.py)
        conns = self._conns()
        if not conns.connected:
            await self.connect()
        if not conns.broker.capabilities.fairness and any(o.fair_key for o in batch):
            _warn_no_fairness(type(conns.broker).__name__)
        await conns.broker.publish(batch)
        if self.conf.events:  # one more call per batch, only with the `events` setting
            from aiotask.events.follow import emit_sent  # not loaded without events

            await emit_sent(self, messages)

    def _reply_to(self, task_id: str) -> str | None:
        """The channel this process hears `task_id`'s result on, when its result backend
        pushes results to waiting producers (Redis: RedisBackend.expect); None otherwise."""
        expect = getattr(self._conns().backend, "expect", None)
        return expect(task_id) if expect is not None else None

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

    def send_task_sync(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> SyncResult[Any]:
        """`send_task` for plain (non-async) code; blocks until the broker holds the message.
        Thread-safe; see docs/sync.md. On an event loop's thread: `await app.send_task(...)`."""
        return SyncResult(run_sync(self.send_task(name, args, kwargs, **options)))

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:  # noqa: N802 - Celery's name
        """Rebuild a result handle from an id."""
        return AsyncResult(task_id, self)

    def SyncResult(self, task_id: str) -> SyncResult[Any]:  # noqa: N802 - like AsyncResult
        """Rebuild a blocking result handle from an id (plain code)."""
        return SyncResult(AsyncResult(task_id, self))

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
            keyring = self.wire.keyring  # canvas state in the backend is sealed (signing)
            if plan.blobs:  # long chain remainders, stored once, before anything refers to them
                await backend.store(
                    [
                        EncodedResult.of(
                            ResultRecord(key, CHAIN_STATE, seal.seal_steps(keyring, steps)),
                            ttl,
                            self.result_keyring,
                        )
                        for key, steps in plan.blobs
                    ]
                )
            for g in plan.groups:
                await backend.open_group(g.group_id, g.size, seal.seal(keyring, g.body), ttl)
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
        await backend.store(encode_revoked(task_ids, ttl, self.result_keyring))
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


#: Connection sets inherited through fork(): they share the parent's sockets, so the child
#: never closes them (that would close the parent's AMQP connection); kept so that garbage
#: collection does not close them either.
_INHERITED: list[Connections] = []


def _forget_connections_after_fork() -> None:
    """In a forked child (gunicorn, uwsgi, multiprocessing): open fresh connections on next use."""
    for app in list(_APPS):
        for conns in app._sets.values():
            conns.connected = False
            conns._closer = None
            _INHERITED.append(conns)
        app._sets = {}


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


def _never(*args: Any, **kwargs: Any) -> Awaitable[None]:
    raise NotRegistered("<send_task stand-in>")


def _encode(message: Message, wire: Wire) -> bytes:
    """The wire bytes, or an error naming the task and what to change."""
    try:
        return wire.encode(message)
    except MessageTooLarge:
        raise
    except SerializationError as exc:
        values: dict[str, object] = {f"args[{i}]": v for i, v in enumerate(message.args)}
        values.update({f"kwargs[{k!r}]": v for k, v in message.kwargs.items()})
        error = str(exc.__cause__ or exc)
        raise SerializationError(unencodable_message(message.task, values, error)) from None


def find_task(name: str) -> Task[Any, Any]:
    """Look a task up in every App of this process (used by pool children)."""
    for app in list(_APPS):
        task = app.tasks.get(name)
        if task is not None:
            return task
    raise NotRegistered(name)


@functools.cache
def _warn_no_fairness(broker: str) -> None:
    """Once per broker class: a fairness_key there is carried, not honoured (task-options.md)."""
    log.warning(
        "fairness_key is not supported by %s yet: the queue stays first in, first out", broker
    )
