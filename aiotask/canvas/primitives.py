"""Signatures, chain, group and chord as value objects, and the `|` rules between them.

They describe work; they do no I/O. Sending and local calls go through a `Runner` (the App),
so this module never imports the App or Task. Celery's semantics: `link`, `link_error` and
`set` change the signature in place and return it; `clone` copies; args given later (to
`send`, `clone` or by a parent) are prepended.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Self

    from aiotask.result import AsyncResult, GroupResult  # noqa: F401 - in _Base["..."]

#: Built-in task names that run a task over many argument tuples in one message.
MAP_TASK = "aiotask.map"
STARMAP_TASK = "aiotask.starmap"


class Runner(Protocol):
    """What canvas objects need from an App: sending, and running a task in this process."""

    async def send_canvas(self, canvas: Canvas, args: tuple[Any, ...]) -> Any: ...

    async def call_local(self, task: str, args: list[Any], kwargs: dict[str, Any]) -> Any: ...


#: The handle `send()` returns (typing only): a signature gives an AsyncResult, a group a
#: GroupResult, a chain or chord whatever its last step gives.
H = TypeVar("H")


class _Base(Generic[H]):
    """`|` and send/local-call for every canvas type."""

    runner: Runner | None

    def _runner(self) -> Runner:
        if self.runner is None:
            raise ConfigurationError(
                f"{self!r} is not bound to an app: build it from a task (task.s(...)) or pass "
                "app= to signature()"
            )
        return self.runner

    def __or__(self, other: Canvas) -> Canvas:
        return _pipe(self, other)  # type: ignore[arg-type]

    async def send(self, *args: Any) -> H:
        """Run on workers; returns AsyncResult (or GroupResult) once the broker has it all.
        `args` are prepended to the first task's arguments (partial application)."""
        return await self._runner().send_canvas(self, args)  # type: ignore[arg-type, no-any-return]

    async def apply_async(self, args: Iterable[Any] = ()) -> H:
        return await self.send(*args)


@dataclass(eq=False)
class Signature(_Base["AsyncResult[Any]"]):
    """One task invocation described as data: `add.s(2, 3)`, `add.si(2)`, `signature("p.add")`."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False
    links: list[Canvas] = field(default_factory=list)
    errbacks: list[Canvas] = field(default_factory=list)
    runner: Runner | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}{'!' if self.immutable else ''}({args})"

    def clone(
        self, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A copy; `args` are prepended unless the signature is immutable."""
        new_args = self.args if self.immutable else (*args, *self.args)
        return Signature(
            self.task,
            tuple(new_args),
            {**self.kwargs, **(kwargs or {})},
            {**self.options, **options},
            self.immutable,
            list(self.links),
            list(self.errbacks),
            self.runner,
        )

    def set(self, *, immutable: bool | None = None, **options: Any) -> Self:
        """Change call options (queue, priority, countdown, eta, expires, ...) in place."""
        self.options.update(options)
        if immutable is not None:
            self.immutable = immutable
        return self

    def link(self, callback: Canvas) -> Canvas:
        """Run `callback` with this task's result (prepended) after it succeeds."""
        self.links.append(callback)
        return callback

    def link_error(self, errback: Canvas) -> Canvas:
        """Run `errback` with the failed task's id (prepended) after this task fails for good."""
        self.errbacks.append(errback)
        return errback

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run here, in this process (a coroutine task is awaited, a plain function called)."""
        call_args = list(self.args if self.immutable else (*args, *self.args))
        return await self._runner().call_local(self.task, call_args, {**self.kwargs, **kwargs})


@dataclass(eq=False)
class Chain(_Base["AsyncResult[Any] | GroupResult[Any]"]):
    """Tasks run one after another, each result prepended to the next task's arguments."""

    tasks: list[Canvas]
    runner: Runner | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks))

    def link_error(self, errback: Canvas) -> Canvas:
        """Attach the errback to every task in the chain (Celery's behaviour)."""
        for step in self.tasks:
            step.link_error(errback)
        return errback

    def link(self, callback: Canvas) -> Canvas:
        return self.tasks[-1].link(callback)

    async def __call__(self, *args: Any) -> Any:
        value: Any = _NOTHING
        for i, step in enumerate(self.tasks):
            value = await (step(*args) if i == 0 else step(value))
        return value


