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
