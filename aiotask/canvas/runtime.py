"""The canvas runtime, pure: what a finished task starts, or fails, next.

The worker's settler does the I/O around these functions, once per flush of settlements:

1. `chain_keys` -> one read of the stored chain remainders the batch refers to;
2. `follow_ups` per finished task -> a Plan (messages, groups to open, ids to fail, reports);
3. every report of the batch goes to the backend in ONE `add_to_groups` call, and
   `after_reports` turns the answers into the next plans (a chord's body, a chord's failure),
   at most one per group; repeated while those plans report in turn (a failed inner chord);
4. failures and chain remainders are stored, every message is published, the decided groups
   are marked sent, then the deliveries are acknowledged.

`start` is the producer's side (`App.send_canvas`). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from aiotask.canvas.compile import (
    GroupReport,
    MessageFactory,
    Plan,
    Step,
    all_ids,
    compile_step,
    freeze,
    prepend_args,
    result_ids,
    terminals,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from aiotask.canvas.primitives import Canvas
    from aiotask.protocol import Message
    from aiotask.serializer import ExceptionInfo

#: Header on the messages that start a chord's body (value: the chord's group id).
CHORD_BODY_HEADER = "aiotask-chord-body"


@dataclass(frozen=True, slots=True)
class Finished:
    """A task that ended for good, as the canvas sees it: what its follow-ups depend on."""

    message: Message
    succeeded: bool
    #: the return value, when it succeeded
    value: Any = None
    #: why it failed (also recorded on every step its failure fails)
    error: ExceptionInfo | None = None


class _HasResult(Protocol):
    @property
    def result(self) -> Any: ...


class Verdict(Protocol):
    """The backend's answer to one group report (`GroupProgress` is one)."""

    @property
    def fire(self) -> bool: ...
    @property
    def fire_again(self) -> bool: ...
    @property
    def first_failure(self) -> bool: ...
    @property
    def failure_again(self) -> bool: ...
    @property
    def body(self) -> bytes | None: ...
    @property
    def records(self) -> Sequence[_HasResult]: ...


def start(
    canvas: Canvas, args: tuple[Any, ...], factory: MessageFactory
) -> tuple[Plan, str | tuple[str, list[str]]]:
    """The producer's side: freeze every id, compile what starts now; and what the caller's
    handle waits on (a task id, or a group id and its members' result ids)."""
    step = prepend_args(freeze(canvas), args)
    return compile_step(step, factory), result_ids(step)


def chain_keys(finished: Iterable[Finished]) -> list[str]:
    """The stored chain remainders a batch refers to (read all at once, usually none)."""
    keys: dict[str, None] = {}
    for f in finished:
        keys.update(dict.fromkeys(chain_refs(f.message.chain)))
    return list(keys)


def follow_ups(
    finished: Finished, stored: Mapping[str, list[Step]], factory: MessageFactory
) -> Plan | None:
    """Outcome -> follow-ups: the next chain step and links, or errbacks and the failed rest;
    a report to its chord. None when its chain's stored remainder is gone (expired)."""
    message = finished.message
    if any(key not in stored for key in chain_refs(message.chain)):
        return None
    if finished.succeeded:
        message = message.evolve(chain=expand_next(message.chain, stored))
        return on_success(message, finished.value, factory)
    message = message.evolve(chain=expand_all(message.chain, stored))
    return on_failure(message, factory)


def after_reports(
    answers: Sequence[tuple[Message, GroupReport, Verdict]],
    factory: MessageFactory,
    decided: set[str],
) -> list[tuple[int, Plan]]:
    """Group answers (reporter, report, verdict) -> the chord bodies to start and the chord
    failures to record, as (index of the answer, plan).

    At most one per group per flush: `decided` collects the groups acted on (the settler marks
    them sent once their follow-ups are published), so a duplicate report in the same batch
    adds nothing.
    """
    out: list[tuple[int, Plan]] = []
    for i, (reporter, report, verdict) in enumerate(answers):
        if report.group_id in decided or verdict.body is None:
            continue
        if verdict.fire or verdict.fire_again:
            results = [r.result for r in verdict.records]
            plan = on_chord_complete(verdict.body, results, reporter, factory, report.group_id)
        elif verdict.first_failure or verdict.failure_again:
            plan = on_chord_failure(verdict.body, report.task_id, factory)
        else:
            continue
        decided.add(report.group_id)
        out.append((i, plan))
    return out


