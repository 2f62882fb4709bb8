"""Task states, as Celery users know them.

There is no RECEIVED: writing it when a worker takes a message would cost a backend write per
task on the hot path (and could race with STARTED/SUCCESS written right after); PENDING covers
"queued or held by a worker", STARTED (with `task_track_started`) says it is running.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A task's lifecycle state; custom states (from `update_state`) are plain strings."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


PENDING = State.PENDING
STARTED = State.STARTED
RETRY = State.RETRY
SUCCESS = State.SUCCESS
FAILURE = State.FAILURE
REVOKED = State.REVOKED

#: States after which a task never changes again (first writer wins).
READY_STATES: frozenset[str] = frozenset({SUCCESS, FAILURE, REVOKED})
