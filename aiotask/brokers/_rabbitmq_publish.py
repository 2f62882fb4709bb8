"""The publish side of brokers/rabbitmq.py: one robust connection with confirms.

Every publish, from a producer or from the worker's own republish-then-ack, waits for the
channel through a reconnect (aiotask._backoff.Backoff, deadline `broker_unreachable_timeout`)
instead of failing on the closed channel of a restarting server. A message is sent again only
when its channel was closed before any of its bytes were written; one whose confirm was lost
may already be stored, so it is never re-sent (that would duplicate it): its error says so.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs, urlsplit

from aio_pika.exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from pamqp.commands import Basic  # aiormq.spec re-exports it; pamqp has the types

from aiotask import _tls
from aiotask._backoff import Backoff
from aiotask._urls import redact
from aiotask.brokers._common import clamp_priority
from aiotask.brokers._rabbitmq_nodes import connect_node, node_urls
from aiotask.brokers._rabbitmq_reader import DirectDeliveries
from aiotask.brokers._rabbitmq_topology import HEADER_QUORUM_COUNT, MAX_PRIORITY, SERVER_HEADERS
from aiotask.exceptions import AiotaskError, BrokerConnectionError, ConfigurationError

#: AMQP delivery_mode 2: the server writes the message to disk before confirming it.
PERSISTENT = 2

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

    from aiotask.brokers._rabbitmq_delivery import Incoming
    from aiotask.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Seconds close() waits for the confirms of publishes sent with confirm=False.
UNCONFIRMED_CLOSE_TIMEOUT = 5.0

#: Errors of a connection or channel that went away: worth waiting for a reconnect.
TRANSIENT = (AMQPConnectionError, ChannelInvalidStateError, ConnectionError, OSError, TimeoutError)


class NotSent(Exception):
    """The channel was closed before this message was written: sending it again is safe."""


@contextmanager
def map_errors(url: str, doing: str) -> Iterator[None]:
    """Client-library errors -> our hierarchy, with the URL's password redacted."""
    try:
        yield
    except AiotaskError:
        raise
    except ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"RabbitMQ refused to {doing}: {redact(str(exc))}. A queue's arguments are fixed "
            "when it is created: delete the queue or use another key_prefix"
        ) from exc
    except DeliveryError as exc:
        raise BrokerConnectionError(
            f"RabbitMQ did not confirm a message ({doing}): {redact(str(exc))}; publish again"
        ) from exc
    except (AMQPError, OSError, TimeoutError, RuntimeError) as exc:
        tls_error = _tls.failure(exc)
        if tls_error is not None:
            raise BrokerConnectionError(_tls.describe(tls_error, "RabbitMQ", url)) from exc
        raise BrokerConnectionError(
            f"cannot {doing} on RabbitMQ at {redact(url)}: {type(exc).__name__}: {redact(str(exc))}"
            f"{_tls.reset_hint(url, exc)}"
        ) from exc


async def open_connection(
    url: str, settings: Settings, app_name: str, role: str
) -> AbstractRobustConnection:
    """One robust connection attempt; afterwards aio-pika reconnects by itself.

    amqps://: our SSLContext (aiotask._tls), built now from the files of that moment; aio-pika's
    reconnects reuse it, so a rotated client certificate is used from the next worker start.
    """
    # Connections come back ~1 s after the server does, unless the URL sets its own interval.
    nodes = [_tls.for_broker(settings, node) for node in node_urls(url)]
    interval = None if "reconnect_interval" in parse_qs(urlsplit(nodes[0].url).query) else 1.0
    context = _tls.context_for(nodes[0].tls) if nodes[0].tls is not None else None
    error: BrokerConnectionError | None = None
    for start, resolved in enumerate(nodes):  # the first node that answers (a cluster)
        try:
            with map_errors(url if len(nodes) == 1 else resolved.url, f"connect ({role})"):
                return await connect_node(
                    [n.url for n in nodes],
                    start,
                    ssl_context=context,
                    timeout=min(settings.broker_unreachable_timeout, 30.0),
                    client_properties={"connection_name": f"aiotask {app_name} {role}"},
                    reconnect_interval=interval,
                )
        except BrokerConnectionError as exc:
            if len(nodes) == 1 or _tls.permanent(exc):
                raise
            log.warning("RabbitMQ node unreachable (%s); trying the next one", exc)
            error = exc
    raise BrokerConnectionError(
        f"none of the {len(nodes)} RabbitMQ nodes of {redact(url)} answered; last: {error}"
    ) from error


