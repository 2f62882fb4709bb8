"""Which acks of a batch may be one basic.ack(multiple=True): every unsettled tag up to it."""

from __future__ import annotations

from aiotask.brokers._rabbitmq_delivery import Unsettled


def tracked(*tags: int) -> Unsettled:
    u = Unsettled()
    for tag in tags:
        u.add(tag)
    return u


def test_a_batch_with_every_lowest_tag_is_covered_up_to_its_first_gap() -> None:
    u = tracked(1, 2, 3, 4, 5, 6)
    assert u.covered({1, 2, 3, 5}) == 3  # 4 is still running: 5 is acked on its own
    u.discard(5)
    assert u.covered({6}) is None  # 4 is below it
    assert u.covered({4}) == 4  # only 4 itself: 6 was not in this batch


def test_settled_tags_are_skipped_and_a_batch_without_the_lowest_covers_nothing() -> None:
    u = tracked(10, 11, 12, 13)
    u.discard(10)  # rejected or requeued by republish
    assert u.covered({12, 13}) is None
    assert u.covered({11, 13}) == 11
    u.discard(13)
    assert u.covered({12}) == 12
    assert u.covered({99}) is None  # nothing left


def test_an_empty_tracker_covers_nothing() -> None:
    assert Unsettled().covered({1}) is None


def test_keyed_deliveries_are_counted_per_key_queue_until_settled() -> None:
    u = Unsettled()
    u.add(1, "p.q.k.a")
    u.add(2)
    u.add(3, "p.q.k.a")
    assert u.held == {"p.q.k.a": 2}
    assert u.covered({1, 2}) == 2  # a multiple ack settles the keyed one it covers
    assert u.held == {"p.q.k.a": 1}
    u.discard(3)
    u.discard(3)  # settled twice (a covered tag is discarded again): counted once
    assert u.held == {"p.q.k.a": 0}


def test_the_buffer_hands_out_key_queues_in_turns_whatever_arrived_first() -> None:
    """A prefetch filled by key a before key b's consumer started does not all run first."""
    from types import SimpleNamespace

    from aiotask.brokers._rabbitmq_consume import Consumer
    from aiotask.settings import Settings

    con = Consumer("amqp://x", Settings(), "app", None)  # type: ignore[arg-type]
    u = Unsettled()
    deliver = {source: con._callback("q", u, source) for source in ("p.q.k.a", "p.q.k.b", None)}
    channel = SimpleNamespace(is_closed=False)
    arrivals = [("p.q.k.a", i) for i in range(4)] + [("p.q.k.b", 0), (None, 0), ("p.q.k.b", 1)]
    for tag, (source, i) in enumerate(arrivals, 1):
        props = SimpleNamespace(headers={}, message_id=f"{source}-{i}", priority=0)
        props.content_type = props.content_encoding = None
        msg = SimpleNamespace(
            body=b"", channel=channel, delivery_tag=tag, redelivered=False,
            header=SimpleNamespace(properties=props),
        )  # fmt: skip
        deliver[source](msg)  # type: ignore[arg-type]
    order = [item[3].message_id for item in con.take(["q"], 3)]
    assert order == ["p.q.k.a-0", "p.q.k.b-0", "None-0"]
    order = [item[3].message_id for item in con.take(["q"], 4)]
    assert order == ["p.q.k.a-1", "p.q.k.b-1", "p.q.k.a-2", "p.q.k.a-3"]
