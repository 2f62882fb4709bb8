"""The single error hierarchy of aiotask.

```
AiotaskError
├── NotRegistered            a task name no App in this process knows
├── TaskError                a task failed remotely and its type cannot be imported here
├── ResultTimeout            (also TimeoutError) get(timeout=...) ran out
├── Retry                    control flow: re-queue this task (raised by ctx.retry())
├── Reject                   control flow: reject this message (requeue or dead-letter)
├── SoftTimeLimitExceeded    raised inside a task at its soft time limit
├── TimeLimitExceeded        a task ran past its hard time limit and was stopped
├── TaskRevoked              a task was revoked before or while it ran
├── WorkerLost               the process running a task died under it
├── ConfigurationError       a bad setting, URL or option
├── SerializationError       a value cannot be encoded or decoded
│   ├── MessageTooLarge      an encoded message (or result) is over max_message_size
│   │                        (max_result_size); nothing was sent (stored)
│   └── ProtocolError        a message envelope is malformed or of an unknown version
├── BrokerConnectionError    a broker or backend cannot be reached
├── SecurityError            a signature check failed
│   └── ResultSignatureError a stored result is unsigned or forged (result_signing)
└── SyncCallInEventLoop      (also RuntimeError) the sync API called on an event loop's thread
```

Every message says what happened and what to do; URLs in messages pass through `redact()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "AiotaskError",
    "BrokerConnectionError",
    "ConfigurationError",
    "MessageTooLarge",
    "NotRegistered",
    "ProtocolError",
    "Reject",
    "ResultSignatureError",
    "ResultTimeout",
    "Retry",
    "SecurityError",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "SyncCallInEventLoop",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "WorkerLost",
]


class AiotaskError(Exception):
    """Root of every error aiotask raises."""


class NotRegistered(AiotaskError):
    """A task name that no registered task answers to."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"task {name!r} is not registered: import the module that defines it in the "
            "worker (-A module:app) or check the name"
        )
        self.name = name


class TaskError(AiotaskError):
    """A remote failure whose exception type cannot be rebuilt in this process."""

    def __init__(self, message: str, *, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback


class ResultTimeout(AiotaskError, TimeoutError):
    """`AsyncResult.get(timeout=...)` waited that long and the task is not ready."""


class Retry(AiotaskError):
    """Raised (via `ctx.retry()`) to re-queue the current task with retries + 1."""

    def __init__(
        self,
        exc: BaseException | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__(f"retry requested: {exc!r}" if exc else "retry requested")
        self.exc = exc
        self.countdown = countdown
        self.eta = eta
        self.max_retries = max_retries


class Reject(AiotaskError):
    """Raised by a task to refuse its message: requeue it, or dead-letter it."""

    def __init__(self, reason: str = "rejected by task", *, requeue: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


class SoftTimeLimitExceeded(AiotaskError):
    """The task passed its soft time limit; it may clean up before the hard limit."""


class TimeLimitExceeded(AiotaskError):
    """The task passed its hard time limit and was stopped."""


class TaskRevoked(AiotaskError):
    """The task was revoked; it did not run, or was terminated."""


class WorkerLost(AiotaskError):
    """The worker process running the task died (killed, crashed, out of memory)."""


class ConfigurationError(AiotaskError):
    """A setting, URL or option is invalid; the message says which and how to fix it."""


class SerializationError(AiotaskError):
    """A value cannot be encoded for the wire, or bytes cannot be decoded."""


class MessageTooLarge(SerializationError):
    """A message encodes to more bytes than `max_message_size`; nothing was sent. Also the
    stored error of a task whose result is over `max_result_size` (`what="result"`)."""

    def __init__(self, task: str, size: int, limit: int, what: str = "message") -> None:
        if what == "result":
            text = (
                f"task {task!r} returned a result of {size} bytes, over max_result_size "
                f"({limit} bytes); it was not stored. Return a reference (a key, a path, a "
                "URL) instead of the data, or raise max_result_size (0: no cap)"
            )
        else:
            text = (
                f"cannot send task {task!r}: its message is {size} bytes, over "
                f"max_message_size ({limit} bytes); nothing was sent. Pass a reference (a key, "
                "a path, a URL) instead of the data, or raise max_message_size (0: no cap)"
            )
        super().__init__(text)
        self.task = task
        self.what = what
        self.size = size
        self.limit = limit


class ProtocolError(SerializationError):
    """A message envelope is malformed or has a version this code does not speak."""


class MessageRefused(ProtocolError):
    """A well-formed message this worker will not run (e.g. a Celery chord): dead-lettered with
    the reason and recorded FAILURE under its task id, so no caller waits for it forever."""

    def __init__(self, message: str, task_id: str = "", task: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task = task


class BrokerConnectionError(AiotaskError):
    """A broker or result backend cannot be reached."""


class SecurityError(AiotaskError):
    """Something read from a broker or backend failed its signature check: someone other than
    a key holder wrote it, or a key is missing here."""


class ResultSignatureError(SecurityError):
    """With `result_signing`, a stored result that is unsigned, does not verify, or was signed
    for another task; its value is never returned."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(
            f"result of task {task_id} refused: {reason}. With result_signing only records "
            "signed by a worker holding one of signing_keys are read; check that every "
            "worker has result_signing and the keys, or whether someone else writes to the "
            "result backend"
        )
        self.task_id = task_id
        self.reason = reason


class SyncCallInEventLoop(AiotaskError, RuntimeError):
    """The sync API (`delay`, `send_task_sync`, `SyncResult`) was called from a thread that
    runs an event loop: it would block that loop (or deadlock); await the async API instead."""
