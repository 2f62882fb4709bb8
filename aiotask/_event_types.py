"""The monitoring event types, in a module that imports nothing of aiotask's.

`aiotask.events` re-exports them. The worker names them on its hot paths; the events
machinery itself (the emitter, the follower, the event dataclasses) loads only in a worker
with events on, not in every idle worker's memory (docs/benchmarks.md).
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """Every event type; `task-*` carry a task id, `worker-*` describe one worker."""

    TASK_SENT = "task-sent"
    TASK_RECEIVED = "task-received"
    TASK_STARTED = "task-started"
    TASK_SUCCEEDED = "task-succeeded"
    TASK_FAILED = "task-failed"
    TASK_RETRIED = "task-retried"
    TASK_REVOKED = "task-revoked"
    TASK_REJECTED = "task-rejected"
    WORKER_ONLINE = "worker-online"
    WORKER_HEARTBEAT = "worker-heartbeat"
    WORKER_OFFLINE = "worker-offline"


#: The types a worker records for every task, as plain str: looking an enum member up costs
#: about as much as recording the event, and orjson encodes a str subclass half as fast again.
TASK_RECEIVED: str = EventType.TASK_RECEIVED.value
TASK_STARTED: str = EventType.TASK_STARTED.value
TASK_SUCCEEDED: str = EventType.TASK_SUCCEEDED.value
