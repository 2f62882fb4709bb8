"""Task states, as Celery users know them."""

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
#: States whose result is an exception.
EXCEPTION_STATES: frozenset[str] = frozenset({FAILURE, REVOKED, RETRY})
#: States that `get(propagate=True)` raises for.
PROPAGATE_STATES: frozenset[str] = frozenset({FAILURE, REVOKED})