class Publisher:
    """The publish connection and channel (confirms, mandatory routing), waited for on use."""

    def __init__(self, url: str, settings: Settings, app_name: str) -> None:
        self._url = url
        self._settings = settings
        self._app_name = app_name
        self.conn: AbstractRobustConnection | None = None
        self.channel: AbstractRobustChannel | None = None
        self._lock = asyncio.Lock()
        #: publishes sent with confirm=False whose confirm has not arrived (close() waits)
        self._unconfirmed: set[asyncio.Future[None]] = set()

    def backoff(self) -> Backoff:
        """One wait budget per call: the outage may last `broker_unreachable_timeout`."""
        return Backoff(first=0.05, cap=1.0, deadline=self._settings.broker_unreachable_timeout)

    async def open(self) -> AbstractRobustChannel:
        """The channel, connecting once if this process has none yet (no waiting)."""
        if self.channel is not None:
            return self.channel
        async with self._lock:  # concurrent first publishes share one connection
            if self.channel is None:
                conn = await open_connection(self._url, self._settings, self._app_name, "publish")
                try:
                    with map_errors(self._url, "open publish channel"):
                        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                except BaseException:
                    await conn.close()
                    raise
                self.conn, self.channel = conn, channel
            return self.channel

    async def close(self) -> None:
        if self._unconfirmed:  # written (or about to be): give their confirms a moment
            await asyncio.wait(set(self._unconfirmed), timeout=UNCONFIRMED_CLOSE_TIMEOUT)
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None:
            await conn.close()

    async def ready(self, backoff: Backoff) -> AbstractRobustChannel:
        """An open channel, waiting through a reconnect until the backoff's deadline."""
        error: BaseException | None = None
        while True:
            channel: AbstractRobustChannel | None = None
            try:
                channel = await self.open()
                if not channel.is_closed:
                    return channel
            except BrokerConnectionError as exc:  # the very first connection failed
                if _tls.permanent(exc):  # a certificate does not get better by waiting
                    raise
                error = exc
            if backoff.expired:
                raise BrokerConnectionError(
                    f"RabbitMQ at {redact(self._url)} has been unreachable for "
                    f"{backoff.deadline:g} s (broker_unreachable_timeout): nothing more was "
                    "published; check the server and the URL"
                ) from error
            delay = backoff.next_delay()
            if channel is None:
                await asyncio.sleep(delay)
                continue
            try:  # a robust channel reopens by itself: wake as soon as it has
                async with asyncio.timeout(delay):
                    await channel.ready()
                    if channel.is_closed:
                        await asyncio.sleep(delay)
            except TimeoutError:
                pass

    async def run(self, doing: str, op: Callable[[AbstractRobustChannel], Awaitable[T]]) -> T:
        """An idempotent channel operation (a declare), retried through an outage."""
        backoff = self.backoff()
        while True:
            channel = await self.ready(backoff)
            try:
                with map_errors(self._url, doing):  # outside: a timeout is mapped (and retried)
                    async with asyncio.timeout(max(backoff.deadline - backoff.elapsed, 1.0)):
                        return await op(channel)
            except BrokerConnectionError as exc:
                if not isinstance(exc.__cause__, TRANSIENT) or backoff.expired:
                    raise
                await backoff.sleep()

    async def send(self, items: Sequence[tuple[str, Outbound]]) -> list[BaseException | None]:
        """Publish every item with confirms; per item None (confirmed) or its error.

        Items are sent concurrently (one round trip for the batch). Only items that met a
        closed channel before being written are sent again, after the reconnect; any other
        error is final for its item, and the others are unaffected.
        """
        results: list[BaseException | None] = [None] * len(items)
        todo = list(range(len(items)))
        backoff = self.backoff()
        while todo:
            try:
                channel = await self.ready(backoff)
            except BrokerConnectionError as exc:
                for i in todo:
                    results[i] = exc
                break
            timeout = max(backoff.deadline - backoff.elapsed, 1.0)
            outcomes = await _attempt(channel, {i: items[i] for i in todo}, timeout)
            todo = [i for i, r in outcomes.items() if isinstance(r, NotSent)]
            for i, r in outcomes.items():
                if not isinstance(r, NotSent):
                    results[i] = r
        return results

    async def send_unconfirmed(self, items: Sequence[tuple[str, Outbound]]) -> None:
        """Publish without waiting for the write or the confirm (the `confirm=False` call option).

        The channel must be open (`ready()` first). Each publish runs on as its own task; one
        that fails later (a nack, an unroutable queue, a lost connection) is logged with its
        message id, never raised or sent again. close() waits for them, briefly.
        """
        assert self.channel is not None  # noqa: S101 - the caller awaited ready()
        tasks = []
        for key, msg in items:
            task = asyncio.ensure_future(_publish_one(self.channel, key, msg))
            self._unconfirmed.add(task)
            task.add_done_callback(partial(self._unconfirmed_done, msg.message_id or "?"))
            tasks.append(task)
        closed = await _cancel_on_close(self.channel, tasks)
        finished = asyncio.gather(*tasks, return_exceptions=True)
        finished.add_done_callback(lambda _: closed.cancel())

    def _unconfirmed_done(self, message_id: str, task: asyncio.Future[None]) -> None:
        self._unconfirmed.discard(task)
        if task.cancelled():
            log.warning(
                "unconfirmed publish of message %s was cancelled: it may be lost", message_id
            )
            return
        exc = task.exception()
        if isinstance(exc, NotSent):
            log.warning("unconfirmed message %s was not sent: its channel had closed", message_id)
        elif exc is not None:
            log.warning(
                "unconfirmed publish of message %s failed (%s: %s); such messages %s",
                message_id,
                type(exc).__name__,
                redact(str(exc)),
                _WHAT[_kind(exc)],
            )

    def failure(
        self,
        items: Sequence[tuple[str, Outbound]],
        results: Sequence[BaseException | None],
    ) -> BrokerConnectionError | None:
        """One error that says what happened to which messages, per kind of failure."""
        failed = [
            (msg.message_id or "?", r)
            for (_, msg), r in zip(items, results, strict=True)
            if r is not None
        ]
        if not failed:
            return None
        kinds: dict[str, list[tuple[str, BaseException]]] = {}
        for mid, r in failed:
            kinds.setdefault(_kind(r), []).append((mid, r))
        parts = [f"{len(items) - len(failed)} of {len(items)} messages were published"]
        for kind, group in kinds.items():
            first = group[0][1]
            parts.append(
                f"{len(group)} ({_ids(group)}) {_WHAT[kind]} "
                f"[{type(first).__name__}: {redact(str(first))}]"
            )
        error = BrokerConnectionError("; ".join(parts))
        error.__cause__ = failed[0][1]
        return error


