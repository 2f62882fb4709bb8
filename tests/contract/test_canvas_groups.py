"""Group (chord) progress on every backend: batched reports, fire_again until marked sent."""

from __future__ import annotations

from aiotask.backends import EncodedResult, MemberReport, ResultBackend, ResultRecord
from aiotask.serializer import ExceptionInfo
from aiotask.states import FAILURE, SUCCESS


def rec(task_id: str, state: str = SUCCESS, result: object = None) -> EncodedResult:
    exc = ExceptionInfo("builtins.ValueError", "bad", "tb") if state == FAILURE else None
    return EncodedResult.of(ResultRecord(task_id, state, result, exc, task="t.add"), 60)


async def test_one_batch_reports_to_several_groups(backend: ResultBackend, namespace: str) -> None:
    a, b, none = f"{namespace}-a", f"{namespace}-b", f"{namespace}-missing"
    await backend.open_group(a, 2, b"body-a", ttl=60)
    await backend.open_group(b, 2, b"body-b", ttl=60)
    progress = await backend.add_to_groups(
        [
            MemberReport(a, 1, rec("a1", SUCCESS, "y")),
            MemberReport(b, 0, rec("b0", FAILURE)),
            MemberReport(a, 0, rec("a0", SUCCESS, "x")),
            MemberReport(a, 0, rec("a0", SUCCESS, "x")),  # the same report twice in one batch
            MemberReport(none, 0, rec("n0")),
        ]
    )
    assert [(p.size, p.done) for p in progress] == [(2, 1), (2, 1), (2, 2), (2, 2), (0, 0)]
    assert [p.fire for p in progress] == [False, False, True, False, False]
    assert progress[2].body == b"body-a" and [r.result for r in progress[2].records] == ["x", "y"]
    assert progress[3].fire_again  # decided, not yet marked sent
    assert progress[1].first_failure and progress[1].body == b"body-b"
    assert await backend.add_to_groups([]) == []


async def test_a_duplicate_fires_again_until_the_group_is_marked_sent(
    backend: ResultBackend, namespace: str
) -> None:
    gid = f"{namespace}-g"
    await backend.open_group(gid, 2, b"body", ttl=60)
    await backend.add_to_groups([MemberReport(gid, 0, rec("0", SUCCESS, 1))])
    [fired] = await backend.add_to_groups([MemberReport(gid, 1, rec("1", SUCCESS, 2))])
    assert fired.fire and not fired.fire_again
    # the worker died before publishing: the redelivered member is told to fire again
    [again] = await backend.add_to_groups([MemberReport(gid, 1, rec("1", SUCCESS, 2))])
    assert again.fire_again and not again.fire
    assert again.body == b"body" and [r.result for r in again.records] == [1, 2]
    await backend.groups_sent([gid, f"{namespace}-unknown"])
    [late] = await backend.add_to_groups([MemberReport(gid, 0, rec("0", SUCCESS, 1))])
    assert not (late.fire or late.fire_again or late.first_failure or late.failure_again)


async def test_a_failed_member_redelivered_derives_the_failure_again(
    backend: ResultBackend, namespace: str
) -> None:
    gid = f"{namespace}-f"
    await backend.open_group(gid, 3, b"body", ttl=60)
    [first] = await backend.add_to_groups([MemberReport(gid, 1, rec("1", FAILURE))])
    assert first.first_failure
    # a redelivery that succeeds this time: the recorded failure stands (first report wins)
    [again, other] = await backend.add_to_groups(
        [MemberReport(gid, 1, rec("1", SUCCESS, 5)), MemberReport(gid, 0, rec("0", SUCCESS))]
    )
    assert again.failure_again and again.body == b"body"
    assert not (other.failure_again or other.first_failure or other.fire)
    await backend.groups_sent([gid])
    [late] = await backend.add_to_groups([MemberReport(gid, 1, rec("1", FAILURE))])
    assert not (late.failure_again or late.first_failure)
    # the last member completing a failed group never fires it
    [last] = await backend.add_to_groups([MemberReport(gid, 2, rec("2", SUCCESS))])
    assert not (last.fire or last.fire_again)


async def test_a_member_that_succeeded_then_fails_on_redelivery_changes_nothing(
    backend: ResultBackend, namespace: str
) -> None:
    gid = f"{namespace}-s"
    await backend.open_group(gid, 2, b"body", ttl=60)
    await backend.add_to_groups([MemberReport(gid, 0, rec("0", SUCCESS, 1))])
    [dup] = await backend.add_to_groups([MemberReport(gid, 0, rec("0", FAILURE))])
    assert not (dup.first_failure or dup.failure_again)
    [fired] = await backend.add_to_groups([MemberReport(gid, 1, rec("1", SUCCESS, 2))])
    assert fired.fire and [r.result for r in fired.records] == [1, 2]
