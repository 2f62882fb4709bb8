"""Fairness across keys on PostgreSQL: the claim statement that serves a queue's keys in turn.

Schema (broker migration step 3, aiotask/_postgres/schema.py): a `fair_key` column (`''` for
unkeyed messages), the claim index `(queue, fair_key, priority DESC, eta, id)` in place of
`(queue, priority DESC, eta, id)`, and `fair_cursor`, the last key served per queue set.

Each claim stays one statement (one round trip, SKIP LOCKED), run inside a server-side
function (broker step 4, aiotask/_postgres/claims.py, which says why):

- The plain claim (claims.py) starts with `keyed`: has any row of these queues a key? One
  probe of the claim index per queue (`fair_key > ''`). If not, it claims by priority then
  age (`fair_key = ''` keeps the index order usable): no cursor, no lock, no skip scan. If so,
  it claims nothing and its look-ahead row (id NULL) says so in a 9th column, `keyed` (the
  consumer ignores that row's look-ahead); the consumer then claims this queue set with the
  fair statement below until that finds no keyed row (it then runs the plain pick, its rows
  marked turn 0, and the consumer goes back to the plain claim). A fair claim returns no
  look-ahead: an idle consumer asks `next_due` when to look again.
- A queue set has up to CURSOR_SLOTS cursor rows ("slots"; the first is named by the queues
  alone). The fair statement locks the first slot no other claim holds (`FOR UPDATE SKIP
  LOCKED`), so concurrent fair claims run side by side, each rotating its own slot, instead
  of queueing on one row lock (4 consumers draining a keyed queue took 1.4-1.6x the
  unkeyed time with one cursor). A lone consumer always gets the first slot: exact turns.
  When every existing slot is held, it creates the next one, starting from the first slot's
  position; when all CURSOR_SLOTS are held, it claims from that position without moving a
  cursor. Each slot visits every key in turn, so the keys share the claims of all of them.
  Rows another claim holds are skipped (`FOR UPDATE SKIP LOCKED` on the messages).
- A recursive CTE skip-scans the index for the keys after the cursor and, wrapping around,
  from the first key up to the cursor (one index probe per key, at most `limit` each way);
  the unkeyed rows are the key `''` (so they take a turn too). Keys with no ready row drop out.
- A LATERAL probe per key takes its share (`limit / keys`, rounded up) of ready rows by the
  usual order, `FOR UPDATE SKIP LOCKED`; the rows are numbered round-robin (every key's first,
  then every key's second, ...) and the first `limit` are leased. The cursor moves to the key
  of the last one, in the same statement.

Costs: a plain claim does one index probe more than before. A fair claim costs one or two
probes per key visited plus its rows, and a probe of the slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

#: How a queue set names its cursor row (queue names in order; the unit separator between).
SEPARATOR = "\x1f"
#: Cursor rows per queue set: how many fair claims of one set run at once, not one by one.
CURSOR_SLOTS = 8
#: Between a queue set's name and the number of a slot after the first.
SLOT_SEPARATOR = "\x1e"


def cursor_name(queues: Sequence[str]) -> str:
    """The cursor row of a queue set: one per set, whatever order the worker lists them."""
    return SEPARATOR.join(sorted(set(queues)))


def slot_names(name: str) -> list[str]:
    """A queue set's cursor slots in the order claims take them (the first is `name`)."""
    return [name] + [f"{name}{SLOT_SEPARATOR}{n}" for n in range(1, CURSOR_SLOTS)]


def keyed(s: str) -> str:
    """The CTE `keyed`: has any row of the queues $1 a fairness key? One probe of the claim
    index per queue (keyed rows sort after the unkeyed ones)."""
    return (
        f"keyed AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM {s}.messages "
        "WHERE queue = ANY($1::text[]) AND fair_key > '') AS yes)"
    )


def _next_key(s: str, queue: str, after: str) -> str:
    """The first key of `queue` above `after`: one descent of the claim index."""
    return (
        f"(SELECT fair_key FROM {s}.messages WHERE queue = {queue} AND fair_key > {after} "
        "ORDER BY fair_key LIMIT 1)"
    )