_WHAT = {
    "unknown": "may or may not have been stored: the connection failed before RabbitMQ "
    "confirmed them, and they were not sent again so that no retry can duplicate them",
    "unroutable": "were returned as unroutable: their queue does not exist (deleted after this "
    "process declared it?); publish them again to re-declare it",
    "refused": "were refused by RabbitMQ (basic.nack) and not stored; publish them again",
    "unsent": "were not published",
}


def _kind(result: BaseException) -> str:
    if isinstance(result, PublishError):
        return "unroutable"
    if isinstance(result, DeliveryError):
        return "refused"
    if isinstance(result, BrokerConnectionError):
        return "unsent"
    return "unknown"


def _ids(group: Sequence[tuple[str, BaseException]], shown: int = 5) -> str:
    ids = ", ".join(mid for mid, _ in group[:shown])
    return ids if len(group) <= shown else f"{ids} and {len(group) - shown} more"


#: a message's outcome when its confirm did not come in time, or its channel closed first
_NO_CONFIRM = "no confirm within broker_unreachable_timeout"
_CLOSED = "its channel closed mid-publish"


async def _attempt(
    channel: AbstractRobustChannel,
    items: dict[int, tuple[str, Outbound]],
    timeout: float,
) -> dict[int, BaseException | None]:
    """One concurrent publish of `items` on `channel`; per index None or the error."""
    if channel.is_closed:
        return {i: NotSent() for i in items}
    if len(items) == 1:
        ((i, item),) = items.items()
        return {i: await _attempt_one(channel, item, timeout)}
    tasks = {i: asyncio.ensure_future(_publish_one(channel, *item)) for i, item in items.items()}
    closed = await _cancel_on_close(channel, tasks.values())
    try:
        _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
    except BaseException:
        for task in tasks.values():
            task.cancel()
        raise
    finally:
        closed.cancel()  # stops observing the channel, nothing else
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    out: dict[int, BaseException | None] = {}
    for i, task in tasks.items():
        if task in pending:
            out[i] = TimeoutError(_NO_CONFIRM)
        elif task.cancelled():
            out[i] = asyncio.CancelledError(_CLOSED)
        else:
            out[i] = task.exception()
    return out


