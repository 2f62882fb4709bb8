"""Celery task protocol v2 <-> aiotask Message, over kombu's transport envelope.

Protocol v2 keeps the task's metadata in the message headers (task, id, eta, expires, retries,
root_id, parent_id, group, ...) and the call in the body: `[args, kwargs, embed]`, where embed
holds `callbacks`, `errbacks`, `chain` (remaining steps, next one last) and `chord`.

What cannot be run faithfully is refused here with a ProtocolError naming it (the worker
dead-letters the message with that reason): protocol v1, non-JSON serializers, chords, and
canvas nested inside a chain step. Nothing is half-run and nothing hangs waiting for it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from aiotask.celery_compat.envelope import JSON, Envelope, loads
from aiotask.exceptions import MessageRefused, ProtocolError, SerializationError
from aiotask.protocol import Message

#: Call options a Celery signature may carry that mean the same here; others are dropped.
_STEP_OPTIONS = ("queue", "priority")


def decode(raw: bytes) -> Message:
    """kombu envelope bytes -> Message; ProtocolError for what this worker will not run."""
    env = loads(raw)
    headers = env.headers
    if "task" not in headers or "id" not in headers:
        raise ProtocolError(
            "Celery task protocol 1 (or not a task message): set task_protocol=2 on the producer"
        )
    if env.content_type != JSON:
        raise ProtocolError(
            f"Celery message serialized as {env.content_type!r}: only JSON is understood "
            "(set task_serializer='json' and accept_content=['json'] on the producer)"
        )
    try:
        body = orjson.loads(env.body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"Celery message body is not JSON: {exc}") from None
    if not isinstance(body, list) or len(body) != 3:
        raise ProtocolError("Celery message body is not [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ProtocolError("Celery message args/kwargs have the wrong type")
    embed = embed if isinstance(embed, dict) else {}
    task, ident = str(headers["task"]), str(headers["id"])
    if embed.get("chord"):
        raise MessageRefused(
            f"task {task} [{ident}] is part of a Celery chord: chords are not run on aiotask "
            "workers (route the chord's header tasks to Celery workers)",
            ident,
            task,
        )
    try:
        chain = [_step(sig, task) for sig in embed.get("chain") or []]
        links = [_step(sig, task) for sig in embed.get("callbacks") or []]
        errbacks = [_step(sig, task) for sig in embed.get("errbacks") or []]
    except ProtocolError as exc:
        raise MessageRefused(str(exc), ident, task) from None
    return Message(
        ident,
        task,
        args=args,
        kwargs=kwargs,
        queue=env.routing_key or "celery",
        priority=env.priority,
        eta=_timestamp(headers.get("eta"), "eta"),
        expires=_timestamp(headers.get("expires"), "expires"),
        retries=int(headers.get("retries") or 0),
        root_id=_opt_str(headers.get("root_id")),
        parent_id=_opt_str(headers.get("parent_id")),
        chain=chain,
        links=links,
        errbacks=errbacks,
        ignore_result=bool(headers.get("ignore_result")),
    )


def encode(message: Message) -> bytes:
    """Message -> kombu envelope bytes in protocol v2, as `Celery.send_task` writes them."""
    m = message
    if m.chord is not None or m.group_id is not None:
        raise SerializationError(
            f"task {m.task}: groups and chords cannot be sent in Celery format"
        )
    embed = {
        "callbacks": [_signature(s, m.task) for s in m.links] or None,
        "errbacks": [_signature(s, m.task) for s in m.errbacks] or None,
        "chain": [_signature(s, m.task) for s in m.chain] or None,
        "chord": None,
    }
    headers: dict[str, Any] = {
        "lang": "py",
        "task": m.task,
        "id": m.id,
        "shadow": None,
        "eta": _iso(m.eta),
        "expires": _iso(m.expires),
        "group": None,
        "group_index": None,
        "retries": m.retries,
        "timelimit": [None, None],
        "root_id": m.root_id or m.id,
        "parent_id": m.parent_id,
        "argsrepr": repr(tuple(m.args)),
        "kwargsrepr": repr(m.kwargs),
        "origin": "aiotask",
        "ignore_result": m.ignore_result,
    }
    try:
        body = orjson.dumps([m.args, m.kwargs, embed], option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise SerializationError(f"task {m.task!r}: cannot encode message: {exc}") from exc
    env = Envelope(
        body=body,
        headers=headers,
        correlation_id=m.id,
        priority=m.priority,
        exchange=m.queue,
        routing_key=m.queue,
    )
    return env.dumps()


def _step(sig: object, task: str) -> dict[str, Any]:
    """A Celery signature dict (a chain step, callback or errback) -> an aiotask task step."""
    if not isinstance(sig, dict) or not isinstance(sig.get("task"), str):
        raise ProtocolError(f"task {task}: a canvas step is not a Celery signature: {sig!r}")
    if sig.get("subtask_type"):
        raise ProtocolError(
            f"task {task}: a Celery {sig['subtask_type']} inside a chain or callback is not run "
            "on aiotask workers (only plain task signatures are)"
        )
    options = sig.get("options") or {}
    if options.get("link") or options.get("link_error") or options.get("chord"):
        raise ProtocolError(
            f"task {task}: step {sig['task']} has its own callbacks or chord; not supported"
        )
    return {
        "t": "task",
        "id": str(options.get("task_id") or uuid.uuid4()),
        "task": sig["task"],
        "args": list(sig.get("args") or []),
        "kwargs": dict(sig.get("kwargs") or {}),
        "opts": {k: options[k] for k in _STEP_OPTIONS if options.get(k) is not None},
        "imm": bool(sig.get("immutable")),
        "links": [],
        "errbacks": [],
    }


def _signature(step: object, task: str) -> dict[str, Any]:
    """An aiotask task step -> the Celery signature dict a Celery worker rebuilds."""
    if not isinstance(step, dict) or step.get("t") != "task" or step.get("links"):
        raise SerializationError(
            f"task {task}: only chains of plain tasks can be sent in Celery format"
        )
    options: dict[str, Any] = {"task_id": step["id"], **step.get("opts", {})}
    return {
        "task": step["task"],
        "args": step["args"],
        "kwargs": step["kwargs"],
        "options": options,
        "subtask_type": None,
        "immutable": step["imm"],
        "chord_size": None,
    }


def _timestamp(value: object, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        raise ProtocolError(f"Celery header {name}={value!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:  # Celery writes naive times in UTC (enable_utc)
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)
