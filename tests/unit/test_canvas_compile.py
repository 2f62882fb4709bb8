"""Pure canvas compile/advance: every primitive and nesting, with no broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aiotask.canvas import chain, chord, chunks, group, signature
from aiotask.canvas.compile import compile_step, freeze, prepend_args, result_ids
from aiotask.canvas.runtime import on_chord_complete as _on_chord_complete
from aiotask.canvas.runtime import on_chord_failure, on_failure, on_success
from aiotask.exceptions import ConfigurationError
from aiotask.protocol import Message


def factory(
    task: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any], task_id: str
) -> Message:
    return Message(
        id=task_id, task=task, args=args, kwargs=kwargs, queue=options.get("queue", "default")
    )


def on_chord_complete(body: bytes, results: list[Any], reporter: Message, fac: Any) -> Any:
    return _on_chord_complete(body, results, reporter, fac, "g")


def s(name: str, *args: Any) -> Any:
    return signature(name, args)


def start(canvas: Any, *args: Any) -> tuple[dict[str, Any], Any]:
    step = prepend_args(freeze(canvas), args)
    return step, compile_step(step, factory)


def test_single_task() -> None:
    step, plan = start(s("a", 1).set(queue="q"))
    [m] = plan.messages
    assert (m.task, m.args, m.queue, m.root_id) == ("a", [1], "q", m.id)
    assert result_ids(step) == m.id


def test_chain_runs_one_step_at_a_time_and_prepends_results() -> None:
    step, plan = start(s("a", 1) | s("b", 2) | s("c"))
    [first] = plan.messages
    assert first.task == "a" and [x["task"] for x in first.chain] == ["c", "b"]
    nxt = on_success(first, 10, factory)
    [second] = nxt.messages
    assert (second.task, second.args, second.parent_id, second.root_id) == (
        "b",
        [10, 2],
        first.id,
        first.id,
    )
    [third] = on_success(second, 20, factory).messages
    assert third.args == [20] and third.chain == []
    assert result_ids(step) == third.id


def test_partial_args_go_to_the_first_task_and_immutable_ignores_parent() -> None:
    _, plan = start(chain(s("a", 1), signature("b", (5,), immutable=True)), 3)
    [first] = plan.messages
    assert first.args == [3, 1]
    [second] = on_success(first, 99, factory).messages
    assert second.args == [5]


def test_group_publishes_all_members_with_membership() -> None:
    step, plan = start(group(s("a", i) for i in range(3)))
    assert [m.args for m in plan.messages] == [[0], [1], [2]]
    ids_of = result_ids(step)
    assert isinstance(ids_of, tuple)
    gid, ids = ids_of
    assert ids == [m.id for m in plan.messages]
    assert {m.group_id for m in plan.messages} == {gid}
    assert [m.group_index for m in plan.messages] == [0, 1, 2]
    assert all(m.chord is None for m in plan.messages)
    assert not plan.groups


def test_chord_opens_its_group_once_and_fires_the_body_with_ordered_results() -> None:
    step, plan = start(chord([s("a", 1), s("a", 2)], s("sum")))
    [opened] = plan.groups
    assert opened.size == 2
    assert all(m.chord == opened.group_id for m in plan.messages)
    report = on_success(plan.messages[1], 2, factory).reports[0]
    assert (report.group_id, report.index) == (opened.group_id, 1)
    [body] = on_chord_complete(opened.body, [1, 2], plan.messages[1], factory).messages
    assert body.task == "sum" and body.args == [[1, 2]]
    assert result_ids(step) == body.id


def test_chord_message_size_does_not_grow_with_width() -> None:
    _, small = start(chord([s("a", i) for i in range(10)], s("sum")))
    _, large = start(chord([s("a", i) for i in range(1000)], s("sum")))
    from aiotask.protocol import encode

    assert (
        max(len(encode(m)) for m in large.messages)
        <= max(len(encode(m)) for m in small.messages) + 10
    )
    assert len(large.groups[0].body) == len(small.groups[0].body)


def test_group_followed_by_task_in_a_chain_is_a_chord() -> None:
    step, plan = start(s("a") | group(s("b", 1), s("b", 2)) | s("sum") | s("fin"))
    [first] = plan.messages
    nxt = on_success(first, 7, factory)
    assert [m.args for m in nxt.messages] == [[7, 1], [7, 2]]
    [opened] = nxt.groups
    [body] = on_chord_complete(opened.body, [8, 9], nxt.messages[0], factory).messages
    assert body.task == "sum" and body.args == [[8, 9]]
    [fin] = on_success(body, 17, factory).messages
    assert fin.task == "fin" and fin.args == [17]
    assert result_ids(step) == fin.id


def test_chain_of_groups() -> None:
    _, plan = start(group(s("a", 1), s("a", 2)) | group(s("b"), s("b")))
    [opened] = plan.groups
    members = on_chord_complete(opened.body, [1, 2], plan.messages[0], factory).messages
    assert [m.args for m in members] == [[[1, 2]], [[1, 2]]]


def test_group_of_chains_reports_from_the_last_step() -> None:
    _, plan = start(chord([s("a", 1) | s("b"), s("a", 2) | s("b")], s("sum")))
    first = plan.messages[0]
    assert first.chord is None  # the chain's first step does not report
    [last] = on_success(first, 5, factory).messages
    assert last.chord == plan.groups[0].group_id and last.group_index == 0


def test_chord_inside_a_chain_continues_after_the_body() -> None:
    _, plan = start(s("a") | chord([s("b"), s("b")], s("sum")) | s("fin"))
    nxt = on_success(plan.messages[0], 1, factory)
    [opened] = nxt.groups
    [body] = on_chord_complete(opened.body, [2, 2], nxt.messages[0], factory).messages
    assert [x["task"] for x in body.chain] == ["fin"]


def test_chord_whose_header_holds_a_chord_reports_through_the_inner_body() -> None:
    inner = chord([s("x"), s("x")], s("isum"))
    step, plan = start(chord([inner, s("y")], s("osum")))
    assert len(plan.groups) == 2  # the outer group and the inner one, opened up front
    x_msgs = [m for m in plan.messages if m.task == "x"]
    y_msg = next(m for m in plan.messages if m.task == "y")
    inner_group = x_msgs[0].chord
    body_plan = on_chord_complete(
        next(g.body for g in plan.groups if g.group_id == inner_group), [1, 1], x_msgs[0], factory
    )
    [isum] = body_plan.messages
    assert isum.chord == y_msg.chord != inner_group  # the inner body reports to the outer chord
    assert isum.group_index == 0
    [osum] = on_chord_complete(
        next(g.body for g in plan.groups if g.group_id == y_msg.chord), [2, 3], isum, factory
    ).messages
    assert osum.task == "osum" and osum.args == [[2, 3]] and result_ids(step) == osum.id


def test_failure_fails_the_rest_of_the_chain_and_runs_errbacks() -> None:
    head = s("a")
    head.link_error(s("on_err"))
    step, plan = start(head | s("b") | s("c"))
    failed = on_failure(plan.messages[0], factory)
    assert [m.task for m in failed.messages] == ["on_err"]
    assert failed.messages[0].args == [plan.messages[0].id]
    assert result_ids(step) in failed.failed and len(failed.failed) == 2


def test_chain_link_error_applies_to_every_step() -> None:
    c = s("a") | s("b")
    c.link_error(s("err"))
    _, plan = start(c)
    [second] = on_success(plan.messages[0], 1, factory).messages
    assert [e["task"] for e in second.errbacks] == ["err"]


def test_failing_header_fails_the_chord_and_runs_body_errbacks() -> None:
    body = s("sum")
    body.link_error(s("chord_err"))
    step, plan = start(s("pre") | chord([s("a"), s("a") | s("b")], body) | s("post"))
    nxt = on_success(plan.messages[0], 1, factory)
    second_member_first_step = nxt.messages[1]
    failed = on_failure(second_member_first_step, factory)
    [report] = failed.reports  # the chain's last step would have reported: its failure does
    assert report.index == 1
    [opened] = nxt.groups
    chord_failed = on_chord_failure(opened.body, second_member_first_step.id, factory)
    assert [m.task for m in chord_failed.messages] == ["chord_err"]
    assert result_ids(step) in chord_failed.failed


def test_links_receive_the_result() -> None:
    head = s("a")
    head.link(s("cb", 1))
    _, plan = start(head)
    [cb] = on_success(plan.messages[0], 42, factory).messages
    assert cb.args == [42, 1]


def test_map_starmap_chunks_are_single_messages_per_chunk() -> None:
    _, plan = start(chunks(s("add"), [(i, i) for i in range(100)], 10))
    assert len(plan.messages) == 10
    assert plan.messages[0].task == "aiotask.starmap"
    assert plan.messages[0].args[0] == "add" and len(plan.messages[0].args[1]) == 10


def test_group_member_that_ends_in_a_group_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="one task"):
        freeze(group(chord([s("a")], group(s("b"), s("c"))), s("d")))


def test_steps_are_json() -> None:
    step, plan = start(chord([s("a") | s("b")], s("sum")) | s("x"))
    assert orjson.loads(orjson.dumps(step)) == step
    assert all(orjson.dumps(m.chain) for m in plan.messages)


def test_long_chain_remainder_is_stored_once_and_messages_stay_small() -> None:
    from aiotask.canvas.runtime import chain_refs, expand_all, expand_next
    from aiotask.protocol import encode

    steps = [s("inc", "x" * 100) for _ in range(500)]
    step, plan = start(chain(*steps))
    [(key, stored)] = plan.blobs
    assert len(stored) == 499
    [first] = plan.messages
    assert chain_refs(first.chain) == [key]
    assert len(encode(first)) < 1000
    sizes = []
    message = first
    for value in range(1, 500):  # walk the chain: only the next step is materialized each time
        expanded = message.evolve(chain=expand_next(message.chain, {key: stored}))
        [message] = on_success(expanded, value, factory).messages
        sizes.append(len(encode(message)))
        assert not on_success(expanded, value, factory).blobs  # nothing stored again
    assert max(sizes) < 1000
    assert message.id == result_ids(step)  # walked to the last step
    assert message.chain == []
    second_last = first.evolve(chain=expand_all(first.chain, {key: stored}))
    failed = on_failure(second_last, factory)
    assert len(failed.failed) == 499  # a failing first step fails every stored step


def test_short_chains_stay_inline() -> None:
    _, plan = start(chain(*[s("inc") for _ in range(20)]))
    assert not plan.blobs
    assert len(plan.messages[0].chain) == 19
