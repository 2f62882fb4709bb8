"""The pure canvas runtime and the group state machine every backend follows (no server)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from aiotask.backends.base import DECIDED, SENT, UNDECIDED, group_step
from aiotask.canvas import chord, signature
from aiotask.canvas.compile import GroupReport, freeze
from aiotask.canvas.runtime import (
    CHORD_BODY_HEADER,
    Finished,
    after_reports,
    chain_keys,
    follow_ups,
    start,
)
from aiotask.protocol import Message


def factory(
    task: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any], task_id: str
) -> Message:
    return Message(id=task_id, task=task, args=args, kwargs=kwargs)


def step(
    *,
    done: int = 1,
    succeeded: int = 1,
    fired: int = UNDECIDED,
    failed: int = UNDECIDED,
    new: bool = True,
    member_failed: bool = False,
) -> tuple[str, int, int]:
    return group_step(
        size=3,
        done=done,
        succeeded=succeeded,
        fired=fired,
        failed=failed,
        new=new,
        member_failed=member_failed,
    )


def test_group_fires_once_when_the_last_member_succeeds() -> None:
    assert step(done=2, succeeded=2) == ("", UNDECIDED, UNDECIDED)
    assert step(done=3, succeeded=3) == ("fire", DECIDED, UNDECIDED)
    # a new report can never see a decided group fire again
    assert step(done=3, succeeded=3, fired=DECIDED) == ("", DECIDED, UNDECIDED)


def test_a_duplicate_report_fires_again_until_the_body_is_marked_sent() -> None:
    assert step(done=3, succeeded=3, new=False, fired=DECIDED) == ("fire_again", DECIDED, 0)
    assert step(done=3, succeeded=3, new=False, fired=SENT) == ("", SENT, UNDECIDED)
    # nothing decided yet: nothing to redo
    assert step(done=3, succeeded=3, new=False) == ("", UNDECIDED, UNDECIDED)


def test_first_failure_once_and_again_only_for_a_failed_member() -> None:
    assert step(member_failed=True, succeeded=0) == ("first_failure", UNDECIDED, DECIDED)
    assert step(member_failed=True, failed=DECIDED) == ("", UNDECIDED, DECIDED)  # second failure
    assert step(member_failed=True, failed=DECIDED, new=False) == (
        "failure_again",
        UNDECIDED,
        DECIDED,
    )
    assert step(member_failed=True, failed=SENT, new=False) == ("", UNDECIDED, SENT)
    # a succeeded member's duplicate does not re-derive the failure
    assert step(failed=DECIDED, new=False) == ("", UNDECIDED, DECIDED)
    # the last member succeeding after a failure fires nothing
    assert step(done=3, succeeded=2, failed=DECIDED) == ("", UNDECIDED, DECIDED)


@dataclass
class Rec:
    result: Any


@dataclass
class Verdict:
    fire: bool = False
    fire_again: bool = False
    first_failure: bool = False
    failure_again: bool = False
    body: bytes | None = None
    records: list[Rec] = field(default_factory=list)


def chord_plan() -> tuple[Any, str]:
    plan, ids = start(
        chord([signature("a", (i,)) for i in range(3)], signature("sum")), (), factory
    )
    assert isinstance(ids, str)
    return plan, ids


@pytest.mark.parametrize("again", [False, True])
def test_a_fire_and_a_fire_again_start_the_same_body_marked_as_a_chord_body(again: bool) -> None:
    plan, body_id = chord_plan()
    [opened] = plan.groups
    reporter = plan.messages[2]
    reports = [GroupReport(opened.group_id, 2, reporter.id)]
    records = [Rec(10), Rec(11), Rec(12)]
    verdict = Verdict(fire=not again, fire_again=again, body=opened.body, records=records)
    decided: set[str] = set()
    [(index, body_plan)] = after_reports([(reporter, reports[0], verdict)], factory, decided)
    [body] = body_plan.messages
    assert (index, body.id, body.args) == (0, body_id, [[10, 11, 12]])
    assert body.headers[CHORD_BODY_HEADER] == opened.group_id
    assert decided == {opened.group_id}


def test_one_body_per_group_per_flush_however_many_answers_fire() -> None:
    plan, _ = chord_plan()
    [opened] = plan.groups
    a, b = plan.messages[0], plan.messages[1]
    fire = Verdict(fire=True, body=opened.body, records=[Rec(1), Rec(2), Rec(3)])
    again = Verdict(fire_again=True, body=opened.body, records=[Rec(1), Rec(2), Rec(3)])
    answers = [
        (a, GroupReport(opened.group_id, 0, a.id), fire),
        (b, GroupReport(opened.group_id, 1, b.id), again),
    ]
    assert len(after_reports(answers, factory, set())) == 1
    assert after_reports(answers, factory, {opened.group_id}) == []


def test_a_failure_records_the_body_failed_and_nothing_when_undecided() -> None:
    plan, body_id = chord_plan()
    [opened] = plan.groups
    m = plan.messages[1]
    report = GroupReport(opened.group_id, 1, m.id)
    [(_, failed)] = after_reports(
        [(m, report, Verdict(failure_again=True, body=opened.body))], factory, set()
    )
    assert body_id in failed.failed and not failed.messages
    assert after_reports([(m, report, Verdict(body=opened.body))], factory, set()) == []


def test_follow_ups_need_the_stored_chain_remainder() -> None:
    chain_ref = [{"t": "ref", "key": "aiotask-chain:x", "end": 1}]
    message = Message(id="m", task="a", chain=chain_ref)
    done = Finished(message, True, 5)
    assert chain_keys([done, done]) == ["aiotask-chain:x"]
    assert follow_ups(done, {}, factory) is None  # expired: nothing can run
    stored = {"aiotask-chain:x": [freeze(signature("b"))]}
    plan = follow_ups(done, stored, factory)
    assert plan is not None
    [b] = plan.messages
    assert (b.task, b.args, b.parent_id) == ("b", [5], "m")
    failed = follow_ups(Finished(message, False), stored, factory)
    assert failed is not None and failed.failed == [b.id] and not failed.messages
