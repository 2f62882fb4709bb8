"""OpenTelemetry: a request -> chain -> group -> chord body is one trace, each step's span the
child of the send that published it, and each send the child of the span that caused it."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from aiotask import App, group
from aiotask.testing import start_worker
from aiotask.tracing import TracingMiddleware


def make_app() -> tuple[App, InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App(
        "traced",
        broker="memory://",
        backend="memory://",
        middleware=[TracingMiddleware(tracer_provider=provider)],
    )
    return app, exporter, provider


def by_id(spans: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans if s.context is not None}


def parent_of(span: ReadableSpan, index: dict[int, ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    return index[span.parent.span_id]


async def test_request_chain_group_chord_body_is_one_trace() -> None:
    app, exporter, provider = make_app()

    @app.task(name="traced.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="traced.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    tracer = provider.get_tracer("test")
    async with app, start_worker(app):
        with tracer.start_as_current_span("GET /workflow", kind=SpanKind.SERVER) as request:
            workflow = add.s(1, 1) | group(add.s(10), add.s(20)) | total.s()
            result = await workflow.send()
        assert await result.get(timeout=10) == (2 + 10) + (2 + 20)

    spans = exporter.get_finished_spans()
    index = by_id(spans)
    trace_id = request.get_span_context().trace_id
    runs: dict[str, list[ReadableSpan]] = {s.name: [] for s in spans}
    for s in spans:
        runs[s.name].append(s)
        assert s.context is not None
        assert s.context.trace_id == trace_id, f"{s.name} is in another trace"
    assert len(runs["run traced.add"]) == 3
    assert len(runs["run traced.total"]) == 1
    # every run span is the child of a send span of the same task
    for run in runs["run traced.add"] + runs["run traced.total"]:
        send = parent_of(run, index)
        assert send.kind is SpanKind.PRODUCER
        assert send.name == run.name.replace("run ", "send ")
    # the first step was sent inside the request
    first = min(runs["run traced.add"], key=lambda s: s.start_time or 0)
    assert parent_of(parent_of(first, index), index).name == "GET /workflow"
    # the group members were sent by the worker after the first step: its span is their parent
    members = [s for s in runs["run traced.add"] if s is not first]
    for member in members:
        assert parent_of(parent_of(member, index), index) is first
    # the chord body was sent after the last member finished: that member's span is its parent
    body = runs["run traced.total"][0]
    assert parent_of(parent_of(body, index), index) in members


async def test_retry_and_failure_spans() -> None:
    app, exporter, _ = make_app()
    attempts: list[int] = []

    @app.task(name="traced.flaky", bind=True, max_retries=3)
    async def flaky(ctx, n: int) -> int:
        attempts.append(ctx.retries)
        if ctx.retries < 1:
            raise ctx.retry(countdown=0.01)
        raise ValueError("boom")

    async with app, start_worker(app):
        r = await flaky.send(1)
        with pytest.raises(ValueError, match="boom"):
            await r.get(timeout=10)

    spans = exporter.get_finished_spans()
    index = by_id(spans)
    runs = sorted(
        (s for s in spans if s.name == "run traced.flaky"), key=lambda s: s.start_time or 0
    )
    assert len(runs) == 2
    assert runs[0].attributes is not None and runs[0].attributes.get("aiotask.retry") is True
    assert not runs[1].status.is_ok
    # the retry was published by the worker after the first attempt: continues its trace
    assert parent_of(parent_of(runs[1], index), index) is runs[0]
