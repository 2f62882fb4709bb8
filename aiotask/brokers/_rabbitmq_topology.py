"""RabbitMQ names, queue arguments, delay buckets and delivery counting for brokers/rabbitmq.py.

Pure functions over plain values (no aio-pika), so the rules are testable without a server.
Every queue goes through the default exchange, routed by its name:

    {prefix}.{queue}             work queue: durable, x-max-priority, dead-letters to .dead
    {prefix}.{queue}.dead        dead letters; our reason travels in the x-aiotask-reason header
    {prefix}.{queue}.delay.{ms}  one per delay bucket: x-message-ttl={ms}, dead-letters into the
                                 work queue, deleted by RabbitMQ after x-expires of disuse

A queue's arguments are fixed when it is first declared; see docs/rabbitmq.md.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiotask.brokers._common import MAX_PRIORITY as MAX_PRIORITY
from aiotask.brokers._common import text
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping


#: Deliveries already counted before the last (re)publish; absent on a fresh message.
HEADER_DELIVERIES = "x-aiotask-deliveries"
#: Why a message was dead-lettered (on copies in the .dead queue).
HEADER_REASON = "x-aiotask-reason"
#: A unique id per dead letter (so `delete_dead_letters` removes exactly the one listed).
HEADER_DEAD_ID = "x-aiotask-dead-id"
#: Unix milliseconds the message was dead-lettered.
HEADER_DIED_AT = "x-aiotask-died-at"
#: Unix milliseconds before which the message must not run (delays past MAX_DELAY_MS hop again).
HEADER_ETA = "x-aiotask-eta"
#: Quorum queues count returned deliveries themselves.
HEADER_QUORUM_COUNT = "x-delivery-count"
#: Headers RabbitMQ adds that must not follow a message into a copy we publish.
SERVER_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
)

#: A publisher re-declares a delay queue it keeps using at least this often (renews x-expires).
DELAY_REDECLARE_S = 60.0
_EXPIRES_MARGIN_MS = int(2 * DELAY_REDECLARE_S * 1000)
#: x-message-ttl and x-expires must fit 32 bits; a longer delay takes several hops.
MAX_DELAY_MS = 2**32 - 1 - _EXPIRES_MARGIN_MS
#: A message whose eta header is further away than this when it reaches the work queue
#: (only a delay longer than MAX_DELAY_MS, or a large clock skew) is delayed again.
ETA_TOLERANCE_S = 1.0
#: Bucket width is about 1/32 of the delay (never under 16 ms): few queues, at most ~3% late.
_BUCKET_BITS = 5
_MIN_STEP_MS = 16


@dataclass(frozen=True, slots=True)
class Names:
    """Queue names under one key_prefix."""

    prefix: str

    def work(self, queue: str) -> str:
        return f"{self.prefix}.{queue}"

    def dead(self, queue: str) -> str:
        return f"{self.prefix}.{queue}.dead"

    def delay(self, queue: str, ms: int) -> str:
        return f"{self.prefix}.{queue}.delay.{ms}"


QUEUE_TYPES = ("classic", "quorum")


def queue_type(query: Mapping[str, list[str]], shown_url: str) -> str:
    """`?queue_type=quorum` in the broker URL selects quorum work queues; classic by default."""
    value = (query.get("queue_type") or ["classic"])[-1].lower()
    if value not in QUEUE_TYPES:
        raise ConfigurationError(
            f"queue_type={value!r} in broker URL {shown_url!r}: use classic or quorum"
        )
    return value


def work_arguments(names: Names, queue: str, kind: str = "classic") -> dict[str, object]:
    """Priorities (classic only), and the server's own dead-lettering to .dead."""
    args: dict[str, object] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": names.dead(queue),
    }
    if kind == "quorum":
        args["x-queue-type"] = "quorum"
    else:
        args["x-max-priority"] = MAX_PRIORITY
    return args


def delay_arguments(names: Names, queue: str, ms: int) -> dict[str, object]:
    """Every message waits exactly `ms`, then RabbitMQ moves it to the work queue.

    One TTL per queue keeps expiry order equal to arrival order, so a short delay never waits
    behind a long one (it lives in another queue). x-expires outlives the last message by the
    re-declare interval plus a margin: publishing alone does not renew it.
    """
    return {
        "x-message-ttl": ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": names.work(queue),
        "x-expires": ms + _EXPIRES_MARGIN_MS,
    }


def delay_bucket_ms(delay_s: float) -> int:
    """The bucket for a delay: rounded up (never early), capped at MAX_DELAY_MS; 0 = no delay."""
    ms = math.ceil(delay_s * 1000)
    if ms <= 0:
        return 0
    step = max(_MIN_STEP_MS, 1 << max(ms.bit_length() - 1 - _BUCKET_BITS, 0))
    return min(-(-ms // step) * step, MAX_DELAY_MS)


def header_int(headers: Mapping[str, object] | None, name: str) -> int | None:
    value = (headers or {}).get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | bytes) and value.strip().isdigit():
        return int(value)
    return None


def prior_deliveries(headers: Mapping[str, object] | None, redelivered: bool) -> tuple[int, bool]:
    """Deliveries before this one, and whether that count must be written back.

    Classic queues only say `redelivered`: the previous delivery ended unsettled (its channel
    closed), so it counts, and the new count must be persisted by republishing a copy with the
    header (the flag itself never grows). Quorum queues keep x-delivery-count themselves.
    Hand-backs (nack requeue, warm shutdown) republish with the count unchanged, so they never
    reach this path with the flag set.
    """
    counted = max(header_int(headers, HEADER_DELIVERIES) or 0, 0)
    quorum = header_int(headers, HEADER_QUORUM_COUNT)
    if quorum is not None:
        return counted + max(quorum, 0), False
    if redelivered:
        return counted + 1, True
    return counted, False


def dead_headers(deliveries: int, reason: str) -> dict[str, object]:
    """Headers of a dead-letter copy: the count so far, our reason, a unique id and the time."""
    return {
        HEADER_DELIVERIES: deliveries,
        HEADER_REASON: reason,
        HEADER_DEAD_ID: uuid.uuid4().hex,
        HEADER_DIED_AT: int(time.time() * 1000),
    }


def dead_identity(headers: Mapping[str, object] | None) -> tuple[str | None, float | None]:
    """A dead letter's unique id and time (unix seconds), where our copy recorded them."""
    headers = headers or {}
    ident = headers.get(HEADER_DEAD_ID)
    died = header_int(headers, HEADER_DIED_AT)
    return (
        text(ident) if isinstance(ident, bytes | str) and ident else None,
        died / 1000 if died is not None else None,
    )


def dead_reason(headers: Mapping[str, object] | None) -> str:
    """Our reason header, else what RabbitMQ recorded when it dead-lettered the message."""
    headers = headers or {}
    reason = headers.get(HEADER_REASON)
    if isinstance(reason, bytes | str) and reason:
        return text(reason)
    first = headers.get("x-first-death-reason")
    shown = text(first) if isinstance(first, bytes | str) and first else "unknown reason"
    if shown == "delivery_limit":  # a quorum queue's x-delivery-limit (max_deliveries - 1)
        return "delivered max_deliveries times without being settled (quorum queue delivery-limit)"
    return f"dead-lettered by RabbitMQ: {shown}"
