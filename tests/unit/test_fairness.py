"""Round-robin across fairness keys: the in-process ring, the SQLite pick, key resolution."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from aiotask import App
from aiotask.brokers import _sqlite_fair
from aiotask.brokers._fair import FairHeap
from aiotask.brokers.sqlite import _SCHEMA
from aiotask.coordination.fairness import FAIR_HEADER, fair_headers, fair_key
from aiotask.exceptions import ConfigurationError


def _drain(ring: FairHeap[str]) -> list[str]:
    out = []
    while (item := ring.pop()) is not None:
        out.append(item)
    return out


def test_ring_alternates_keys_whatever_their_backlogs() -> None:
    ring: FairHeap[str] = FairHeap()
    for i in range(100):
        ring.push("a", (0, i, f"a{i}"))
    for i in range(3):
        ring.push("b", (0, 100 + i, f"b{i}"))
    got = _drain(ring)
    assert got[:6] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert got[6:] == [f"a{i}" for i in range(3, 100)]
    assert len(ring) == 0
    assert ring.keys() == []


def test_ring_priority_orders_within_a_key_and_a_returning_key_goes_last() -> None:
    ring: FairHeap[str] = FairHeap()
    ring.push("a", (0, 1, "a-low"))
    ring.push("a", (-9, 2, "a-high"))
    ring.push("b", (0, 3, "b"))
    assert ring.pop() == "a-high"
    assert ring.pop() == "b"  # b ran empty: it left the ring
    ring.push("b", (0, 4, "b2"))
    ring.push("c", (0, 5, "c"))
    assert ring.keys() == ["a", "b", "c"]
    assert _drain(ring) == ["a-low", "b2", "c"]


def test_one_key_is_plain_priority_fifo() -> None:
    ring: FairHeap[str] = FairHeap()
    for i, prio in enumerate([0, 5, 0, 5]):
        ring.push("", (-prio, i, str(i)))
    assert _drain(ring) == ["1", "3", "0", "2"]


def test_key_resolution_by_name_position_and_callable() -> None:
    def fn(tenant_id: str, n: int) -> None: ...

    assert fair_headers("t", "tenant_id", [], {"tenant_id": "acme"}) == {FAIR_HEADER: "acme"}
    assert fair_headers("t", "tenant_id", ["acme", 1], {}, fn) == {FAIR_HEADER: "acme"}
    assert fair_headers("t", lambda tenant_id, n: tenant_id.upper(), ["x", 1], {}) == {
        FAIR_HEADER: "X"
    }
    assert fair_headers("t", "missing", [], {}) == {}
    assert fair_key({FAIR_HEADER: "acme"}) == "acme"
    assert fair_key({}) == ""
    with pytest.raises(ConfigurationError, match="fairness_key"):
        fair_headers("t", 3, [], {})


async def test_task_option_and_call_option_set_the_header() -> None:
    app = App("fair-unit", broker="memory://")

    @app.task(fairness_key="tenant_id")
    async def job(tenant_id: str, n: int) -> None: ...

    assert job.message(["acme", 1]).headers[FAIR_HEADER] == "acme"
    over = job.message(["acme", 1], fairness_key=lambda tenant_id, n: f"n{n}")
    assert over.headers[FAIR_HEADER] == "n1"
    with pytest.raises(ConfigurationError, match="fairness_key"):
        app.task(name="bad", fairness_key=5)(job.fn)  # type: ignore[call-overload]


def _db() -> contextlib.closing[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for statement in _SCHEMA.split(";"):
        conn.execute(statement)
    _sqlite_fair.ensure(conn)
    return contextlib.closing(conn)


def _insert(conn: sqlite3.Connection, key: str, n: int, queue: str = "q") -> None:
    conn.executemany(
        "INSERT INTO aiotask_messages (message_id, queue, priority, eta, body, fair_key) "
        "VALUES (?, ?, 0, 0, x'', ?)",
        [(f"{key}{i}", queue, key) for i in range(n)],
    )


def _keys(conn: sqlite3.Connection, ids: list[int]) -> list[str]:
    return [
        conn.execute("SELECT fair_key FROM aiotask_messages WHERE id=?", (i,)).fetchone()[0]
        for i in ids
    ]


def test_sqlite_pick_round_robin_and_rotating_cursor() -> None:
    with _db() as conn:
        assert not _sqlite_fair.has_fair(conn, ["q"])
        _insert(conn, "", 5)  # unkeyed messages share the "" key
        _insert(conn, "a", 50)
        _insert(conn, "b", 3)
        assert _sqlite_fair.has_fair(conn, ["q"])
        assert _keys(conn, _sqlite_fair.pick(conn, ["q"], 1.0, 6)) == ["a", "b", "", "a", "b", ""]
        served = []
        for _ in range(6):  # one at a time: the cursor still rotates between claims
            (row,) = _sqlite_fair.pick(conn, ["q"], 1.0, 1)
            served += _keys(conn, [row])
            conn.execute("DELETE FROM aiotask_messages WHERE id=?", (row,))
        assert served == ["a", "b", "", "a", "b", ""]


def _plan(conn: sqlite3.Connection, sql: str, *params: object) -> str:
    return " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_sqlite_heads_are_index_ranges_not_scans() -> None:
    """Each key's head is a range of a partial index: a bound `fair_key = ?` alone would walk
    the claim index past every row queued ahead (A's backlog before B's one message)."""
    with _db() as conn:
        _insert(conn, "a", 3)
        plain = "SELECT name FROM sqlite_master WHERE name='aiotask_messages_unkeyed'"
        assert conn.execute(plain).fetchone() is None  # ensure() alone makes no second index
        _sqlite_fair.claim(conn, ["q"], 1, "o:1", 1.0, 60.0)
        assert conn.execute(plain).fetchone() is not None  # the first keyed claim made it
        keyed = _plan(conn, _sqlite_fair._HEAD, "q", "b", 1.0, 1)
        unkeyed = _plan(conn, _sqlite_fair._UNKEYED_HEAD, "q", "", 1.0, 1)
        assert "aiotask_messages_fair_key (queue=? AND fair_key=?)" in keyed
        assert "aiotask_messages_unkeyed (queue=?)" in unkeyed
        assert "aiotask_messages_claim" not in keyed + unkeyed


def test_sqlite_ensure_adds_the_column_to_an_older_file() -> None:
    old = _SCHEMA.replace(",\n    fair_key TEXT NOT NULL DEFAULT ''", "")
    assert "fair_key" not in old
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        for statement in old.split(";"):
            conn.execute(statement)
        _sqlite_fair.ensure(conn)
        _sqlite_fair.ensure(conn)  # idempotent
        _insert(conn, "a", 1)
        assert _sqlite_fair.has_fair(conn, ["q"])


def test_sqlite_pick_skips_empty_turns() -> None:
    """No unkeyed rows and a key with only delayed rows: every claim of one still gets one."""
    with _db() as conn:
        _insert(conn, "a", 3)
        _insert(conn, "b", 3)
        conn.execute("UPDATE aiotask_messages SET eta=100 WHERE fair_key='b' AND message_id='b2'")
        served = []
        for _ in range(5):
            (row,) = _sqlite_fair.pick(conn, ["q"], 1.0, 1)
            served += _keys(conn, [row])
            conn.execute("DELETE FROM aiotask_messages WHERE id=?", (row,))
        assert served == ["a", "b", "a", "b", "a"]
        assert _sqlite_fair.pick(conn, ["q"], 1.0, 1) == []  # b2 is not due yet


def test_worker_buffer_starts_keys_in_turn() -> None:
    """A worker's buffered messages start round-robin by key, FIFO within a key."""
    from aiotask.brokers.base import Delivery
    from aiotask.worker._fair_buffer import FairBuffer

    app = App("fair-buf", broker="memory://")

    @app.task(fairness_key="tenant_id")
    async def job(tenant_id: str, n: int) -> None: ...

    @app.task
    async def plain(n: int) -> None: ...

    buffer = FairBuffer()
    for tenant, n in [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1)]:
        buffer.append((Delivery(b"", "q", f"{tenant}{n}", 1), job.message([tenant, n]), False))
    buffer.append((Delivery(b"", "q", "u0", 1), plain.message([0]), False))
    assert len(buffer) == 7
    assert sorted(d.message_id for d, _, _ in buffer) == ["a0", "a1", "a2", "a3", "b0", "b1", "u0"]
    order = []
    while buffer:
        order.append(buffer.popleft()[0].message_id)
    assert order == ["a0", "b0", "u0", "a1", "b1", "a2", "a3"]
    assert len(buffer) == 0
    buffer.append((Delivery(b"", "q", "x", 1), plain.message([1]), False))
    buffer.clear()
    assert not buffer
    with pytest.raises(IndexError):
        buffer.popleft()


def test_rabbitmq_key_queue_names_are_plain_or_hashed_and_distinct() -> None:
    from aiotask.brokers._rabbitmq_fair import key_queue
    from aiotask.brokers._rabbitmq_topology import Names

    names = Names("p")
    assert key_queue(names, "q", "acme-1") == "p.q.k.acme-1"
    odd = [key_queue(names, "q", k) for k in ("a b", "a.b", "é", "x" * 200, "k:1")]
    assert all(n.startswith("p.q.h.") and len(n) <= 255 for n in odd)
    assert len(set(odd)) == len(odd)
    assert key_queue(names, "q", "a b") == key_queue(names, "q", "a b")  # stable across runs
