"""OpenTelemetry tracing (extra `aiotask[otel]`): W3C trace context in message headers.

`App(..., middleware=[TracingMiddleware()])` on producers and workers. A send makes a PRODUCER
span ("send <task>") and puts its context in the message's headers; the worker continues it
with a CONSUMER span ("run <task>") around the task. Canvas follow-ups (the next chain step,
group members, a chord body) are published by the worker after the task finished, outside its
span: their parent is the span of the task that finished (looked up by the message's
`parent_id`; a retry, by its own id), so a whole workflow is one trace, step after step.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aiotask.exceptions import ConfigurationError, Retry
from aiotask.middleware.base import Middleware

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError("tracing needs OpenTelemetry: pip install 'aiotask[otel]'") from exc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from opentelemetry.context import Context
    from opentelemetry.trace import TracerProvider

    from aiotask.context import TaskContext
    from aiotask.protocol import Message

__all__ = ["TracingMiddleware"]

#: the W3C headers this middleware writes (old values are replaced, never merged)
TRACE_HEADERS = ("traceparent", "tracestate")


class TracingMiddleware(Middleware):
    """Producer and worker spans linked by W3C trace context in the message headers."""

    def __init__(
        self, tracer_provider: TracerProvider | None = None, remember: int = 10_000
    ) -> None:
        self.tracer = trace.get_tracer("aiotask", tracer_provider=tracer_provider)
        #: task id -> context of its finished "run" span, for the follow-ups the settler
        #: publishes after the task ended (bounded: the oldest are forgotten)
        self._finished: OrderedDict[str, Context] = OrderedDict()
        self._remember = remember

    def _parent(self, message: Message) -> Context | None:
        """The current span if there is one (a request, a task body), else the finished task
        this message follows (a retry: itself; a canvas step: its parent_id)."""
        if trace.get_current_span().get_span_context().is_valid:
            return None  # the current context
        found = self._finished.get(message.id)
        if found is None and message.parent_id is not None:
            found = self._finished.get(message.parent_id)
        return found if found is not None else otel_context.Context()

    async def before_send(self, message: Message) -> Message:
        parent = self._parent(message)
        with self.tracer.start_as_current_span(
            f"send {message.task}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=_attributes(message.id, message.task, message.queue),
        ):
            headers = {k: v for k, v in message.headers.items() if k not in TRACE_HEADERS}
            propagate.inject(headers)
        return message.evolve(headers=headers)

    async def around_task(self, ctx: TaskContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        parent = propagate.extract(ctx.headers)
        attributes = _attributes(ctx.id, ctx.name, None)
        with self.tracer.start_as_current_span(
            f"run {ctx.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call_next()
            except Retry:
                span.set_attribute("aiotask.retry", True)
                raise
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                self._remember_span(ctx.id, trace.set_span_in_context(span))

    def _remember_span(self, task_id: str, context: Context) -> None:
        self._finished[task_id] = context
        self._finished.move_to_end(task_id)
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)


def _attributes(task_id: str, task: str, queue: str | None) -> dict[str, str]:
    attributes = {
        "messaging.system": "aiotask",
        "messaging.message.id": task_id,
        "aiotask.task_name": task,
    }
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    return attributes
