"""Task states, as Celery users know them.

RECEIVED exists (as in Celery) but the result backend never stores it: writing it when a worker
takes a message would cost a backend write per task on the hot path (and could race with
STARTED/SUCCESS written right after). It is a state of the task-received event, which the
dashboard and `aiotask events` show; `AsyncResult.state()` says PENDING for "queued or held by a
worker", and STARTED (with `task_track_started`) once it runs.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A task's lifecycle state; custom states (from `update_state`) are plain strings."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


PENDING = State.PENDING
RECEIVED = State.RECEIVED
STARTED = State.STARTED
RETRY = State.RETRY
SUCCESS = State.SUCCESS
FAILURE = State.FAILURE
REVOKED = State.REVOKED

#: States after which a task never changes again (first writer wins).
READY_STATES: frozenset[str] = frozenset({SUCCESS, FAILURE, REVOKED})
