"""The dashboard's task history: events folded into rows (pure), and the stores that keep
them (memory, SQLite, Redis): search, pagination, workflows, chart buckets and retention."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("starlette")

from aiotask import App
from aiotask.dashboard.history import History, TaskRow, prune
from aiotask.events import EventType, TaskEvent
from aiotask.history import (
    HistoryQuery,
    HistoryRecord,
    HistoryStore,
    MemoryHistoryStore,
    matches,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

E = EventType


def event(kind: EventType, task_id: str, at: float = 1.0, name: str = "p.t") -> TaskEvent:
    return TaskEvent(kind, at, "w1", task_id, name, "default")


def state(h: History, task_id: str) -> str:
    return h.rows[task_id].state


def test_states_never_go_back() -> None:
    h = History(10)
    h.apply(event(E.TASK_SUCCEEDED, "a", 3.0))
    h.apply(event(E.TASK_STARTED, "a", 2.0))  # late: a worker's event after the outcome
    h.apply(event(E.TASK_SENT, "a", 1.0))
    assert state(h, "a") == "SUCCESS"
    assert [t for t, _, _ in h.rows["a"].timeline] == [
        "task-succeeded",
        "task-started",
        "task-sent",
    ]
    h.apply(event(E.TASK_STARTED, "b", 1.0))
    h.apply(event(E.TASK_RETRIED, "b", 2.0))
    h.apply(event(E.TASK_RECEIVED, "b", 1.5))  # the first attempt's, late: stale
    assert state(h, "b") == "RETRY"
    h.apply(event(E.TASK_STARTED, "b", 5.0))  # the retry runs
    assert state(h, "b") == "STARTED"
    h.apply(event(E.TASK_FAILED, "b", 6.0))
    h.apply(event(E.TASK_REVOKED, "b", 7.0))  # the first outcome stays
    h.apply(event(E.TASK_RETRIED, "b", 8.0))
    assert state(h, "b") == "FAILURE"
    h.apply(event(E.TASK_REJECTED, "c", 1.0))  # dead-lettered, then replayed
    h.apply(event(E.TASK_STARTED, "c", 2.0))
    h.apply(event(E.TASK_SUCCEEDED, "c", 3.0))
    assert state(h, "c") == "SUCCESS"


async def test_a_batch_reads_unknown_rows_from_the_store_then_writes_the_changes() -> None:
    store = MemoryHistoryStore()
    first = History(2)
    sent = TaskEvent(E.TASK_SENT, 1.0, "p", "x", "p.t", "q", args="[1]", kwargs="{}", root_id="r")
    assert await first.fold(store, [sent, event(E.TASK_STARTED, "x", 2.0)]) == 1
    # a new dashboard (nothing in memory) folds the outcome into the stored row
    second = History(2)
    await second.fold(store, [event(E.TASK_SUCCEEDED, "x", 3.0)])
    (row,) = (await store.get_many(["x"])).values()
    assert (row.state, row.args, row.root_id, row.queue) == ("SUCCESS", "[1]", "r", "q")
    assert [t for t, _, _ in row.timeline] == ["task-sent", "task-started", "task-succeeded"]
    # memory keeps `size` rows; the store keeps them all
    await second.fold(store, [event(E.TASK_SENT, f"n{i}", 4.0 + i) for i in range(3)])
    assert list(second.rows) == ["n1", "n2"]
    assert (await store.search(HistoryQuery()))[1] == 4


def test_a_row_round_trips_through_its_record() -> None:
    row = TaskRow("i", "p.t", "RETRY", timeline=[("task-retried", 5.0, "w")], args="[2]")
    again = TaskRow.of(HistoryRecord.from_json(row.record().to_json()))
    assert again.record() == row.record()
    assert again.again_at == 5.0  # a retried row knows which later events count


# -- the stores --------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[HistoryStore]:
    if request.param == "memory":
        yield MemoryHistoryStore()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/h.db"
    else:
        url = request.getfixturevalue(f"{request.param}_url")
    app = App("hist", broker="memory://", backend=url, key_prefix=namespace)
    async with app:
        backend = await app.result_backend()
        found = backend.history_store("hist")  # type: ignore[attr-defined]
        assert isinstance(found, HistoryStore)
        try:
            yield found
        finally:
            await found.clear()


def record(i: int, **fields: object) -> HistoryRecord:
    values: dict[str, object] = {
        "id": f"id{i:03d}",
        "name": f"p.n{i % 2}",
        "state": "FAILURE" if i % 3 == 0 else "SUCCESS",
        "worker": f"w{i % 4}",
        "seen_at": 1000.0 + i,
        "updated_at": 1000.0 + i,
    }
    values.update(fields)
    return HistoryRecord(**values)  # type: ignore[arg-type]


async def test_search_pages_newest_first_with_totals(store: HistoryStore) -> None:
    await store.put([record(i) for i in range(30)])
    rows, total = await store.search(HistoryQuery(limit=5))
    assert total == 30 and [r.id for r in rows] == ["id029", "id028", "id027", "id026", "id025"]
    rows, total = await store.search(HistoryQuery(limit=5, offset=28))
    assert total == 30 and [r.id for r in rows] == ["id001", "id000"]
    rows, total = await store.search(HistoryQuery(state="FAILURE", limit=3, offset=1))
    assert total == 10 and [r.id for r in rows] == ["id024", "id021", "id018"]
    rows, total = await store.search(HistoryQuery(q="id01"))
    assert total == 10 and rows[0].id == "id019"
    rows, total = await store.search(HistoryQuery(q="P.N1", state="SUCCESS"))  # name, any case
    assert total == 10 and all(r.name == "p.n1" and r.state == "SUCCESS" for r in rows)
    rows, total = await store.search(HistoryQuery(q="id007"))  # an exact id
    assert total == 1 and rows[0] == record(7)
    assert await store.search(HistoryQuery(q="id007", state="FAILURE")) == ([], 0)
    assert await store.search(HistoryQuery(q="nothing")) == ([], 0)
    rows, total = await store.search(HistoryQuery(worker="w1", name="p.n1", limit=3))
    assert total == 8 and [r.id for r in rows] == ["id029", "id025", "id021"]
    rows, total = await store.search(HistoryQuery(since=1010.0, until=1014.0))
    assert total == 5 and [r.id for r in rows][-1] == "id010"
    rows, total = await store.search(HistoryQuery(state="SUCCESS", since=1025.0, limit=2))
    assert total == 4 and [r.id for r in rows] == ["id029", "id028"]
    # a row that changes moves to its new state and to the front
    await store.put([record(3, state="SUCCESS", updated_at=2000.0)])
    assert (await store.search(HistoryQuery(limit=1)))[0][0].id == "id003"
    assert (await store.search(HistoryQuery(state="FAILURE")))[1] == 9
    assert await store.counts() == {"SUCCESS": 21, "FAILURE": 9}


async def test_search_by_error_text_and_arguments(store: HistoryStore) -> None:
    await store.put(
        [
            record(1, args='["Alice@Example.org"]', kwargs='{"retry":true}'),
            record(2, args='["bob@example.org"]', kwargs="{}"),
            record(4, exception_type="SMTPError", exception="Relay Denied", state="FAILURE"),
        ]
    )
    assert [r.id for r in (await store.search(HistoryQuery(q="alice@example")))[0]] == ["id001"]
    assert [r.id for r in (await store.search(HistoryQuery(q="relay denied")))[0]] == ["id004"]
    found = await store.search(HistoryQuery(q="smtperror", state="FAILURE"))
    assert [r.id for r in found[0]] == ["id004"]
    assert (await store.search(HistoryQuery(q='"retry":true')))[1] == 1
    assert (await store.get_many(["id002", "nope"])).keys() == {"id002"}


def sample(i: int) -> HistoryRecord:
    """Varied rows for comparing a store's searches with the reference `matches`."""
    failed = i % 5 == 0
    return record(
        i,
        name=f"mod.Task{i % 3}",
        worker=f"w{i % 4}" if i % 7 else "",
        state="FAILURE" if failed else ("STARTED" if i % 11 == 0 else "SUCCESS"),
        updated_at=1000.0 + (i * 37) % 97,  # distinct, out of insertion order
        args=f'["Mail-{i % 6}@x.org"]' if i % 2 else None,
        exception_type="IOError" if failed else None,
        exception=f"Disk Full {i % 4}" if failed else None,
    )


