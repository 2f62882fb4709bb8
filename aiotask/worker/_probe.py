"""The worker's observation seam: what a monitor (metrics) sees of its internals.

The worker holds `probe = None` when nothing watches, so the per-task cost is one `is None`
check. Middleware cannot see these: the outcome (retry, failure, rejection) is classified
after `around_task` returns, and queue wait, dead letters and the buffers are the worker's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.brokers.base import Delivery
    from aiotask.protocol import Message
    from aiotask.worker import Worker

#: outcome names passed to Probe.finished (the `state` label of aiotask_tasks_total)
SUCCEEDED, FAILED, RETRIED, REJECTED, REVOKED, EXPIRED = (
    "succeeded",
    "failed",
    "retried",
    "rejected",
    "revoked",
    "expired",
)


class Probe:
    """Subclass and override; every hook is a cheap, synchronous no-op by default."""

    def attached(self, worker: Worker) -> None:
        """The worker was built with this probe (read its gauges from here on)."""

    def received(self, deliveries: Sequence[Delivery]) -> None:
        """Deliveries arrived from the broker (before decoding)."""

    def started(self, delivery: Delivery, message: Message) -> None:
        """A task is about to run."""

    def finished(
        self, delivery: Delivery, message: Message, state: str, seconds: float | None
    ) -> None:
        """A task ended with `state`; `seconds` is its run time (None: it never ran)."""

    def refused(self, delivery: Delivery, reason: str) -> None:
        """A body was refused before decoding: `reason` is bad-signature, too-large or
        undecodable (it is dead-lettered too, and counted by `dead_lettered` then)."""

    def dead_lettered(self, deliveries: Sequence[Delivery]) -> None:
        """The worker dead-lettered these (undecodable, unknown task, rejected)."""
