"""Celery protocol v2 and result meta codecs against messages and readers from Celery itself
(celery is a dev dependency): no server, Celery's own code builds and reads the bytes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from celery import Celery, chain, chord, group
from celery.backends.base import Backend

from aiotask.celery_compat import envelope, results, v2
from aiotask.exceptions import ProtocolError
from aiotask.protocol import Message
from aiotask.serializer import exception_to_info


@pytest.fixture
def celery_app() -> Celery:
    return Celery("proj", broker="memory://", set_as_current=False)


def _kombu(celery_app: Celery, sig: Any, **options: Any) -> bytes:
    """The envelope a Celery producer would publish for `sig` (as_task_v2, json)."""
    if not options.get("task_id"):
        sig.freeze()
    opts = {**sig.options, **options}
    msg = celery_app.amqp.as_task_v2(
        opts.get("task_id") or sig.id,
        sig.task,
        args=sig.args,
        kwargs=sig.kwargs,
        countdown=opts.get("countdown"),
        eta=opts.get("eta"),
        expires=opts.get("expires"),
        callbacks=opts.get("link"),
        chain=opts.get("chain"),
        chord=opts.get("chord"),
        group_id=opts.get("group_id"),
        root_id=opts.get("root_id"),
        parent_id=opts.get("parent_id"),
        retries=opts.get("retries", 0),
    )
    body = orjson.dumps(msg.body)
    return envelope.Envelope(
        body, dict(msg.headers), correlation_id=msg.headers["id"], routing_key="celery"
    ).dumps()


def test_a_celery_v2_message_decodes_to_the_same_call(celery_app: Celery) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=30)
    raw = _kombu(
        celery_app,
        celery_app.signature("proj.add", args=(2, 3), kwargs={"z": 1}),
        task_id="id-1",
        eta=eta,
        expires=eta + timedelta(seconds=60),
        retries=2,
        root_id="root",
        parent_id="parent",
    )
    m = v2.decode(raw)
    assert (m.id, m.task, m.args, m.kwargs, m.queue) == (
        "id-1",
        "proj.add",
        [2, 3],
        {"z": 1},
        "celery",
    )
    assert m.eta == pytest.approx(eta.timestamp(), abs=0.001)
    assert m.expires == pytest.approx(eta.timestamp() + 60, abs=0.001)
    assert (m.retries, m.root_id, m.parent_id) == (2, "root", "parent")


def test_a_celery_chain_becomes_aiotask_steps_next_last(celery_app: Celery) -> None:
    c = chain(
        celery_app.signature("proj.add", (1, 2)),
        celery_app.signature("proj.mul", (10,)),
        celery_app.signature("proj.neg", immutable=True),
    )
    first = c.freeze()  # ids frozen as Celery's apply_async does
    tasks = list(c.tasks)
    rest = list(reversed(tasks[1:]))  # Celery's embed.chain: next step last
    raw = _kombu(celery_app, tasks[0], task_id=first.parent.parent.id, chain=rest)
    m = v2.decode(raw)
    assert [s["task"] for s in m.chain] == ["proj.neg", "proj.mul"]
    assert m.chain[-1]["args"] == [10] and m.chain[0]["imm"] is True
    assert m.chain[-1]["id"] == tasks[1].id


@pytest.mark.parametrize("kind", ["chord", "nested group"])
def test_canvas_an_aiotask_worker_cannot_run_is_refused_with_a_reason(
    celery_app: Celery, kind: str
) -> None:
    add = celery_app.signature("proj.add", (1, 1))
    if kind == "chord":
        raw = _kombu(celery_app, add, chord=celery_app.signature("proj.tsum"), group_id="g")
        match = "chord"
    else:
        nested = group(add, add)
        raw = _kombu(celery_app, add, chain=[nested])
        match = "group"
    with pytest.raises(ProtocolError, match=match):
        v2.decode(raw)
    assert chord  # imported for the chord case's readability


def test_protocol_1_and_pickle_are_refused() -> None:
    body = orjson.dumps({"task": "proj.add", "id": "x", "args": [1]})
    with pytest.raises(ProtocolError, match="protocol 1"):
        v2.decode(envelope.Envelope(body).dumps())
    pickled = envelope.Envelope(
        b"\x80\x04", {"task": "proj.add", "id": "x"}, "application/x-python-serialize"
    )
    with pytest.raises(ProtocolError, match="only JSON"):
        v2.decode(pickled.dumps())


def test_encode_then_decode_round_trips_a_chain() -> None:
    step = {
        "t": "task",
        "id": "s2",
        "task": "proj.mul",
        "args": [3],
        "kwargs": {},
        "opts": {},
        "imm": False,
        "links": [],
        "errbacks": [],
    }
    m = Message("s1", "proj.add", [1, 2], {}, queue="q", eta=time.time() + 5, chain=[step])
    back = v2.decode(v2.encode(m))
    assert (back.id, back.task, back.args, back.queue, back.chain) == (
        "s1",
        "proj.add",
        [1, 2],
        "q",
        [step],
    )
    assert back.eta == pytest.approx(m.eta, abs=0.001)


def test_celery_reads_our_result_meta_and_we_read_celerys(celery_app: Celery) -> None:
    backend = Backend(celery_app)
    ok = orjson.loads(results.dumps(results.Meta("a", "SUCCESS", 5, None, time.time())))
    assert ok["status"] == "SUCCESS" and ok["result"] == 5 and ok["task_id"] == "a"
    assert ok["children"] == [] and datetime.fromisoformat(ok["date_done"]).tzinfo is not None
    try:
        raise ValueError("boom")
    except ValueError as exc:
        info = exception_to_info(exc)
    failed = orjson.loads(results.dumps(results.Meta("b", "FAILURE", None, info, time.time())))
    rebuilt = backend.exception_to_python(failed["result"])
    assert type(rebuilt) is ValueError and str(rebuilt) == "boom"
    assert "ValueError" in failed["traceback"]
    # what Celery writes (its own meta builder), read back by aiotask
    celery_meta = backend._get_result_meta(
        backend.prepare_exception(KeyError("k")), "FAILURE", None, None, format_date=True
    )
    celery_meta["task_id"] = "c"
    read = results.loads(orjson.dumps(celery_meta))
    assert read.state == "FAILURE" and read.exception is not None
    assert read.exception.type == "builtins.KeyError" and read.exception.args == ("k",)


def test_kombu_redis_list_names_and_key_prefix() -> None:
    from aiotask.brokers.kombu_redis import list_key, split_prefix

    assert [list_key("q", p) for p in (0, 2, 3, 5, 6, 9, 12)] == [
        "q",
        "q",
        "q\x06\x163",
        "q\x06\x163",
        "q\x06\x166",
        "q\x06\x169",
        "q\x06\x169",
    ]
    assert split_prefix("redis://h:6379/0?global_keyprefix=ns:&socket_timeout=5") == (
        "redis://h:6379/0?socket_timeout=5",
        "ns:",
    )
    assert split_prefix("redis://h/0") == ("redis://h/0", "")


def test_celery_compat_from_the_environment_and_its_default_queue() -> None:
    from aiotask.settings import Settings

    on = Settings.from_env({"AIOTASK_CELERY_COMPAT": "true"})
    assert on.celery_compat and on.default_queue == "celery"  # where Celery producers send
    named = Settings.from_env({"AIOTASK_CELERY_COMPAT": "1", "AIOTASK_DEFAULT_QUEUE": "jobs"})
    assert named.default_queue == "jobs"
    assert Settings.from_env({}, celery_compat=True, default_queue="q").default_queue == "q"
    off = Settings.from_env({})
    assert not off.celery_compat and off.default_queue == "default"
