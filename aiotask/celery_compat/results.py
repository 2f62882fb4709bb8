"""Celery's result meta: what Celery's backends store under `celery-task-meta-<id>`.

    {"status": "SUCCESS", "result": 5, "traceback": null, "children": [],
     "date_done": "2026-11-29T20:00:00.123456+00:00", "task_id": "..."}

A failure's `result` is Celery's JSON exception form, `{"exc_type": "ValueError",
"exc_message": ["boom"], "exc_module": "builtins"}`, which `AsyncResult.get()` turns back
into the exception (importing exc_module, else a stand-in class of that name).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from aiotask.exceptions import SerializationError
from aiotask.serializer import ExceptionInfo
from aiotask.states import READY_STATES

#: Celery's result key prefix (its KeyValueStoreBackend.task_keyprefix).
KEY_PREFIX = "celery-task-meta-"
#: States whose `result` carries an exception in Celery's form.
_EXCEPTION_STATES = frozenset({"FAILURE", "RETRY", "REVOKED"})


@dataclass(frozen=True, slots=True)
class Meta:
    """The parts of a result meta aiotask reads back."""

    task_id: str
    state: str
    result: Any
    exception: ExceptionInfo | None
    date_done: float | None


def key(task_id: str) -> str:
    return KEY_PREFIX + task_id


def dumps(meta: Meta) -> bytes:
    """Celery's JSON for one result (date_done only once ready, as Celery writes it)."""
    result = meta.result
    traceback = None
    if meta.exception is not None:
        exc = meta.exception
        module, _, name = exc.type.rpartition(".")
        args = list(exc.args) if exc.args else [exc.message]
        result = {"exc_type": name, "exc_message": args, "exc_module": module or "builtins"}
        traceback = exc.traceback or None
    elif meta.state == "REVOKED":  # Celery raises TaskRevokedError for a revoked/expired task
        result = {
            "exc_type": "TaskRevokedError",
            "exc_message": [str(meta.result or "revoked")],
            "exc_module": "celery.exceptions",
        }
    done = meta.date_done if meta.date_done is not None else datetime.now(UTC).timestamp()
    doc = {
        "status": meta.state,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": (
            datetime.fromtimestamp(done, UTC).isoformat() if meta.state in READY_STATES else None
        ),
        "task_id": meta.task_id,
    }
    try:
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS, default=repr)
    except TypeError as exc:
        raise SerializationError(f"result of task {meta.task_id} is not JSON: {exc}") from exc


def loads(raw: bytes) -> Meta:
    """Parse Celery's JSON result meta (written by Celery or by aiotask)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"stored Celery result is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "status" not in doc:
        raise SerializationError("stored Celery result lacks 'status'")
    state = str(doc["status"])
    result = doc.get("result")
    exception = None
    if state in _EXCEPTION_STATES and isinstance(result, dict) and "exc_type" in result:
        raw_args = result.get("exc_message")
        args = tuple(raw_args) if isinstance(raw_args, list) else (raw_args,)
        module = str(result.get("exc_module") or "builtins")
        exception = ExceptionInfo(
            f"{module}.{result['exc_type']}",
            str(args[0]) if len(args) == 1 else str(args),
            str(doc.get("traceback") or ""),
            args,
        )
        result = None
    return Meta(str(doc.get("task_id") or ""), state, result, exception, _ts(doc.get("date_done")))


def _ts(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
