"""Outcomes of one execution (a closed sum type) and the pure classification of exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiotask.exceptions import Reject, TaskRevoked
from aiotask.retry import RetryDecision, RetryPolicy, decide, final_exception

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.backends.base import EncodedResult
    from aiotask.brokers.base import Delivery
    from aiotask.canvas.runtime import Finished
    from aiotask.protocol import Message


# Treated as immutable, not frozen (as protocol.Message): a frozen dataclass's __init__ sets
# each field through object.__setattr__, and one of these is made per task.
@dataclass(slots=True)
class Succeeded:
    value: Any


@dataclass(slots=True)
class Failed:
    exc: BaseException


@dataclass(slots=True)
class Retrying:
    decision: RetryDecision


@dataclass(slots=True)
class Rejected:
    requeue: bool
    reason: str


@dataclass(slots=True)
class Revoked:
    reason: str


Outcome = Succeeded | Failed | Retrying | Rejected | Revoked


def classify(exc: BaseException, policy: RetryPolicy, retries: int) -> Outcome:
    """What an exception raised by a task means: retry, fail, reject or revoked."""
    if isinstance(exc, Reject):
        return Rejected(exc.requeue, exc.reason)
    if isinstance(exc, TaskRevoked):
        return Revoked(str(exc) or "revoked")
    decision = decide(policy, exc, retries)
    if decision is not None:
        return Retrying(decision)
    return Failed(final_exception(exc))


Action = Literal["ack", "requeue", "dead"]


@dataclass(slots=True)
class Settlement:
    """What the settler must do for one delivery, in order: store, publish, then ack/nack."""

    delivery: Delivery
    action: Action = "ack"
    store: EncodedResult | None = None
    #: a tuple by default: no new list per task (most publish nothing)
    publish: Sequence[Message] = ()
    reason: str = ""
    #: canvas: the finished task whose follow-ups the settler derives (canvas/runtime.py)
    finished: Finished | None = None
    #: unique/debounce locks (name, owner) released before the ack (worker/_coordination.py)
    release: tuple[tuple[str, str], ...] = ()
    #: the result could not be stored (not encodable, or over max_result_size): stored as
    #: this FAILURE instead, and the canvas fails on with it
    store_error: BaseException | None = None
