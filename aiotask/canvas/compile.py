"""Pure canvas compilation: canvas -> frozen steps -> messages (advancing: canvas/runtime.py).

A *step* is the JSON form of a canvas node that travels inside messages (the `chain`, `links`
and `errbacks` fields) or is stored once in the backend (a chord body). Ids are frozen when the
canvas is first compiled, so every result handle is known when `send()` returns and a
redelivered message always produces the same follow-up ids (duplicates are harmless).

Step forms:
  {"t": "task", "id", "task", "args", "kwargs", "opts", "imm", "links", "errbacks", "member"}
  {"t": "ref", "key", "end"}: the first `end` steps of a chain remainder stored once in the
      backend under `key` (long chains: message size stays flat however long the chain is)
  {"t": "chain", "steps": [...]}
  {"t": "group", "id", "tasks": [...]}
  {"t": "chord", "id", "header": [...], "body": step}
`member` = {"g": group id, "i": index, "n": size, "c": reports to a chord}; it sits on the
step whose completion completes the member (the last task of a chain, a chord's body).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from aiotask.canvas.primitives import Chain, Chord, Group, Signature
from aiotask.exceptions import ConfigurationError
from aiotask.protocol import new_id

if TYPE_CHECKING:
    from aiotask.canvas.primitives import Canvas
    from aiotask.protocol import Message

Step = dict[str, Any]
NOTHING: Any = object()
#: A chain remainder whose JSON is larger than this is stored once and travels as a reference.
CHAIN_INLINE_LIMIT = 8192
#: Backend key prefix and record state of stored chain remainders (kept as long as results).
CHAIN_KEY_PREFIX = "aiotask-chain:"
CHAIN_STATE = "CANVAS"


class MessageFactory(Protocol):
    """Builds a routed Message for a task name with per-call options (the App provides it)."""

    def __call__(
        self,
        task: str,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        task_id: str,
    ) -> Message: ...


@dataclass(frozen=True, slots=True)
class OpenGroup:
    """A chord group to register before its header messages are published."""

    group_id: str
    size: int
    body: bytes


@dataclass(frozen=True, slots=True)
class GroupReport:
    """A chord member finished: the settler adds its record to the group at `index`."""

    group_id: str
    index: int
    task_id: str


@dataclass(slots=True)
class Plan:
    """What to do: open groups, then publish messages; record `failed` ids as FAILURE."""

    messages: list[Message] = field(default_factory=list)
    groups: list[OpenGroup] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reports: list[GroupReport] = field(default_factory=list)
    #: chain remainders to store (key, steps) before the messages referring to them go out
    blobs: list[tuple[str, list[Step]]] = field(default_factory=list)

    def extend(self, other: Plan) -> None:
        self.messages += other.messages
        self.groups += other.groups
        self.failed += other.failed
        self.reports += other.reports
        self.blobs += other.blobs


# --- freezing ---------------------------------------------------------------------------------
def _new_id() -> str:
    return new_id()


def freeze(canvas: Canvas) -> Step:
    """Canvas -> step with fresh ids; chains flattened, `group | x` turned into chords."""
    if isinstance(canvas, Signature):
        return {
            "t": "task",
            "id": canvas.options.get("task_id") or _new_id(),
            "task": canvas.task,
            "args": list(canvas.args),
            "kwargs": dict(canvas.kwargs),
            "opts": {k: v for k, v in canvas.options.items() if k != "task_id"},
            "imm": canvas.immutable,
            "links": [freeze(c) for c in canvas.links],
            "errbacks": [freeze(c) for c in canvas.errbacks],
        }
    if isinstance(canvas, Chain):
        return _freeze_chain(canvas.tasks)
    if isinstance(canvas, Group):
        return _freeze_group(canvas.tasks, chord=False)
    header = _freeze_group(canvas.header.tasks, chord=True)
    return {
        "t": "chord",
        "id": header["id"],
        "header": header["tasks"],
        "body": freeze(canvas.body),
    }


def _freeze_chain(tasks: list[Canvas]) -> Step:
    items: list[Canvas] = []
    for task in tasks:
        items += task.tasks if isinstance(task, Chain) else [task]
    steps: list[Step] = []
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, Group) and i + 1 < len(items):
            steps.append(freeze(Chord(item, items[i + 1])))  # a group followed by x is a chord
            i += 2
        else:
            steps.append(freeze(item))
            i += 1
    # a chord built above may be followed by more chords: chord | group is handled by recursion
    return steps[0] if len(steps) == 1 else {"t": "chain", "steps": steps}


def _freeze_group(tasks: list[Canvas], *, chord: bool) -> Step:
    members: list[Step] = []
    for task in tasks:
        if isinstance(task, Group):  # nested plain groups are flattened
            members += [freeze(t) for t in task.tasks]
        else:
            members.append(freeze(task))
    gid = _new_id()
    for index, member in enumerate(members):
        ends = terminals(member)
        if len(ends) != 1:
            raise ConfigurationError(
                "a group member must finish in one task (a chord whose body is a group cannot "
                "be a group member): wrap it in a chain ending with a task"
            )
        ends[0]["member"] = {"g": gid, "i": index, "n": len(members), "c": chord}
    return {"t": "group", "id": gid, "tasks": members}


def terminals(step: Step) -> list[Step]:
    """The task steps whose completion completes `step`."""
    kind = step["t"]
    if kind == "task":
        return [step]
    if kind == "chain":
        return terminals(step["steps"][-1])
    if kind == "chord":
        return terminals(step["body"])
    return [t for m in step["tasks"] for t in terminals(m)]


def all_ids(step: Step) -> list[str]:
    """Every task id inside a step (to fail them when the step can no longer run)."""
    kind = step["t"]
    if kind == "task":
        return [step["id"]]
    if kind == "chain":
        return [i for s in step["steps"] for i in all_ids(s)]
    if kind == "chord":
        return [i for s in step["header"] for i in all_ids(s)] + all_ids(step["body"])
    return [i for s in step["tasks"] for i in all_ids(s)]


def result_ids(step: Step) -> str | tuple[str, list[str]]:
    """The id the caller's handle waits on: one task id, or (group id, member result ids)."""
    kind = step["t"]
    if kind == "task":
        return str(step["id"])
    if kind == "chain":
        return result_ids(step["steps"][-1])
    if kind == "chord":
        return result_ids(step["body"])
    return step["id"], [t["id"] for m in step["tasks"] for t in terminals(m)]


