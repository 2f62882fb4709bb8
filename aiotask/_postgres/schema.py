"""The tables of the PostgreSQL broker and backend, as numbered migrations per component.

`migrate` brings one app's schema (named by key_prefix) to the newest version: it takes a
transaction-scoped advisory lock, so many workers starting at once apply each step exactly
once, reads the version from `schema_versions`, and applies the missing steps in the same
transaction (DDL is transactional in PostgreSQL: a failed step leaves nothing half done).
Running it again is a no-op. A step is never edited once released; changes are new steps.

Design notes (see docs/postgres.md):
- `messages.eta` is when a row is next claimable; a claim moves it to the lease's end, so a
  lapsed lease is simply a ready row again and one index serves claims and reclaims.
- `fillfactor` below 100 leaves room in each page, so the claim's and extend's UPDATEs can
  stay on the page; acked rows are DELETEd, and autovacuum reclaims them (no hot counter row).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._postgres import claims, ident

if TYPE_CHECKING:
    import asyncpg

#: component -> its steps, in order; step n (1-based) brings the component to version n.
#: `{s}` is the quoted schema name.
STEPS: dict[str, list[str]] = {
    "broker": [
        """
        CREATE TABLE {s}.messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            pkey uuid NOT NULL UNIQUE,
            message_id text NOT NULL,
            queue text NOT NULL,
            priority smallint NOT NULL DEFAULT 0,
            eta double precision NOT NULL,
            lease_until double precision,
            lease_owner text,
            deliveries integer NOT NULL DEFAULT 0,
            body bytea NOT NULL
        ) WITH (fillfactor = 80);
        CREATE INDEX messages_claim ON {s}.messages (queue, priority DESC, eta, id);
        CREATE INDEX messages_leased ON {s}.messages (lease_until)
            WHERE lease_until IS NOT NULL;
        CREATE TABLE {s}.dead_letters (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_id text NOT NULL,
            queue text NOT NULL,
            priority smallint NOT NULL,
            deliveries integer NOT NULL,
            body bytea NOT NULL,
            reason text NOT NULL,
            died_at double precision NOT NULL
        );
        CREATE INDEX dead_letters_queue ON {s}.dead_letters (queue, id);
        CREATE TABLE {s}.consumers (
            owner text PRIMARY KEY,
            expires_at double precision NOT NULL
        );
        """,
        # 2: the monitoring event stream (capped by its writers)
        """
        CREATE TABLE {s}.events (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            body bytea NOT NULL
        );
        """,
        # 3: fairness across keys (aiotask/_postgres/fair.py): messages.fair_key, the claim
        # index by (queue, fair_key, ...) in place of messages_claim, the cursor per queue set.
        # A column with a constant default is added without rewriting the table; the new
        # index is built under the migration's lock (writes wait for it on a big backlog).
        """
        ALTER TABLE {s}.messages ADD COLUMN IF NOT EXISTS fair_key text NOT NULL DEFAULT '';
        CREATE INDEX IF NOT EXISTS messages_claim_key
            ON {s}.messages (queue, fair_key, priority DESC, eta, id);
        DROP INDEX IF EXISTS {s}.messages_claim;
        CREATE TABLE IF NOT EXISTS {s}.fair_cursor (
            queues text PRIMARY KEY,
            last_key text NOT NULL
        );
        """,
        # 4: the claim and the fair claim as functions (aiotask/_postgres/claims.py): planned
        # once per connection, with planner settings that keep the index plan whatever the
        # statistics. Needs PostgreSQL 12 (plan_cache_mode).
        claims.functions("{s}"),
    ],
    "backend": [
        """
        CREATE TABLE {s}.results (
            task_id text PRIMARY KEY,
            state text NOT NULL,
            ready boolean NOT NULL,
            data bytea NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE INDEX results_expires ON {s}.results (expires_at);
        CREATE TABLE {s}.groups (
            group_id text PRIMARY KEY,
            size integer NOT NULL,
            body bytea,
            fired smallint NOT NULL DEFAULT 0,
            failed smallint NOT NULL DEFAULT 0,
            expires_at double precision NOT NULL
        );
        CREATE INDEX groups_expires ON {s}.groups (expires_at);
        CREATE TABLE {s}.group_members (
            group_id text NOT NULL,
            idx integer NOT NULL,
            state text NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (group_id, idx)
        );
        CREATE TABLE {s}.revoked (
            task_id text PRIMARY KEY,
            expires_at double precision NOT NULL
        );
        CREATE TABLE {s}.control (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            payload bytea NOT NULL,
            sent_at double precision NOT NULL
        );
        CREATE TABLE {s}.workers (
            name text PRIMARY KEY,
            record bytea NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE TABLE {s}.replies (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            reply_to text NOT NULL,
            payload bytea NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE INDEX replies_to ON {s}.replies (reply_to);
        CREATE TABLE {s}.beat_entries (
            app text NOT NULL, name text NOT NULL, blob bytea NOT NULL,
            paused boolean NOT NULL DEFAULT false, dynamic boolean NOT NULL DEFAULT true,
            PRIMARY KEY (app, name));
        CREATE TABLE {s}.beat_marks (
            app text NOT NULL, name text NOT NULL, mark bigint NOT NULL, state bytea,
            PRIMARY KEY (app, name));
        CREATE TABLE {s}.beat_skips (
            app text NOT NULL, name text NOT NULL, reason text NOT NULL, n bigint NOT NULL,
            PRIMARY KEY (app, name, reason));
        """,
        # 2: unique/debounce locks and the coordination store (GCRA state, slot leases).
        # Times are epoch seconds on the server's clock (clock_timestamp()), so producers and
        # workers with skewed clocks share one timeline. IF NOT EXISTS: a hand-made table of
        # the same name (a half-applied manual upgrade) does not stop the step. coord_rate's
        # seen/granted are the last request's time and verdict (RETURNING cannot see the old row).
        """
        CREATE TABLE IF NOT EXISTS {s}.locks (
            name text PRIMARY KEY,
            owner text NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE INDEX IF NOT EXISTS locks_expires ON {s}.locks (expires_at);
        CREATE TABLE IF NOT EXISTS {s}.coord_rate (
            name text PRIMARY KEY,
            tat double precision NOT NULL,
            seen double precision NOT NULL,
            granted boolean NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {s}.coord_slots (
            name text NOT NULL,
            token text NOT NULL,
            expires_at double precision NOT NULL,
            PRIMARY KEY (name, token)
        );
        CREATE INDEX IF NOT EXISTS coord_slots_expires ON {s}.coord_slots (expires_at);
        """,
        # 3: the dashboard's task history (aiotask/history.py)
        """
        CREATE TABLE IF NOT EXISTS {s}.task_history (
            app text NOT NULL, id text NOT NULL, name text NOT NULL, state text NOT NULL,
            worker text NOT NULL, updated_at double precision NOT NULL, root_id text,
            group_id text, text text NOT NULL, blob bytea NOT NULL, PRIMARY KEY (app, id));
        CREATE INDEX IF NOT EXISTS task_history_updated ON {s}.task_history (app, updated_at);
        CREATE INDEX IF NOT EXISTS task_history_state ON {s}.task_history (app, state, updated_at);
        CREATE INDEX IF NOT EXISTS task_history_worker
            ON {s}.task_history (app, worker, updated_at);
        CREATE INDEX IF NOT EXISTS task_history_root ON {s}.task_history (app, root_id);
        CREATE INDEX IF NOT EXISTS task_history_group ON {s}.task_history (app, group_id);
        """,
        # 4: the event stream position the task history was written up to (resuming)
        """
        CREATE TABLE IF NOT EXISTS {s}.task_history_cursor (
            app text PRIMARY KEY, cursor text NOT NULL);
        """,
    ],
}

_VERSIONS = """
CREATE TABLE IF NOT EXISTS {s}.schema_versions (
    component text PRIMARY KEY,
    version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def newest(component: str) -> int:
    """The version `migrate` brings `component` to."""
    return len(STEPS[component])


async def migrate(conn: asyncpg.Connection, schema: str, component: str) -> tuple[int, int]:
    """Apply the missing steps of `component` in `schema`; returns (version before, after)."""
    s = ident(schema)
    async with conn.transaction():
        # One lock per (schema, component): concurrent starters wait, then find it done.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"aiotask:{schema}:{component}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(_VERSIONS.format(s=s))
        before = await conn.fetchval(
            f"SELECT version FROM {s}.schema_versions WHERE component = $1",
            component,
        )
        before = int(before or 0)
        steps = STEPS[component]
        for sql in steps[before:]:
            await conn.execute(sql.format(s=s))
        if len(steps) > before:
            await conn.execute(
                f"INSERT INTO {s}.schema_versions (component, version) VALUES ($1, $2) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
                "applied_at = now()",
                component,
                len(steps),
            )
    return before, len(steps)


async def version(conn: asyncpg.Connection, schema: str, component: str) -> int:
    """The applied version of `component` in `schema` (0: never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{ident(schema)}.schema_versions")
    if exists is None:
        return 0
    got = await conn.fetchval(
        f"SELECT version FROM {ident(schema)}.schema_versions WHERE component = $1",
        component,
    )
    return int(got or 0)
