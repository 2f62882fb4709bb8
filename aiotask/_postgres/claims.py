"""The broker's claim statements, run as server-side functions (broker migration step 4).

Why functions: asyncpg prepares a statement once per connection, but PostgreSQL chose a
custom plan for the claim on every call (`plan_cache_mode = auto`), planning it again: about
half of a 1-row claim's time (0.42 ms at p50 from the client; 0.21 ms through the function).
A plan made once and kept is only safe if no statistics can make it a bad one: a generic
plan kept from an empty table served a backlog of 100,000 rows with sequential scans (~130 ms
per claim of 200 instead of ~2 ms). A PL/pgSQL function keeps the plan of each statement it
runs for the rest of the session, and its SET clauses are in force while it runs and undone
when it returns (nothing is left on the session, so it works through PgBouncer in transaction
mode; the `synchronous_commit` that NO_SYNC sets for the transaction is not a SET clause and
lasts until the commit):

- `plan_cache_mode = force_generic_plan`: plan once per connection, not on every call;
- `enable_seqscan = off`, `enable_bitmapscan = off`: every read of `messages` here is an
  ordered range or a probe of the claim index, whatever the statistics say of the table's
  size (a bitmap scan reads the whole range before its first row, and unlike an index scan
  never marks dead index entries: re-planned on each call, the look-ahead used one after a
  drain and met the 33,280 dead entries again on every call, 8 ms, until a vacuum);
- `jit = off`: the disabled scans still cost 10^10 in the plan (the `consumers` table has no
  index; a few rows), which would otherwise make PostgreSQL JIT-compile each call (~200 ms);
- the UPDATE finds the picked rows by `ctid`: a TID scan is the only plan for that, where
  `id = ANY(...)` let a plan made on an empty table scan the whole claim index, whose last
  column is `id`, instead of probing the primary key (~350-700 ms per claim of 200).

A row updated and committed elsewhere between the claim's snapshot and its lock (a lapsed
lease handed back or taken over meanwhile) is locked by its new version, whose `ctid` the
UPDATE's snapshot does not see: it stays unclaimed this time, and the look-ahead reports a
skipped row (poll soon), as for a row locked elsewhere.

A step is never edited once released (schema.py): a change to these statements is a new step
that replaces the functions (`CREATE OR REPLACE FUNCTION`, same signatures).
"""

from __future__ import annotations

from aiotask._postgres import NO_SYNC, fair

#: The SET clauses of both functions (see the module docstring).
SETTINGS = (
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
    ("jit", "off"),
)

#: Columns of a claimed row.
_ROW = "id bigint, message_id text, queue text, priority smallint, deliveries integer, body bytea"
#: Parameters of both: queues, now, limit, lease end, owner, max_deliveries (fair: + slots).
_ARGS = "text[], double precision, integer, double precision, text, integer"


def pick(s: str) -> str:
    """The plain claim's rows: up to $3 ready unkeyed rows of the queues $1, locked.

    SKIP LOCKED: concurrent claimers take disjoint rows and never wait on each other. Rows
    whose lease lapsed max_deliveries times are left for the broker's bury_exhausted. Per
    queue (LATERAL), so each is an ordered range of the claim index that stops after `limit`
    rows; `queue = ANY(...)` made the planner read and sort the backlog. Nothing while the
    queues have a keyed row (`keyed`, fair.py).
    """
    return (
        "SELECT p.id, p.ctid FROM unnest($1::text[]) AS qn, LATERAL ("
        f"SELECT id, ctid, priority, eta FROM {s}.messages "
        "WHERE queue = qn AND fair_key = '' AND eta <= $2 "
        "AND (lease_until IS NULL OR deliveries < $6) AND NOT (SELECT yes FROM keyed) "
        "ORDER BY priority DESC, eta, id LIMIT $3 FOR UPDATE SKIP LOCKED) AS p "
        "ORDER BY p.priority DESC, p.eta, p.id LIMIT $3"
    )


#: What a claim sets on a row: leased to $5 until $4 (then ready again), one more delivery.
LEASE = "lease_until = $4, eta = $4, lease_owner = $5, deliveries = m.deliveries + 1"


def claim(s: str) -> str:
    """The plain claim: lease the picked rows in one statement, plus the look-ahead.

    The claim commits without waiting for the WAL flush (NO_SYNC): a claim lost in a server
    crash only means the message is delivered again. Fairness (fair.py): it takes unkeyed rows
    only while the queues have no keyed row; else it claims nothing and its look-ahead row
    says so (9th column, `keyed`), and the consumer claims with the fair claim (round-robin
    across keys) until that finds no keyed row.

    A claim that got fewer than `limit` rows also returns the look-ahead (one more row, id
    NULL): what the broker's `next_due` would say right after it (its own leases' end counts
    as a due time too), so a consumer that drained its queues sleeps without two more round
    trips (an empty claim, then next_due). The look-ahead is not computed otherwise. A picked
    row the UPDATE did not find (see the module docstring) counts as skipped.
    """
    return (
        f"WITH {fair.keyed(s)}, picked AS ({pick(s)}), "
        f"got AS (UPDATE {s}.messages m SET {LEASE} FROM {NO_SYNC} "
        "WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM picked)) "
        "RETURNING m.id, m.message_id, m.queue, m.priority, m.deliveries, m.body) "
        "SELECT id, message_id, queue, priority, deliveries, body, NULL::float8, NULL::bool, "
        "NULL::bool FROM got UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, "
        f"least((SELECT min(eta) FROM {s}.messages WHERE queue = ANY($1::text[]) "
        f"AND eta > $2), (SELECT min(expires_at) FROM {s}.consumers), "
        "(SELECT $4 FROM got LIMIT 1)), "
        f"EXISTS (SELECT 1 FROM {s}.messages WHERE queue = ANY($1::text[]) AND eta <= $2 "
        "AND id NOT IN (SELECT id FROM picked)) "
        "OR (SELECT count(*) FROM picked) > (SELECT count(*) FROM got), (SELECT yes FROM keyed) "
        "WHERE (SELECT count(*) FROM got) < $3"
    )


def _function(s: str, name: str, args: str, returns: str, body: str) -> str:
    settings = " ".join(f"SET {k} = {v}" for k, v in SETTINGS)
    # use_column: the result columns are named like the table's, and mean the table's here
    return (
        f"CREATE OR REPLACE FUNCTION {s}.{name}({args}) RETURNS TABLE ({returns}) "
        f"LANGUAGE plpgsql VOLATILE {settings} AS $body$\n#variable_conflict use_column\n"
        f"BEGIN\nRETURN QUERY {body};\nEND\n$body$;\n"
    )


def functions(s: str) -> str:
    """Broker step 4: `claim` and `claim_fair` in schema `s` (the statements above)."""
    plain = _function(
        s, "claim", _ARGS, f"{_ROW}, due double precision, skipped boolean, keyed boolean", claim(s)
    )
    fairly = _function(
        s,
        "claim_fair",
        f"{_ARGS}, text[]",
        f"{_ROW}, turn bigint",
        fair.claim_sql(s, pick(s), LEASE, NO_SYNC),
    )
    return plain + fairly
