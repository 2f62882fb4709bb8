"""Monitoring events: typed dataclasses, a batched emitter, and a follower.

A worker started with `-E/--events` (or the `events` setting) records task-received,
task-started, task-succeeded / failed / retried / revoked / rejected and worker-online /
heartbeat / offline; a producer with the `events` setting records task-sent. They travel in
the broker's capped event stream (see `aiotask.brokers.base.EventStream`); `aiotask events`
and `follow()` read them live. See docs/monitoring.md.
"""

from __future__ import annotations

from aiotask.events.emitter import Emitter
from aiotask.events.follow import emit_sent, follow, follow_after
from aiotask.events.model import (
    Event,
    EventType,
    TaskEvent,
    WorkerEvent,
    as_dict,
    decode,
    encode,
)

__all__ = [
    "Emitter",
    "Event",
    "EventType",
    "TaskEvent",
    "WorkerEvent",
    "as_dict",
    "decode",
    "emit_sent",
    "encode",
    "follow",
    "follow_after",
]
