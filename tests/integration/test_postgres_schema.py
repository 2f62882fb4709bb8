"""The PostgreSQL schema: versioned migrations applied once under concurrency, resumed from an
older version, the URL options (listen=false polling, password redaction), and the claim's plan
on statistics of an empty table."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest

from aiotask._postgres import claims, fair, options
from aiotask._postgres.schema import STEPS, migrate, newest, version
from aiotask.brokers import Outgoing
from aiotask.brokers import from_url as broker_from_url
from aiotask.exceptions import ConfigurationError
from aiotask.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiotask.brokers._postgres_sql import SQL

pytestmark = pytest.mark.postgres


async def test_concurrent_migrations_apply_each_step_once(
    postgres_url: str, namespace: str
) -> None:
    conns = [await asyncpg.connect(postgres_url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(migrate(c, namespace, "broker") for c in conns))
        # exactly one starter found version 0; the others waited on the lock, then found it done
        assert sorted(before for before, _ in results) == [0] + [newest("broker")] * 4
        assert await version(conns[0], namespace, "broker") == newest("broker")
        assert await migrate(conns[0], namespace, "broker") == (newest("broker"),) * 2
    finally:
        for c in conns:
            await c.close()


async def test_an_older_schema_is_brought_forward(postgres_url: str, namespace: str) -> None:
    """A schema left at version 1 by an older aiotask gets only the later steps on connect."""
    conn = await asyncpg.connect(postgres_url)
    try:
        s = f'"{namespace}"'
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(
            f"CREATE TABLE {s}.schema_versions (component text PRIMARY KEY, "
            "version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(STEPS["broker"][0].format(s=s))
        await conn.execute(f"INSERT INTO {s}.schema_versions VALUES ('broker', 1)")  # noqa: S608
        settings = Settings(broker_url=postgres_url, key_prefix=namespace)
        broker = broker_from_url(postgres_url, settings, "app")
        await broker.connect()
        try:
            await broker.emit_events([b"e"])  # type: ignore[attr-defined]  # the step-2 table
        finally:
            await broker.close()
        assert await version(conn, namespace, "broker") == newest("broker") >= 2
    finally:
        await conn.close()


async def _broker_schema_at(conn: asyncpg.Connection, s: str, version: int) -> None:
    """Schema `s` as an older aiotask left it: the broker's first `version` steps applied."""
    await conn.execute(f"CREATE SCHEMA {s}")
    await conn.execute(
        f"CREATE TABLE {s}.schema_versions (component text PRIMARY KEY, "
        "version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for step in STEPS["broker"][:version]:
        await conn.execute(step.format(s=s))
    await conn.execute(
        f"INSERT INTO {s}.schema_versions VALUES ('broker', $1)",  # noqa: S608
        version,
    )


async def test_a_broker_at_version_2_gains_fairness(postgres_url: str, namespace: str) -> None:
    """Step 3 (fairness) on a schema an older aiotask made, with messages queued: they keep
    their place (key ''), the claim index is replaced, and keyed messages then take turns."""
    conn = await asyncpg.connect(postgres_url)
    s = f'"{namespace}"'
    try:
        await _broker_schema_at(conn, s, 2)
        await conn.execute(
            f"INSERT INTO {s}.messages (pkey, message_id, queue, eta, body) "  # noqa: S608
            "SELECT gen_random_uuid(), 'old' || g, 'q', 0, 'x' FROM generate_series(0, 2) g"
        )
        settings = Settings(broker_url=postgres_url, key_prefix=namespace)
        broker = broker_from_url(postgres_url, settings, "app")
        await broker.connect()
        try:
            await broker.publish(
                [Outgoing("q", b"k", f"{k}{i}", fair_key=k) for k in "ab" for i in range(2)]
            )
            got: list[str] = []
            while len(got) < 7:
                batch = await broker.receive(["q"], 2)
                await broker.ack(batch)
                got += [d.message_id for d in batch]
        finally:
            await broker.close()
        # the unkeyed rows from before the upgrade are the key "" and take their turns
        assert got[:3] == ["a0", "b0", "old0"], got
        assert [m for m in got if m.startswith("old")] == ["old0", "old1", "old2"]
        assert await version(conn, namespace, "broker") == newest("broker") >= 3
        assert await migrate(conn, namespace, "broker") == (newest("broker"),) * 2
        indexes = {
            r[0]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = $1", namespace
            )
        }
        assert "messages_claim_key" in indexes
        assert "messages_claim" not in indexes
    finally:
        await conn.close()


