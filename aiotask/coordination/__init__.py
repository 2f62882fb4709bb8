"""Cluster-wide coordination of tasks: global (and keyed) rate limits, per-key concurrency limits.

The arithmetic is pure (`ratelimit.gcra`, `concurrency.MemorySlots`); the state lives in the
result backend's coordination store (`backend.coordination_store(app)`), so every worker that
shares a backend shares the budgets. The worker side (`gate.Gates`) waits on timers, never
in a worker slot.
"""

from __future__ import annotations
