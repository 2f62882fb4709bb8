"""Pure parts of queue and dead-letter administration: Redis key parsing, filters, the
queues an app names, entry rendering, RabbitMQ's dead-letter headers."""

from __future__ import annotations

import time

from aiotask import App
from aiotask.brokers import DeadLetter
from aiotask.brokers import _rabbitmq_topology as topo
from aiotask.brokers._redis_admin import queue_match, queue_of
from aiotask.deadletters import _Filter, _info, configured_queues
from aiotask.protocol import Message, encode


def test_redis_keys_name_their_queue_and_nothing_else() -> None:
    assert queue_of("p", b"p:{default}:s0") == "default"
    assert queue_of("p", "p:{a:b}:dead") == "a:b"
    assert queue_of("p", "p:{we}ird}:delayed") == "we}ird"
    assert queue_of("p", "p:{q}:consumers") is None  # not a queue's message key
    assert queue_of("p", "p:{q}:pub:abc") is None
    assert queue_of("p", "p:result:x") is None
    assert queue_of("p", "other:{q}:s0") is None
    assert queue_of("p", "p:{}:s0") is None


def test_redis_scan_pattern_escapes_glob_characters_of_the_prefix() -> None:
    assert queue_match("aiotask") == "aiotask:{*}:*"
    assert queue_match("a*b?[c]\\") == r"a\*b\?\[c\]\\:{*}:*"


def test_filters_match_task_globs_reasons_and_ids() -> None:
    good = _info(DeadLetter("id1", encode(Message("id1", "proj.resize")), "Timed Out"), "q")
    junk = _info(DeadLetter("id2", b"\x00junk", "undecodable: x"), "q")
    assert good.queue == "q" and good.task == "proj.resize"
    assert junk.task is None and junk.message is None
    assert _Filter(None, "proj.*", None)(good)
    assert not _Filter(None, "proj.*", None)(junk)  # no task name: never matches a task filter
    assert not _Filter(None, "proj.resiz", None)(good)
    assert _Filter(None, None, "timed out")(good)
    assert _Filter(None, None, "UNDECODABLE")(junk)
    assert _Filter(frozenset({"id2"}), None, None)(junk)
    assert not _Filter(frozenset({"id2"}), None, None)(good)


def test_entries_render_for_list_and_show() -> None:
    message = Message("id1", "proj.add", args=[1, 2], kwargs={"k": 3}, priority=7, retries=2)
    good = _info(DeadLetter("id1", encode(message), "poison", "q", 12.5), "q")
    assert good.to_dict() == {
        "id": "id1",
        "task": "proj.add",
        "queue": "q",
        "reason": "poison",
        "died_at": 12.5,
    }
    full = good.to_dict(full=True)
    assert (full["args"], full["kwargs"], full["priority"], full["retries"]) == (
        [1, 2],
        {"k": 3},
        7,
        2,
    )
    junk = _info(DeadLetter("id2", b"\x00junk", "undecodable"), "q").to_dict(full=True)
    assert junk["task"] is None and "junk" in junk["body"]


def test_configured_queues_are_default_routes_and_task_queues() -> None:
    app = App("t", broker="memory://", backend="memory://", task_routes={"proj.*": "routed"})

    @app.task(name="proj.img", queue="images")
    async def img() -> None: ...

    assert configured_queues(app) == ["default", "images", "routed"]


def test_rabbitmq_dead_headers_carry_a_unique_id_and_the_time() -> None:
    before = time.time()
    one, two = topo.dead_headers(3, "poison"), topo.dead_headers(3, "poison")
    assert one[topo.HEADER_REASON] == "poison" and one[topo.HEADER_DELIVERIES] == 3
    ident, died = topo.dead_identity(one)
    assert ident and ident != topo.dead_identity(two)[0]
    assert died is not None and before - 1 <= died <= time.time() + 1
    assert topo.dead_identity(None) == (None, None)
    assert topo.dead_identity({topo.HEADER_DEAD_ID: b"abc"}) == ("abc", None)
