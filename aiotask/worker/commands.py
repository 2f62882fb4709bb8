"""Answers to inspect requests and the control commands a worker obeys (see control.py).

Everything here reads or changes the worker's in-memory state only; nothing on the hot path
pays for it (an inspect decodes the bodies it reports, when asked).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from aiotask._log import get_logger
from aiotask._time import now, parse_rate
from aiotask._urls import redact
from aiotask.control.records import REPLY_TTL, encode_reply
from aiotask.exceptions import AiotaskError, ConfigurationError
from aiotask.security import peek

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiotask.backends.base import ResultBackend
    from aiotask.brokers.base import Delivery
    from aiotask.control.records import Request
    from aiotask.protocol import Message
    from aiotask.worker import Worker

log = get_logger(__name__)

#: Settings whose names say they hold a secret: never sent in an inspect `conf` reply.
_SECRET_WORDS = ("password", "secret", "token", "signing_key", "api_key")


class ControlError(AiotaskError):
    """A command this worker refuses (bad argument, unknown task or queue): sent as the reply."""


def describe(message: Message, delivery: Delivery) -> dict[str, Any]:
    """A held message as inspect shows it."""
    return {
        "id": message.id,
        "name": message.task,
        "args": message.args,
        "kwargs": message.kwargs,
        "queue": delivery.queue,
        "retries": message.retries,
        "deliveries": delivery.deliveries,
        "eta": message.eta,
    }


def _decoded(delivery: Delivery) -> dict[str, Any]:
    try:
        return describe(peek(delivery.body), delivery)
    except AiotaskError as exc:
        return {"id": delivery.message_id, "queue": delivery.queue, "error": str(exc)}


class Commands:
    """One worker's handlers; `answer` runs one request and sends its reply."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[object]]] = {
            "ping": self.ping,
            "active": self.active,
            "reserved": self.reserved,
            "scheduled": self.scheduled,
            "revoked": self.revoked,
            "registered": self.registered,
            "stats": self.stats,
            "conf": self.conf,
            "rate_limit": self.rate_limit,
            "add_consumer": self.add_consumer,
            "cancel_consumer": self.cancel_consumer,
            "pool_grow": self.pool_grow,
            "pool_shrink": self.pool_shrink,
            "shutdown": self.shutdown,
        }

    async def answer(self, backend: ResultBackend, request: Request) -> None:
        """Run the request if it is for this worker and reply; never raises."""
        w = self.worker
        if not request.for_worker(w.name, w.conf.key_prefix):
            return
        handler = self.handlers.get(request.cmd)
        ok = False
        if handler is None:
            reply = encode_reply(w.name, error=f"unknown command {request.cmd!r}")
        else:
            try:
                reply, ok = encode_reply(w.name, ok=await handler(request.args)), True
            except (ControlError, ConfigurationError) as exc:
                reply = encode_reply(w.name, error=str(exc))
            except Exception as exc:
                log.exception("control command %s failed", request.cmd)
                reply = encode_reply(w.name, error=f"internal error: {exc!r}")
        try:
            await backend.reply(request.reply_to, reply, REPLY_TTL)
        except Exception as exc:
            log.warning("could not send the reply to %s: %r", request.cmd, exc)
        if ok and request.cmd == "shutdown":  # after the reply: the control loop stops next
            w.shutdown.request()

    # --- inspect ---------------------------------------------------------------------------
    async def ping(self, args: dict[str, Any]) -> str:
        return "pong"

    async def active(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [_decoded(d) for d in list(self.worker.dispatcher.running)]

    async def reserved(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [describe(m, d) for d, m, _ in list(self.worker.dispatcher.buffer)]

    async def scheduled(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Held until a time: rate-limited messages waiting for their token (brokers hold
        messages with an ETA themselves, so a worker never holds those)."""
        loop_now, wall = asyncio.get_running_loop().time(), now()
        out = []
        for delivery, timer in list(self.worker.dispatcher.deferred.items()):
            entry = _decoded(delivery)
            entry["starts_at"] = wall + max(timer.when() - loop_now, 0.0)
            out.append(entry)
        return out

    async def revoked(self, args: dict[str, Any]) -> list[str]:
        return sorted(self.worker.dispatcher.executor.revoked)

    async def registered(self, args: dict[str, Any]) -> list[str]:
        return sorted(t for t in self.worker.app.tasks if not t.startswith("aiotask."))

    async def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        w = self.worker
        d = w.dispatcher
        out = w.registry.info().to_dict()
        out.update(
            uptime=round(now() - w.registry.started_at, 3),
            prefetch=d.prefetch,
            held=len(d.held),
            reserved=len(d.buffer),
            scheduled=len(d.deferred),
            waiting_for_limits=len(d.gated),  # global rate / concurrency slot (coordination)
            pool_pids=w.pool.pids,
            broker=redact(w.conf.broker_url),
            backend=redact(w.conf.backend_url) if w.conf.backend_url else None,
        )
        return out

    async def conf(self, args: dict[str, Any]) -> dict[str, Any]:
        """This worker's settings; URLs with their passwords masked, secrets left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.worker.conf):
            value = getattr(self.worker.conf, f.name)
            if any(word in f.name for word in _SECRET_WORDS):
                value = "********" if value else value
            elif isinstance(value, str) and "://" in value:
                value = redact(value)
            out[f.name] = value
        return out

    # --- control ---------------------------------------------------------------------------
    async def rate_limit(self, args: dict[str, Any]) -> str:
        name, rate = args.get("task"), args.get("rate")
        task = self.worker.app.tasks.get(name) if isinstance(name, str) else None
        if task is None:
            raise ControlError(f"task {name!r} is not registered on this worker")
        if not isinstance(rate, str | int | float) or isinstance(rate, bool):
            raise ControlError(f"bad rate {rate!r}: write it as N/s, N/m or N/h")
        limit = None if rate in (0, "0") else parse_rate(rate)
        task.options = dataclasses.replace(task.options, rate_limit=limit)
        return f"rate limit of {name} set to {rate}" if limit else f"{name} has no rate limit"

    async def add_consumer(self, args: dict[str, Any]) -> str:
        queue = _queue(args)
        w = self.worker
        if queue in w.queues:
            return f"already consuming {queue}"
        w.queues.append(queue)
        w.queues_changed.set()
        log.info("now consuming %s (add-consumer)", queue)
        return f"now consuming {queue}"

    async def cancel_consumer(self, args: dict[str, Any]) -> str:
        queue = _queue(args)
        w = self.worker
        if queue not in w.queues:
            raise ControlError(f"not consuming {queue!r} (queues: {', '.join(w.queues)})")
        if len(w.queues) == 1:
            raise ControlError(f"{queue!r} is this worker's only queue; use shutdown instead")
        w.queues.remove(queue)
        w.queues_changed.set()
        stop = getattr(w.app.broker, "stop_consuming", None)
        if stop is not None:  # AMQP: cancel the server-side consumer, hand back its prefetch
            await stop(queue)
        log.info("stopped consuming %s (cancel-consumer)", queue)
        return f"no longer consuming {queue}"

    async def pool_grow(self, args: dict[str, Any]) -> str:
        return self._resize(_count(args))

    async def pool_shrink(self, args: dict[str, Any]) -> str:
        return self._resize(-_count(args))

    def _resize(self, delta: int) -> str:
        """Change how many tasks run at once; a prefetch that followed -c follows it again."""
        d = self.worker.dispatcher
        old = d.concurrency
        d.concurrency = max(1, old + delta)
        if d.prefetch == old:
            d.prefetch = d.concurrency
        while d.buffer and len(d.running) < d.concurrency:
            d._start(*d.buffer.popleft())
        d.space.set()  # room to fetch more
        log.info(
            "concurrency %d -> %d (pool %s)", old, d.concurrency, "grow" if delta > 0 else "shrink"
        )
        return f"concurrency {old} -> {d.concurrency}"

    async def shutdown(self, args: dict[str, Any]) -> str:
        log.warning("warm shutdown requested by a control command")
        return "shutting down (warm)"


def _queue(args: dict[str, Any]) -> str:
    queue = args.get("queue")
    if not isinstance(queue, str) or not queue.strip():
        raise ControlError(f"bad queue name {queue!r}")
    return queue.strip()


def _count(args: dict[str, Any]) -> int:
    n = args.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ControlError(f"bad count {n!r}: a positive integer")
    return n


async def follow_queues(changed: asyncio.Event, run: Callable[[], Awaitable[None]]) -> None:
    """Run the consumer; restart it when add/cancel-consumer changed the queue list.

    A receive in flight uses the list it started with, so the loop is cancelled (receive is
    cancel-safe) and started again on the new list.
    """
    while True:
        changed.clear()
        consumer = asyncio.ensure_future(run())
        waiter = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({consumer, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            await _cancel(consumer)
        if not changed.is_set():
            return consumer.result()  # it returned or raised on its own
        if not consumer.cancelled():
            consumer.exception()  # retrieved: the restart on the new queues covers it


async def _cancel(task: asyncio.Future[None]) -> None:
    """Cancel and wait until it really stopped (never leave a consumer running behind us).

    A cancellation can be lost inside a client library, so cancel again until done; a
    cancellation of *this* call while waiting is re-raised once the task is done.
    """
    interrupted = False
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=0.5)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