def prepend_args(step: Step, args: tuple[Any, ...]) -> Step:
    """Partial application: `canvas.send(*args)` prepends to the first task's arguments."""
    if not args:
        return step
    kind = step["t"]
    if kind == "task":
        return step if step["imm"] else {**step, "args": [*args, *step["args"]]}
    if kind == "chain":
        return {**step, "steps": [prepend_args(step["steps"][0], args), *step["steps"][1:]]}
    if kind == "chord":
        return {**step, "header": [prepend_args(s, args) for s in step["header"]]}
    return {**step, "tasks": [prepend_args(s, args) for s in step["tasks"]]}


# --- compiling --------------------------------------------------------------------------------
def compile_step(
    step: Step,
    factory: MessageFactory,
    *,
    parent: Any = NOTHING,
    rest: list[Step] | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
) -> Plan:
    """The messages that start `step` now (with `parent`'s result prepended where mutable)."""
    plan = Plan()
    kind = step["t"]
    rest = rest or []
    if kind == "task":
        plan.messages.append(_task_message(step, factory, parent, rest, parent_id, root_id))
    elif kind == "chain":
        steps = step["steps"]
        tail: list[Step] = list(reversed(steps[1:]))  # innermost last: the next step at the end
        if len(tail) > 2 and len(orjson.dumps(tail)) > CHAIN_INLINE_LIMIT:
            key = CHAIN_KEY_PREFIX + all_ids(steps[0])[0]
            plan.blobs.append((key, tail))
            tail = [{"t": "ref", "key": key, "end": len(tail)}]
        plan.extend(
            compile_step(
                steps[0],
                factory,
                parent=parent,
                rest=[*rest, *tail],
                parent_id=parent_id,
                root_id=root_id,
            )
        )
    elif kind == "group":
        for member in step["tasks"]:
            plan.extend(
                compile_step(member, factory, parent=parent, parent_id=parent_id, root_id=root_id)
            )
    elif not step["header"]:  # an empty chord: the body runs at once with []
        plan.extend(
            compile_step(
                step["body"], factory, parent=[], rest=rest, parent_id=parent_id, root_id=root_id
            )
        )
    else:
        body = orjson.dumps({"body": step["body"], "rest": rest, "root": root_id})
        plan.groups.append(OpenGroup(step["id"], len(step["header"]), body))
        for member in step["header"]:
            plan.extend(
                compile_step(member, factory, parent=parent, parent_id=parent_id, root_id=root_id)
            )
    return plan


def _task_message(
    step: Step,
    factory: MessageFactory,
    parent: Any,
    rest: list[Step],
    parent_id: str | None,
    root_id: str | None,
) -> Message:
    args = list(step["args"]) if step["imm"] or parent is NOTHING else [parent, *step["args"]]
    message = factory(step["task"], args, step["kwargs"], step["opts"], step["id"])
    member = step.get("member")
    return message.evolve(
        chain=rest,
        links=step["links"],
        errbacks=step["errbacks"],
        root_id=root_id or message.id,
        parent_id=parent_id,
        group_id=member["g"] if member else None,
        group_index=member["i"] if member else None,
        group_size=member["n"] if member else None,
        chord=member["g"] if member and member["c"] else None,
    )
