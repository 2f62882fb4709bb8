"""Queue types of brokers/rabbitmq.py: classic or quorum per queue, and declaring them safely.

A queue's arguments are fixed when RabbitMQ creates it; declaring it again with others fails
with PRECONDITION_FAILED and closes the channel. So, when quorum queues are configured, each
work queue (and its .dead queue) is first declared on a throwaway plain channel. A mismatch of
the queue's *type* (an existing classic queue that a setting now asks to be quorum) becomes a
ConfigurationError naming the queue and the setting. A mismatch of a *soft* argument (the
delivery limit after a change of max_deliveries, the dead-letter strategy of a quorum queue
made by an older version) adopts the existing value with a warning: a worker never stops over
it. The robust channels then declare with the settled arguments (again after a reconnect).

Quorum work queues get `x-delivery-limit = max_deliveries - 1`: RabbitMQ counts every return
of a message (its consumer's channel closed, a node died), exactly what aiotask counts on
classic queues, and after `max_deliveries` deliveries dead-letters it itself, at-least-once,
into the .dead queue (reason `delivery_limit`), with no worker alive needed and no extra
delivery. aiotask's own count (x-aiotask-deliveries + x-delivery-count) still applies on top,
for messages it republished (hand-backs restart the server's count).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from aio_pika.exceptions import ChannelPreconditionFailed

from aiotask._urls import redact
from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from contextlib import AbstractAsyncContextManager

    from aio_pika.abc import AbstractChannel

    from aiotask.settings import Settings

    #: opens a plain admin channel (RabbitMQBroker._admin)
    OpenChannel = Callable[[], AbstractAsyncContextManager[AbstractChannel]]

log = logging.getLogger("aiotask.brokers.rabbitmq")

QUORUM = "quorum"
CLASSIC = "classic"
#: Arguments whose existing value is adopted when it differs (with a warning).
SOFT = frozenset({"x-delivery-limit", "x-dead-letter-strategy", "x-overflow"})
#: Arguments that mean another queue type: a mismatch is a configuration error.
TYPE_ARGS = frozenset({"x-queue-type", "x-max-priority"})
#: `inequivalent arg 'x-delivery-limit' for queue 'p.q' in vhost '/': received '3' but
#: current is '2'` (or `received none but current is the value '9' of type 'byte'`).
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for queue '(?P<queue>[^']*)'.*?"
    r"current is (?:(?P<none>none)|(?:the value )?'(?P<value>[^']*)')"
)


@dataclass(frozen=True, slots=True)
class QueueTypes:
    """Which type each work queue gets: per-queue setting, else the URL's, else the default."""

    default: str
    per_queue: Mapping[str, str]
    max_deliveries: int

    def of(self, queue: str) -> str:
        return self.per_queue.get(queue, self.default)

    @property
    def any_quorum(self) -> bool:
        return self.default == QUORUM or QUORUM in self.per_queue.values()

    def setting_for(self, queue: str) -> str:
        """The setting that chose this queue's type (named in errors)."""
        if queue in self.per_queue:
            return f"rabbitmq_queue_types[{queue!r}]"
        return "rabbitmq_queue_type (or ?queue_type= in the broker URL)"


def queue_types(settings: Settings, url: str) -> QueueTypes:
    """`?queue_type=` in the URL (the older form) wins over `rabbitmq_queue_type`."""
    query = parse_qs(urlsplit(url.split(";", 1)[0]).query)
    default = settings.rabbitmq_queue_type
    if "queue_type" in query:
        default = topo.queue_type(query, redact(url))
    return QueueTypes(default, dict(settings.rabbitmq_queue_types), settings.max_deliveries)


def delivery_limit(max_deliveries: int) -> int:
    """RabbitMQ delivers a message limit + 1 times, then dead-letters it on the next return."""
    return max(max_deliveries - 1, 0)