# --- advancing --------------------------------------------------------------------------------
def on_success(message: Message, value: Any, factory: MessageFactory) -> Plan:
    """A task succeeded: start the next chain step and the links; report to its chord."""
    plan = Plan()
    pid, root = message.id, message.root_id
    if message.chain:
        plan.extend(
            compile_step(
                message.chain[-1],
                factory,
                parent=value,
                rest=message.chain[:-1],
                parent_id=pid,
                root_id=root,
            )
        )
    for link in message.links:
        plan.extend(compile_step(link, factory, parent=value, parent_id=pid, root_id=root))
    if message.chord is not None and message.group_index is not None:
        plan.reports.append(GroupReport(str(message.chord), message.group_index, message.id))
    return plan


def on_failure(message: Message, factory: MessageFactory) -> Plan:
    """A task failed for good: errbacks run, the rest of its chain fails, its chord fails."""
    plan = Plan()
    for errback in message.errbacks:
        plan.extend(
            compile_step(
                errback, factory, parent=message.id, parent_id=message.id, root_id=message.root_id
            )
        )
    for step in message.chain:
        plan.failed += all_ids(step)
    if message.chain:
        end = terminals(message.chain[0])[0]
        member = end.get("member")
        if member and member["c"]:
            plan.reports.append(GroupReport(member["g"], member["i"], end["id"]))
    elif message.chord is not None and message.group_index is not None:
        plan.reports.append(GroupReport(str(message.chord), message.group_index, message.id))
    return plan


def on_chord_complete(
    body: bytes, results: list[Any], reporter: Message, factory: MessageFactory, group_id: str
) -> Plan:
    """Every header task succeeded: start the body with their results, in order.

    The body's messages carry CHORD_BODY_HEADER: a re-derived copy (a redelivered header
    re-publishes the body with the same frozen ids) is skipped by a worker that finds the
    body's result already ready.
    """
    stored = orjson.loads(body)
    plan = compile_step(
        stored["body"],
        factory,
        parent=results,
        rest=stored["rest"],
        parent_id=reporter.id,
        root_id=stored.get("root") or reporter.root_id,
    )
    plan.messages = [
        m.evolve(headers={**m.headers, CHORD_BODY_HEADER: group_id}) for m in plan.messages
    ]
    return plan


def on_chord_failure(body: bytes, failed_task_id: str, factory: MessageFactory) -> Plan:
    """A header task failed: the body (and the rest after it) fails; the body's errbacks run."""
    stored = orjson.loads(body)
    step: Step = stored["body"]
    plan = Plan(failed=all_ids(step) + [i for s in stored["rest"] for i in all_ids(s)])
    for end in terminals(step):
        for errback in end["errbacks"]:
            plan.extend(
                compile_step(
                    errback,
                    factory,
                    parent=failed_task_id,
                    parent_id=failed_task_id,
                    root_id=stored.get("root"),
                )
            )
    # the step that completes this part of the graph is the last of the rest, else the body
    ends = terminals(stored["rest"][0]) if stored["rest"] else terminals(step)
    for end in ends:
        member = end.get("member")
        if member and member["c"]:
            plan.reports.append(GroupReport(member["g"], member["i"], end["id"]))
    return plan


# --- chain remainders stored by reference ------------------------------------------------------
def chain_refs(chain: list[Step]) -> list[str]:
    """Backend keys a message's chain refers to (usually none, at most a few)."""
    return [step["key"] for step in chain if step.get("t") == "ref"]


def expand_next(chain: list[Step], stored: Mapping[str, list[Step]]) -> list[Step]:
    """Materialize only the next step of a chain ending in a reference (the success path):
    the rest stays a reference with `end - 1`, so nothing is stored or copied again."""
    if not chain or chain[-1].get("t") != "ref":
        return chain
    ref = chain[-1]
    end = int(ref["end"])
    steps = stored[ref["key"]]
    rest = [{**ref, "end": end - 1}] if end > 1 else []
    return [*chain[:-1], *rest, steps[end - 1]]


def expand_all(chain: list[Step], stored: Mapping[str, list[Step]]) -> list[Step]:
    """Materialize every step (the failure path: each remaining id is recorded FAILURE)."""
    out: list[Step] = []
    for step in chain:
        out += stored[step["key"]][: int(step["end"])] if step.get("t") == "ref" else [step]
    return out