async def _attempt_one(
    channel: AbstractRobustChannel, item: tuple[str, Outbound], timeout: float
) -> BaseException | None:
    """`_attempt` for one message, in the caller's task: the same outcomes, two hops fewer.

    A task per message and asyncio.wait() put a turn of the loop between send() and the
    publish, and two between the confirm and send() returning; a batch still publishes
    concurrently (`_attempt`). A channel that closes mid-publish cancels this task, as it
    cancels `_attempt`'s tasks; that cancel is taken back here and becomes the outcome.
    """
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - called from a coroutine
    closing: asyncio.Future[object] = (await channel.get_underlay_channel()).closing
    state = {"done": False, "closed": False}

    def cancel(observer: asyncio.Future[object]) -> None:
        if not state["done"] and not observer.cancelled():
            state["closed"] = True
            task.cancel()

    closing.add_done_callback(cancel)
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            await _publish_one(channel, *item)
        return None
    except asyncio.CancelledError:
        if state["closed"] and task.uncancel() == 0:  # ours alone: the caller was not cancelled
            return asyncio.CancelledError(_CLOSED)
        raise
    except TimeoutError as exc:
        if scope.expired():
            return TimeoutError(_NO_CONFIRM)
        return exc
    except Exception as exc:  # the outcome of this message, as in _attempt
        return exc
    finally:
        state["done"] = True
        closing.remove_done_callback(cancel)


async def _cancel_on_close(
    channel: AbstractRobustChannel, tasks: Iterable[asyncio.Future[None]]
) -> asyncio.Future[object]:
    """Cancel the publishes still running when the channel closes; the observer, to cancel.

    With wait=False a publish can wait for room in the connection's bounded write queue, and
    a queue whose writer died never makes room: without this, such a publish would hang until
    the caller's timeout instead of failing with its channel.
    """
    closed: asyncio.Future[object] = (await channel.get_underlay_channel()).closing
    pending = list(tasks)

    def cancel(observer: asyncio.Future[object]) -> None:
        if not observer.cancelled():
            for task in pending:
                task.cancel()  # no-op for a finished one

    closed.add_done_callback(cancel)
    return closed


class Outbound:
    """A message ready for basic.publish: its body and AMQP properties, nothing else.

    Built straight as aiormq's properties instead of an Outbound (which sets ~15
    attributes and then builds the same properties again at publish time).
    """

    __slots__ = ("body", "properties")

    def __init__(self, body: bytes, properties: Basic.Properties) -> None:
        self.body = body
        self.properties = properties

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id


def message(body: bytes, message_id: str, priority: int, headers: Mapping[str, object]) -> Outbound:
    """A persistent message with the task id and a clamped priority."""
    return Outbound(
        body,
        Basic.Properties(
            message_id=message_id or None,
            priority=clamp_priority(priority, MAX_PRIORITY),
            delivery_mode=PERSISTENT,
            headers=dict(headers) if headers else None,  # type: ignore[arg-type]
        ),
    )


def copy_of(msg: Incoming, headers: dict[str, object]) -> Outbound:
    """A fresh message with the original's body and identity, minus what the server added."""
    merged: dict[str, object] = {
        k: v
        for k, v in (msg.headers or {}).items()
        if k not in SERVER_HEADERS and k != HEADER_QUORUM_COUNT
    }
    merged.update(headers)
    copy = message(msg.body, msg.message_id or "", msg.priority or 0, merged)
    copy.properties.content_type = msg.content_type
    copy.properties.content_encoding = msg.content_encoding
    return copy


async def _publish_one(channel: AbstractRobustChannel, key: str, msg: Outbound) -> None:
    if channel.is_closed:  # checked in the same step as aiormq's own check: nothing written
        raise NotSent
    raw = await channel.get_underlay_channel()
    DirectDeliveries.of(raw)  # its confirms are handled in the connection's reader (InlineFrames)
    # wait=False: the channel lock is not held until this frame reaches the socket, so a
    # batch's publishes are queued back to back and share the writer's drains.
    await raw.basic_publish(  # type: ignore[call-arg]
        msg.body,
        routing_key=key,
        properties=msg.properties,
        mandatory=True,
        wait=False,  # aiormq's concrete Channel has it (7.2.4+); its ABC does not
    )