async def test_a_broker_at_version_3_gains_the_claim_functions(
    postgres_url: str, namespace: str
) -> None:
    """Step 4 on a schema an older aiotask made (its claims were plain statements), with plain
    and keyed messages queued: the broker claims them through the new functions, which carry
    their planner settings; migrating again changes nothing."""
    conn = await asyncpg.connect(postgres_url)
    s = f'"{namespace}"'
    try:
        await _broker_schema_at(conn, s, 3)
        await conn.execute(
            f"INSERT INTO {s}.messages (pkey, message_id, queue, eta, body, fair_key) "  # noqa: S608
            "SELECT gen_random_uuid(), 'old' || g, 'q', 0, 'x', "
            "CASE WHEN g < 2 THEN '' ELSE 'k' || g END FROM generate_series(0, 3) g"
        )
        settings = Settings(broker_url=postgres_url, key_prefix=namespace)
        broker = broker_from_url(postgres_url, settings, "app")
        await broker.connect()
        try:
            got: list[str] = []
            while len(got) < 4:
                batch = await broker.receive(["q"], 10)
                await broker.ack(batch)
                got += [d.message_id for d in batch]
        finally:
            await broker.close()
        assert sorted(got) == ["old0", "old1", "old2", "old3"]
        assert await version(conn, namespace, "broker") == 4
        assert await migrate(conn, namespace, "broker") == (newest("broker"),) * 2
        configs = await conn.fetch(
            "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = $1::regnamespace",
            s,
        )
        assert {r["proname"] for r in configs} == {"claim", "claim_fair"}
        for r in configs:
            assert set(r["proconfig"]) == {f"{k}={v}" for k, v in claims.SETTINGS}
    finally:
        await conn.close()


#: sha256 (first 16 hex digits) of each released migration step's text, per component. A step
#: is never edited once released (schema.py): its schemas would differ by the aiotask that
#: applied it. Steps past these are new; pin them here once merged.
RELEASED = {
    "broker": ["a7bf850b0bed2a6c", "cf9d8d022321afb3", "776a6ebacc659b54", "d175564674b2cd7f"],
    "backend": ["631c93320dd973e9", "008d5a63b5b95b5d", "055a9f1c1c079a70", "ebe4874fbffce863"],
}


def test_released_migration_steps_are_never_edited() -> None:
    """A change to a released step fails here. For the claims (step 4, claims.functions): add a
    step that replaces the functions, and keep step 4 as the text it had."""
    for component, pinned in RELEASED.items():
        now = [hashlib.sha256(step.encode()).hexdigest()[:16] for step in STEPS[component]]
        assert now[: len(pinned)] == pinned, component


async def test_a_backend_at_version_1_gains_the_coordination_tables(
    postgres_url: str, namespace: str
) -> None:
    """Backend steps 2 (locks, rate and slot tables) and 3 (task history) are added to a schema
    an older aiotask made, once; running the migration again changes nothing."""
    from aiotask.backends import from_url as backend_from_url

    conn = await asyncpg.connect(postgres_url)
    try:
        s = f'"{namespace}"'
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(
            f"CREATE TABLE {s}.schema_versions (component text PRIMARY KEY, "
            "version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(STEPS["backend"][0].format(s=s))
        await conn.execute(f"INSERT INTO {s}.schema_versions VALUES ('backend', 1)")  # noqa: S608
        backend = backend_from_url(
            postgres_url, Settings(broker_url=postgres_url, key_prefix=namespace)
        )
        await backend.connect()
        try:
            assert await backend.lock_store().acquire("k", "a", 30) is None
            store = backend.coordination_store("app")
            assert (await store.take_rate("r", 1.0)).granted
            assert await store.acquire_slot("c", 1, "t", 30)
        finally:
            await backend.close()
        assert await version(conn, namespace, "backend") == newest("backend") == 4
        assert await migrate(conn, namespace, "backend") == (4, 4)
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", namespace
        )
        assert {"locks", "coord_rate", "coord_slots", "task_history", "task_history_cursor"} <= {
            r["tablename"] for r in tables
        }
    finally:
        await conn.close()


async def test_listen_false_polls(postgres_url: str, namespace: str) -> None:
    """PgBouncer's transaction mode has no LISTEN: ?listen=false still delivers (by polling)."""
    url = postgres_url + "?listen=false"
    settings = Settings(broker_url=url, key_prefix=namespace)
    consumer = broker_from_url(url, settings, "app")
    producer = broker_from_url(url, settings, "app")
    await consumer.connect()
    await producer.connect()
    try:
        waiting = asyncio.create_task(consumer.receive(["q"], 10))
        await asyncio.sleep(0.3)  # the consumer is idle, polling
        await producer.publish([Outgoing("q", b"x", "m1")])
        async with asyncio.timeout(5):
            got = await waiting
        assert [d.message_id for d in got] == ["m1"]
        await consumer.ack(got)
    finally:
        await producer.close()
        await consumer.close()