@dataclass(eq=False)
class Group(_Base["GroupResult[Any]"]):
    """Tasks run in parallel; the result is the list of their results, in order."""

    tasks: list[Canvas]
    runner: Runner | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.tasks))})"

    def link_error(self, errback: Canvas) -> Canvas:
        for step in self.tasks:
            step.link_error(errback)
        return errback

    def link(self, callback: Canvas) -> Canvas:
        raise ConfigurationError("link a group with a chord: group(...) | callback")

    async def __call__(self, *args: Any) -> list[Any]:
        return [await step(*args) for step in self.tasks]


@dataclass(eq=False)
class Chord(_Base["AsyncResult[Any] | GroupResult[Any]"]):
    """A group whose body runs once, after every header task succeeded, with their results."""

    header: Group
    body: Canvas
    runner: Runner | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def link_error(self, errback: Canvas) -> Canvas:
        return self.body.link_error(errback)

    def link(self, callback: Canvas) -> Canvas:
        return self.body.link(callback)

    async def __call__(self, *args: Any) -> Any:
        return await self.body(await self.header(*args))


Canvas = Signature | Chain | Group | Chord
_NOTHING: Any = object()


def _runner_of(items: Iterable[Canvas]) -> Runner | None:
    return next((i.runner for i in items if i.runner is not None), None)


def _pipe(left: Canvas, right: Canvas) -> Canvas:
    if isinstance(left, Group):
        return Chord(left, right, left.runner or right.runner)  # group | x is a chord
    steps: list[Canvas] = [
        *(left.tasks if isinstance(left, Chain) else [left]),
        *(right.tasks if isinstance(right, Chain) else [right]),
    ]
    return Chain(steps, _runner_of(steps))


def signature(
    task: str,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: Runner | None = None,
) -> Signature:
    """A signature by task name (the task need not be imported here)."""
    return Signature(
        task, tuple(args), dict(kwargs or {}), dict(options or {}), immutable, runner=app
    )


def chain(*tasks: Canvas | Iterable[Canvas]) -> Chain:
    """`chain(a, b, c)` == `a | b | c`; also accepts one iterable of signatures."""
    steps = _flatten_args(tasks)
    if not steps:
        raise ConfigurationError("chain() needs at least one task")
    out: Canvas = steps[0]
    for step in steps[1:]:
        out = _pipe(out, step)
    return out if isinstance(out, Chain) else Chain([out], out.runner)


def group(*tasks: Canvas | Iterable[Canvas]) -> Group:
    """`group(a, b)` or `group(sig for ...)`: run in parallel, results in order."""
    steps = _flatten_args(tasks)
    return Group(steps, _runner_of(steps))


def chord(header: Group | Iterable[Canvas], body: Canvas) -> Chord:
    """Run `body` once with the list of the header's results, after all of them succeeded."""
    head = header if isinstance(header, Group) else group(list(header))
    return Chord(head, body, head.runner or body.runner)


def xmap(sig: Signature, items: Iterable[Any]) -> Signature:
    """One message running `sig`'s task once per item: `task.map([1, 2, 3])`."""
    return Signature(MAP_TASK, (sig.task, list(items)), immutable=True, runner=sig.runner)


def xstarmap(sig: Signature, items: Iterable[Iterable[Any]]) -> Signature:
    """One message running `sig`'s task once per argument tuple: `task.starmap([(1, 2)])`."""
    return Signature(
        STARMAP_TASK, (sig.task, [list(a) for a in items]), immutable=True, runner=sig.runner
    )


def chunks(sig: Signature, items: Iterable[Iterable[Any]], size: int) -> Group:
    """A group of starmap messages of `size` calls each; `get()` returns a list of lists."""
    if size < 1:
        raise ConfigurationError(f"chunks size must be >= 1, got {size}")
    it = iter(items)
    parts = []
    while batch := list(itertools.islice(it, size)):
        parts.append(xstarmap(sig, batch))
    return Group(list(parts), sig.runner)


def _flatten_args(tasks: tuple[Canvas | Iterable[Canvas], ...]) -> list[Canvas]:
    if len(tasks) == 1 and not isinstance(tasks[0], Signature | Chain | Group | Chord):
        return list(tasks[0])
    return [t for t in tasks if isinstance(t, Signature | Chain | Group | Chord)]