def work_arguments(names: topo.Names, queue: str, types: QueueTypes) -> dict[str, object]:
    kind = types.of(queue)
    args = topo.work_arguments(names, queue, kind)
    if kind == QUORUM:
        args["x-delivery-limit"] = delivery_limit(types.max_deliveries)
        # the server's dead-lettering retries until .dead has the message (needs reject-publish)
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def dead_arguments(queue: str, types: QueueTypes) -> dict[str, object]:
    """A quorum work queue's dead letters are replicated too (soft: an old classic one stays)."""
    return {"x-queue-type": QUORUM} if types.of(queue) == QUORUM else {}


@dataclass(slots=True)
class Declared:
    """The arguments each queue was settled with (the robust channels declare these)."""

    work: dict[str, object]
    dead: dict[str, object]


async def settle(
    open_channel: OpenChannel, names: topo.Names, queue: str, types: QueueTypes
) -> Declared:
    """Declare the .dead and work queues on throwaway channels; return the arguments to use.

    Only when quorum queues are configured somewhere: an all-classic set-up declares as it
    always did (a mismatch is then the generic ConfigurationError of map_errors).
    """
    if not types.any_quorum:
        return Declared(work_arguments(names, queue, types), dead_arguments(queue, types))
    dead = await _declare(
        open_channel, names.dead(queue), dead_arguments(queue, types), queue, types, soft_type=True
    )
    work = await _declare(
        open_channel, names.work(queue), work_arguments(names, queue, types), queue, types
    )
    return Declared(work, dead)


async def _declare(
    open_channel: OpenChannel,
    name: str,
    args: dict[str, object],
    queue: str,
    types: QueueTypes,
    *,
    soft_type: bool = False,
) -> dict[str, object]:
    soft = SOFT | TYPE_ARGS if soft_type else SOFT
    for _ in range(len(soft) + 1):  # each retry settles one more argument
        try:
            async with open_channel() as channel:
                await channel.declare_queue(name, durable=True, arguments=args)  # type: ignore[arg-type]
            return args
        except ChannelPreconditionFailed as exc:
            found = _INEQUIVALENT.search(str(exc))
            if found is None or found["arg"] not in soft:
                arg = found["arg"] if found is not None else None
                raise ConfigurationError(refusal(name, queue, types, str(exc), arg)) from exc
            arg, current = found["arg"], _value(found["value"], found["none"])
            log.warning(
                "RabbitMQ queue %s exists with %s=%s, not %s as configured: keeping it "
                "(a queue's arguments are fixed when it is created; see docs/scaling.md)",
                name,
                arg,
                "none" if current is None else current,
                args.get(arg, "none"),
            )
            args = {k: v for k, v in args.items() if k != arg}
            if current is not None:
                args[arg] = current
    raise ConfigurationError(f"could not settle the arguments of RabbitMQ queue {name!r}")


def _value(value: str | None, none: str | None) -> object:
    if none or value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def refusal(
    name: str, queue: str, types: QueueTypes, detail: str, arg: str | None = "x-queue-type"
) -> str:
    """What a mismatch means, and what to do about it."""
    kind = types.of(queue)
    other = CLASSIC if kind == QUORUM else QUORUM
    if arg not in TYPE_ARGS:  # not about the type: another tool or version made the queue
        return (
            f"RabbitMQ queue {name!r} already exists with other arguments than aiotask declares "
            f"({arg or 'see below'}); RabbitMQ refused ({redact(detail)}). A queue's arguments "
            f"are fixed when it is created: drain and delete it, or use another key_prefix"
        )
    return (
        f"RabbitMQ queue {name!r} already exists with other arguments than a {kind} queue "
        f"(it was probably created as a {other} queue), and {types.setting_for(queue)} asks for "
        f"{kind}: RabbitMQ refused ({redact(detail)}). A queue's type cannot change: drain and "
        f"delete it (rabbitmqctl delete_queue {name}), use another key_prefix, or set "
        f"rabbitmq_queue_types={{{queue!r}: {other!r}}} to keep it as it is"
    )
