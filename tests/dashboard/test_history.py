"""The dashboard's task history, folded from events (pure: no server)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")

from aiotask.dashboard.history import History
from aiotask.events import EventType, TaskEvent

E = EventType


def event(kind: EventType, task_id: str, at: float = 1.0, name: str = "p.t") -> TaskEvent:
    return TaskEvent(kind, at, "w1", task_id, name, "default")


def test_states_never_go_back_and_counts_follow() -> None:
    h = History(10)
    h.apply(event(E.TASK_SUCCEEDED, "a", 3.0))
    h.apply(event(E.TASK_STARTED, "a", 2.0))  # late: a worker's event after the outcome
    h.apply(event(E.TASK_SENT, "a", 1.0))
    row = h.get("a")
    assert row is not None and row.state == "SUCCESS"
    assert [t for t, _, _ in row.timeline] == ["task-succeeded", "task-started", "task-sent"]
    h.apply(event(E.TASK_STARTED, "b", 1.0))
    h.apply(event(E.TASK_RETRIED, "b", 2.0))
    h.apply(event(E.TASK_RECEIVED, "b", 1.5))  # the first attempt's, late: stale
    assert h.get("b").state == "RETRY"  # type: ignore[union-attr]
    h.apply(event(E.TASK_STARTED, "b", 5.0))  # the retry runs
    assert h.get("b").state == "STARTED"  # type: ignore[union-attr]
    h.apply(event(E.TASK_FAILED, "b", 6.0))
    h.apply(event(E.TASK_REVOKED, "b", 7.0))  # the first outcome stays
    h.apply(event(E.TASK_RETRIED, "b", 8.0))
    assert h.get("b").state == "FAILURE"  # type: ignore[union-attr]
    h.apply(event(E.TASK_REJECTED, "c", 1.0))  # dead-lettered, then replayed
    h.apply(event(E.TASK_STARTED, "c", 2.0))
    h.apply(event(E.TASK_SUCCEEDED, "c", 3.0))
    assert h.get("c").state == "SUCCESS"  # type: ignore[union-attr]
    assert +h.counts == {"SUCCESS": 2, "FAILURE": 1}


def test_oldest_rows_go_first_and_their_counts_with_them() -> None:
    h = History(3)
    for i in range(5):
        h.apply(event(E.TASK_FAILED if i % 2 else E.TASK_SUCCEEDED, f"t{i}"))
    assert list(h.rows) == ["t2", "t3", "t4"]
    assert +h.counts == {"SUCCESS": 2, "FAILURE": 1}


def test_search_pages_newest_first_with_totals() -> None:
    h = History(100)
    for i in range(30):
        h.apply(
            event(
                E.TASK_FAILED if i % 3 == 0 else E.TASK_SUCCEEDED, f"id{i:02d}", name=f"p.n{i % 2}"
            )
        )
    rows, total = h.search(limit=5)
    assert total == 30 and [r.id for r in rows] == ["id29", "id28", "id27", "id26", "id25"]
    rows, total = h.search(limit=5, offset=28)
    assert total == 30 and [r.id for r in rows] == ["id01", "id00"]
    rows, total = h.search(state="FAILURE", limit=3, offset=1)
    assert total == 10 and [r.id for r in rows] == ["id24", "id21", "id18"]
    rows, total = h.search(q="id1", limit=50)
    assert total == 10 and rows[0].id == "id19"
    rows, total = h.search(q="P.N1", state="SUCCESS")  # name part, any case
    assert total == 10 and all(r.name == "p.n1" and r.state == "SUCCESS" for r in rows)
    assert h.search(q="id07") == ([h.rows["id07"]], 1)  # an exact id
    assert h.search(q="id07", state="FAILURE") == ([], 0)
    assert h.search(q="nothing") == ([], 0)


def test_search_by_error_text_and_arguments() -> None:
    h = History(10)
    h.sent("s1", "p.mail", ["Alice@Example.org"], {"retry": True}, 1.0)
    h.sent("s2", "p.mail", ["bob@example.org"], {}, 1.0)
    failed = TaskEvent(
        E.TASK_FAILED,
        2.0,
        "w1",
        "s2",
        "p.mail",
        "default",
        exception_type="SMTPError",
        exception="Relay Denied",
    )
    h.apply(failed)
    assert [r.id for r in h.search(q="alice@example")[0]] == ["s1"]
    assert [r.id for r in h.search(q="relay denied")[0]] == ["s2"]
    assert [r.id for r in h.search(q="smtperror", state="FAILURE")[0]] == ["s2"]
    assert h.search(q='"retry":true')[1] == 1


def test_sent_keeps_the_arguments() -> None:
    h = History(5)
    h.sent("x", "p.t", [1, "<b>"], {"k": None}, 1.0)
    h.apply(event(E.TASK_STARTED, "x", 2.0))
    row = h.get("x")
    assert row is not None
    assert (row.args, row.kwargs, row.state) == ([1, "<b>"], {"k": None}, "STARTED")
    assert row.to_dict(full=True)["timeline"] == [
        {"type": "task-started", "timestamp": 2.0, "hostname": "w1"}
    ]