def claim_sql(s: str, plain: str, lease_set: str, no_sync: str) -> str:
    """The fair claim statement for schema `s`.

    Parameters: $1 queues, $2 now, $3 limit, $4 lease end, $5 owner, $6 max_deliveries,
    $7 the cursor slots (slot_names). `plain` is the plain claim's row pick (by priority then
    age, guarded by `keyed`), `lease_set` the SET list that leases a row and `no_sync` the FROM
    item that makes the commit asynchronous, all three from claims.py. Returns (id,
    message_id, queue, priority, deliveries, body, turn): `turn` orders the rows of a fair
    claim from 1; 0 means no keyed row was found and the plain pick ran. The UPDATE finds
    its rows by their `ctid` (a TID scan, whatever the statistics: see claims.py).
    """
    ready = "eta <= $2 AND (lease_until IS NULL OR deliveries < $6)"
    return (
        f"WITH RECURSIVE {keyed(s)}, "
        f"plain AS (SELECT id, ctid, 0::bigint AS turn FROM ({plain}) AS p), "
        # the first cursor slot no other claim holds, locked; or else the first slot not
        # made yet (to make); then the keys around its position
        f"cur AS MATERIALIZED (SELECT queues AS slot, last_key FROM {s}.fair_cursor "
        "WHERE queues = ANY($7::text[]) AND (SELECT yes FROM keyed) "
        "ORDER BY queues LIMIT 1 FOR UPDATE SKIP LOCKED), "
        "slot AS MATERIALIZED (SELECT coalesce((SELECT slot FROM cur), (SELECT n "
        f"FROM unnest($7::text[]) WITH ORDINALITY AS u(n, o) WHERE NOT EXISTS (SELECT 1 FROM "
        f"{s}.fair_cursor c WHERE c.queues = u.n) ORDER BY o LIMIT 1)) AS name), "
        "pos AS MATERIALIZED (SELECT coalesce((SELECT last_key FROM cur), (SELECT last_key "
        f"FROM {s}.fair_cursor WHERE queues = ($7::text[])[1]), '') AS v), "
        f"after(q, k, n) AS (SELECT q, {_next_key(s, 'q', 'pos.v')}, 1 "
        "FROM unnest($1::text[]) AS q, pos WHERE (SELECT yes FROM keyed) "
        f"UNION ALL SELECT a.q, {_next_key(s, 'a.q', 'a.k')}, a.n + 1 FROM after a "
        "WHERE a.k IS NOT NULL AND a.n < $3), "
        f"wrap(q, k, n) AS (SELECT q, (SELECT min(fair_key) FROM {s}.messages WHERE queue = q), 1 "
        "FROM unnest($1::text[]) AS q WHERE (SELECT yes FROM keyed) "
        f"UNION ALL SELECT w.q, {_next_key(s, 'w.q', 'w.k')}, w.n + 1 FROM wrap w, pos "
        "WHERE w.k < pos.v AND w.n < $3), "
        # a key with nothing ready (all delayed or in flight) takes no turn nor share; a
        # scalar subquery, not EXISTS, so the planner keeps it an index probe per key
        "turns AS MATERIALIZED (SELECT q, k, wrapped FROM ("
        "SELECT q, k, false AS wrapped FROM after WHERE k IS NOT NULL "
        "UNION ALL SELECT q, k, true FROM wrap, pos WHERE k <= pos.v) AS t "
        f"WHERE (SELECT true FROM {s}.messages WHERE queue = t.q AND fair_key = t.k "
        f"AND {ready} LIMIT 1)), "
        "share AS MATERIALIZED (SELECT greatest(1, ceil($3::float8 / "
        "nullif(least(count(*), $3), 0)))::int AS n FROM turns), "
        "heads AS (SELECT t.q, t.k, t.wrapped, h.id, h.ctid, row_number() OVER ("
        "PARTITION BY t.q, t.k ORDER BY h.priority DESC, h.eta, h.id) AS rank "
        "FROM turns t CROSS JOIN LATERAL ("
        f"SELECT id, ctid, priority, eta FROM {s}.messages WHERE queue = t.q AND fair_key = t.k "
        f"AND {ready} ORDER BY priority DESC, eta, id LIMIT (SELECT n FROM share) "
        "FOR UPDATE SKIP LOCKED) h), "
        "chosen AS (SELECT id, ctid, k, row_number() OVER (ORDER BY rank, wrapped, k, q) AS turn "
        "FROM heads ORDER BY turn LIMIT $3), "
        f"moved AS (INSERT INTO {s}.fair_cursor (queues, last_key) "
        "SELECT slot.name, k FROM chosen, slot WHERE slot.name IS NOT NULL "
        "ORDER BY turn DESC LIMIT 1 "
        "ON CONFLICT (queues) DO UPDATE SET last_key = excluded.last_key), "
        "picked AS (SELECT id, ctid, turn FROM plain UNION ALL SELECT id, ctid, turn FROM chosen) "
        f"UPDATE {s}.messages m SET {lease_set} FROM picked, {no_sync} WHERE m.ctid = picked.ctid "
        "RETURNING m.id, m.message_id, m.queue, m.priority, m.deliveries, m.body, picked.turn"
    )