@pytest.mark.parametrize("chunk", [7, 5_000])
async def test_searches_agree_with_the_reference_filter(
    store: HistoryStore, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a small chunk makes the Redis search go over several server-side calls
    monkeypatch.setattr("aiotask.backends._history_redis.SCAN_CHUNK", chunk)
    rows = [sample(i) for i in range(97)]
    await store.put(rows)
    # a row that changes worker, name and text leaves its old index entries
    rows[14] = replace(
        rows[14], worker="w9", name="mod.Moved", args='["elsewhere"]', updated_at=999.0
    )
    await store.put([rows[14]])
    queries = [
        HistoryQuery(worker="w1"),
        HistoryQuery(worker="w1", state="FAILURE"),
        HistoryQuery(worker="w2", state="SUCCESS", limit=4, offset=3),
        HistoryQuery(worker="w9"),
        HistoryQuery(q="disk full 2"),
        HistoryQuery(q="MAIL-3", worker="w3", limit=2, offset=1),
        HistoryQuery(q="task1", state="STARTED"),
        HistoryQuery(q="ioerror: disk", since=1020.0, until=1060.0),
        HistoryQuery(q="id02", worker="w0"),
        HistoryQuery(q="mod.moved"),
        HistoryQuery(q="elsewhere", worker="w9"),
        HistoryQuery(q="mail-", name="mod.Task2", limit=5, offset=5),
        HistoryQuery(name="mod.Task0", state="FAILURE"),
        HistoryQuery(worker="w2", since=1050.0, limit=3),
        HistoryQuery(q="x.org", limit=0),
    ]
    for query in queries:
        expected = sorted(
            (r for r in rows if matches(r, query)), key=lambda r: r.updated_at, reverse=True
        )
        found, total = await store.search(query)
        assert total == len(expected), query
        page = expected[query.offset : query.offset + query.limit]
        assert [r.id for r in found] == [r.id for r in page], query


async def test_a_workflow_is_its_root_its_descendants_and_its_group(store: HistoryStore) -> None:
    await store.put(
        [
            record(1, seen_at=1.0),
            record(2, seen_at=2.0, root_id="id001", parent_id="id001", group_id="g"),
            record(3, seen_at=3.0, root_id="id001", parent_id="id001", group_id="g"),
            record(4, seen_at=4.0, root_id="id001", parent_id="id003"),
            record(5, seen_at=5.0),
            record(6, seen_at=6.0, group_id="solo"),
            record(7, seen_at=7.0, group_id="solo"),
        ]
    )
    family = await store.family("id001", 100)
    assert [r.id for r in family] == ["id001", "id002", "id003", "id004"]
    assert [r.id for r in await store.family("solo", 100)] == ["id006", "id007"]


async def test_finished_tasks_per_minute(store: HistoryStore) -> None:
    now = time.time()
    since = now - 180
    await store.put(
        [
            record(1, updated_at=since + 10),
            record(2, updated_at=since + 20, state="FAILURE"),
            record(3, updated_at=since + 70, state="SUCCESS"),
            record(4, updated_at=since - 5),  # before the window
            record(5, updated_at=since + 130, state="STARTED"),  # not finished
        ]
    )
    buckets = await store.finished(since, 60.0)
    assert [(b.succeeded, b.failed) for b in buckets[:3]] == [(1, 1), (1, 0), (0, 0)]
    assert buckets[0].start == since


async def test_retention_drops_expired_states_and_keeps_the_others(store: HistoryStore) -> None:
    now = 10_000.0
    old, recent = now - 7200, now - 60
    await store.put(
        [
            *(record(i, state="SUCCESS", updated_at=old) for i in range(5)),
            record(10, state="SUCCESS", updated_at=recent),
            record(11, state="FAILURE", updated_at=old, root_id="r", group_id="g"),
            record(12, state="STARTED", updated_at=old),
        ]
    )
    # successes an hour, failures a week, STARTED not listed: kept
    retention = {"SUCCESS": 3600.0, "FAILURE": 7 * 86400.0}
    assert await store.prune(retention, now, 2) == 2  # one batch
    assert await prune(store, retention, now) == 3  # the rest, batch after batch
    left = {r.id for r in (await store.search(HistoryQuery(limit=100)))[0]}
    assert left == {"id010", "id011", "id012"}
    assert await store.prune({"FAILURE": 3600.0}, now, 100) == 1
    assert await store.family("r", 10) == []
    assert await store.counts() == {"SUCCESS": 1, "STARTED": 1}


async def test_the_stream_position_is_kept_per_app_and_cleared_with_the_history(
    store: HistoryStore,
) -> None:
    assert await store.get_cursor() is None  # never written: a dashboard reads all kept
    await store.put_cursor("1700000000000-3")
    await store.put_cursor("1700000000001-0")  # replaced, not added
    assert await store.get_cursor() == "1700000000001-0"
    await store.put([record(1)])
    await store.clear()  # `history reset`: the next dashboard starts over
    assert await store.get_cursor() is None
    assert (await store.search(HistoryQuery()))[1] == 0


async def test_a_delete_drops_the_rows_and_their_index_entries(store: HistoryStore) -> None:
    await store.put(
        [
            record(1, root_id="r", group_id="g", worker="wa"),
            record(2, root_id="r"),
            record(3, state="STARTED", worker="wb"),
        ]
    )
    assert await store.delete(["id001", "id003", "nope"]) == 2
    assert await store.delete([]) == 0
    left, total = await store.search(HistoryQuery(limit=10))
    assert [r.id for r in left] == ["id002"] and total == 1
    assert [r.id for r in await store.family("r", 10)] == ["id002"]
    assert await store.family("g", 10) == []
    assert (await store.search(HistoryQuery(worker="wb")))[1] == 0
    assert (await store.search(HistoryQuery(q="id003")))[1] == 0
    assert await store.counts() == {"SUCCESS": 1}
    assert await store.get_many(["id001", "id002"]) == {"id002": record(2, root_id="r")}


async def test_redis_retention_leaves_no_index_entry_behind(redis_url: str, namespace: str) -> None:
    import redis.asyncio as aioredis

    app = App("leak", broker="memory://", backend=redis_url, key_prefix=namespace)
    client = aioredis.from_url(redis_url)
    try:
        async with app:
            store = (await app.result_backend()).history_store("leak")  # type: ignore[attr-defined]
            rows = [sample(i) for i in range(40)]
            rows += [record(50, worker="w1", root_id="id049", group_id="g", args='["x"]')]
            await store.put(rows)
            rows[1] = replace(rows[1], worker="w-moved")
            await store.put([rows[1]])
            keys = [k async for k in client.scan_iter(match=f"{namespace}:*hist:leak*")]
            assert any(k.endswith(b":wk:w-moved") for k in keys)
            # a row of an older writer has no search text: searches then filter in Python
            (texts,) = [k for k in keys if k.endswith(b":txt")]
            await client.hdel(texts, rows[5].id)
            query = HistoryQuery(q="disk full 1", limit=100)
            found, total = await store.search(query)
            expected = {r.id for r in rows if matches(r, query)}
            assert rows[5].id in expected
            assert {r.id for r in found} == expected and total == len(expected)
            await client.zrem(texts[: -len(b"txt")] + b"wk:w1", rows[5].id)  # nor by worker
            query = HistoryQuery(worker=rows[5].worker, limit=100)
            found, total = await store.search(query)
            expected = {r.id for r in rows if matches(r, query)}
            assert rows[5].id in expected
            assert {r.id for r in found} == expected and total == len(expected)
            everything = dict.fromkeys(["SUCCESS", "FAILURE", "STARTED"], 0.0)
            assert await prune(store, everything, 5000.0) == len(rows)
            left = [k async for k in client.scan_iter(match=f"{namespace}:*hist:leak*")]
            assert left == []
    finally:
        await client.aclose()


def test_retention_is_a_setting_per_state() -> None:
    from aiotask.exceptions import ConfigurationError
    from aiotask.settings import Settings

    conf = Settings.from_env({"AIOTASK_HISTORY_RETENTION": "success:60, FAILURE:7200"})
    assert conf.history_retention == {"SUCCESS": 60.0, "FAILURE": 7200.0}
    assert Settings().history_retention["SUCCESS"] == 3600.0
    assert Settings().history_retention["FAILURE"] == 7 * 86400.0
    with pytest.raises(ConfigurationError, match="AIOTASK_HISTORY_RETENTION"):
        Settings.from_env({"AIOTASK_HISTORY_RETENTION": "SUCCESS"})
    with pytest.raises(ConfigurationError, match="'SUCCESS' must be a positive number"):
        Settings(history_retention={"SUCCESS": 0})
