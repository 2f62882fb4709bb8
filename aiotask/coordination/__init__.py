"""Cluster-wide coordination of tasks: global (and keyed) rate limits, per-key concurrency
limits, unique tasks and debounce.

The arithmetic is pure (`ratelimit.gcra`, `concurrency.MemorySlots`, `unique` key derivation);
the state lives in the result backend (`backend.coordination_store(app)` for budgets and slots,
`backend.lock_store()` for unique and debounce locks), so every worker and producer that shares
a backend shares it. The worker side (`gate.Gates`) waits on timers, never in a worker slot.
"""

from __future__ import annotations