def test_url_options_and_redaction() -> None:
    opts = options(
        "postgresql://u:s3cret@db:5432/app?listen=false&pool_size=3&sslmode=disable", "p"
    )
    assert (opts.listen, opts.pool_size, opts.schema) == (False, 3, "p")
    assert "listen" not in opts.dsn and "sslmode=disable" in opts.dsn
    assert "s3cret" not in opts.shown and "u:***@db" in opts.shown
    shown = options("postgres://u@db/app?password=s3cret", "p").shown
    assert "s3cret" not in shown
    with pytest.raises(ConfigurationError, match="listen"):
        options("postgresql://db/app?listen=maybe", "p")


async def test_a_worker_without_listen_runs_a_chord(postgres_url: str, namespace: str) -> None:
    """End to end with ?listen=false (PgBouncer in transaction mode): the worker's claims and
    the producer's result waits poll, and a chain and a chord still complete."""
    from aiotask import App, chord, group
    from aiotask.testing import start_worker

    app = App("nolisten", broker=postgres_url + "?listen=false", key_prefix=namespace)

    @app.task(name="nl.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="nl.tsum")
    async def tsum(values: list[int]) -> int:
        return sum(values)

    async with app, start_worker(app, concurrency=20):
        assert await (await (add.s(1, 2) | add.s(3)).send()).get(timeout=15) == 6
        r = await chord(group(add.s(i, i) for i in range(10)), tsum.s()).send()
        assert await r.get(timeout=15) == 90


async def test_published_rows_have_unique_rising_keys_and_their_own_columns(
    postgres_url: str, namespace: str
) -> None:
    """A publish's row keys (made by the statement from the batch's head and each row's
    index): valid uuids, unique within and across batches, rising with the row id (appended at
    the right edge of the unique index). A uniform batch (one queue, priority, eta and fair key,
    passed once) and a mixed one (a value per row) both store each row's own values."""
    settings = Settings(broker_url=postgres_url, key_prefix=namespace)
    broker = broker_from_url(postgres_url, settings, "app")
    await broker.connect()
    try:
        for b in range(20):
            await broker.publish(
                [
                    Outgoing("u", f"u{b}.{i}".encode(), f"u{b}.{i}", 3, 5.0, fair_key="k")
                    for i in range(300)
                ]
            )
        mixed = [
            Outgoing(
                f"q{i % 3}", f"m{i}".encode(), f"m{i}", i % 10, 100.0 + i, fair_key=f"f{i % 2}"
            )
            for i in range(7)
        ]
        await broker.publish(mixed)
        await broker.publish(mixed[:1])  # a batch of one is uniform
        conn = await asyncpg.connect(postgres_url)
        try:
            rows = await conn.fetch(
                f"SELECT pkey::text AS pkey, message_id, queue, priority, eta, body, fair_key "  # noqa: S608
                f'FROM "{namespace}".messages ORDER BY id'
            )
        finally:
            await conn.close()
    finally:
        await broker.close()
    keys = [r["pkey"] for r in rows]
    assert len(rows) == 20 * 300 + 7 + 1
    assert len(set(keys)) == len(keys)
    assert keys == sorted(keys)
    assert all(uuid.UUID(k) for k in keys)
    uniform = [
        (r["message_id"], r["queue"], r["priority"], r["eta"], r["body"], r["fair_key"])
        for r in rows[:300]
    ]
    assert uniform == [(f"u0.{i}", "u", 3, 5.0, f"u0.{i}".encode(), "k") for i in range(300)]
    got = [tuple(r)[1:] for r in rows[6000:]]
    assert got == [
        (o.message_id, o.queue, o.priority, o.eta, o.body, o.fair_key) for o in [*mixed, mixed[0]]
    ]


@contextlib.asynccontextmanager
async def stale_statistics(
    postgres_url: str,
    namespace: str,
    *,
    backlog: int = 3000,
    planned: Callable[[SQL], Awaitable[object]] | None = None,
) -> AsyncIterator[tuple[SQL, asyncpg.Connection]]:
    """A broker schema whose statistics were taken while the queue was empty (`reltuples = 0`,
    as autovacuum's analyze of an idle queue leaves them), holding `backlog` rows of queue "q"
    since: the planner takes the table for empty, however large it has grown. `planned` runs
    between the analyze and the backlog (to make plans on the empty table that are kept)."""
    from aiotask._postgres import ident
    from aiotask.brokers.postgres import PostgresBroker

    broker = PostgresBroker(postgres_url, Settings(key_prefix=namespace))
    await broker.connect()
    s = ident(namespace)
    conn = await asyncpg.connect(postgres_url)
    try:
        insert = (
            f"INSERT INTO {s}.messages (pkey, message_id, queue, priority, eta, body, fair_key) "  # noqa: S608
            "SELECT gen_random_uuid(), i::text, 'q', 0, 0, 'x', '' FROM generate_series(1, $1) i"
        )
        await conn.execute(insert, 200)
        await conn.execute(f"DELETE FROM {s}.messages")  # noqa: S608
        await conn.execute(f"ANALYZE {s}.messages")
        if planned is not None:
            await planned(broker._sql)
        await conn.execute(insert, backlog)
        yield broker._sql, conn
    finally:
        await conn.close()
        await broker.close()


#: auto_explain on one session: the plan each statement ran, nested ones (a function's) too,
#: sent to the client as a NOTICE (LOAD needs a superuser, as the test server's user is).
AUTO_EXPLAIN = (
    "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
    "SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice"
)


async def test_claims_keep_index_plans_made_on_an_empty_table(
    postgres_url: str, namespace: str
) -> None:
    """The claim functions plan once per session and keep the plan (claims.py). Here the plans
    are made while the table is empty (and analyzed so), then serve a backlog of 100,000 plain
    rows (queue q) and 100,000 keyed ones (queue k, 100 keys); then the table is analyzed with
    that backlog, which makes new plans. Every plan they ran must read `messages` only by index
    ranges and TID scans: no sequential scan (reading the backlog: ~130 ms per claim of 200
    with a plain generic plan), no bitmap scan (the plan made on the large table had one in
    the look-ahead), no JIT (~200 ms a call), and be a generic plan (made once)."""
    worker = await asyncpg.connect(postgres_url)
    slots = fair.slot_names(fair.cursor_name(["k"]))
    notices: list[str] = []

    async def both(sql: SQL) -> None:
        wall = time.time()
        args = (wall, 200, wall + 60, f"me{wall}", 10)
        plain = await worker.fetch(sql.claim, ["q"], *args)
        fairly = await worker.fetch(sql.claim_fair, ["k"], *args, slots)
        if notices:  # not the claims on the empty table
            assert len([r for r in plain if r["id"] is not None]) == 200
            assert len({r["message_id"] for r in fairly}) == 200
            assert {r["turn"] for r in fairly} == set(range(1, 201))  # round-robin

    def ran() -> list[str]:
        plans = [n for n in notices if "Query Text: WITH " in n]  # the functions' statements
        notices.clear()
        return plans

    try:
        async with stale_statistics(postgres_url, namespace, backlog=100_000, planned=both) as (
            sql,
            conn,
        ):
            await conn.execute(
                f'INSERT INTO "{namespace}".messages '  # noqa: S608
                "(pkey, message_id, queue, priority, eta, body, fair_key) SELECT "
                "gen_random_uuid(), i::text, 'k', 0, 0, 'x', 'key' || i % 100 "
                "FROM generate_series(1, 100000) i"
            )
            await worker.execute(AUTO_EXPLAIN)
            worker.add_log_listener(lambda _conn, msg: notices.append(msg.message))
            await both(sql)
            on_empty = ran()
            await conn.execute(f'ANALYZE "{namespace}".messages')
            await both(sql)
            on_backlog = ran()
    finally:
        await worker.close()
    assert len(on_empty) == len(on_backlog) == 2, (on_empty, on_backlog)
    for plan in on_empty + on_backlog:
        assert "Seq Scan on messages" not in plan, plan
        assert "Bitmap" not in plan, plan
        assert "JIT:" not in plan, plan
        assert "Tid Scan on messages m" in plan, plan  # the UPDATE
        assert "Index Scan using messages_claim_key" in plan, plan
        assert "queue = ANY ($1)" in plan, plan  # a generic plan ($1, not the queue names)


@pytest.mark.parametrize("statement", ["ack", "nack_counted", "nack_uncounted", "extend", "bury"])
async def test_settling_probes_the_primary_key_on_stale_statistics(
    postgres_url: str, namespace: str, statement: str
) -> None:
    """On stale statistics, each settling statement must find the held rows through the
    primary key. Joined to the held (id, owner) pairs alone, the planner hashed the whole
    primary key (~20 ms per settle of 200 on a backlog of 100,000)."""
    async with stale_statistics(postgres_url, namespace) as (sql, conn):
        held = ([1, 2, 3], ["me", "me", "me"])
        extra: tuple[object, ...] = {"bury": ("reason", time.time())}.get(
            statement, (time.time(),) if statement != "ack" else ()
        )
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN " + getattr(sql, statement), *held, *extra)
        )
        assert "(id = ANY (" in plan, plan
