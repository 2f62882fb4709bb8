"""Pure schedule maths: cron in time zones (DST), intervals, validation, catch-up and overlap."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from aiotask.beat.entry import Entry, entry_from_mapping, plan
from aiotask.beat.schedule import Cron, Every, make_schedule
from aiotask.exceptions import ConfigurationError

PARIS = ZoneInfo("Europe/Paris")


def ts(*args: int, tz: ZoneInfo = PARIS) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[arg-type,misc]


def local(t: float, tz: ZoneInfo = PARIS) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


def take(sched: Cron | Every, after: float, n: int) -> list[float]:
    out, it = [], sched.slots(after)
    for _ in range(n):
        out.append(next(it))
    return out


def test_cron_in_a_time_zone() -> None:
    c = Cron("30 2 * * *", "Europe/Paris")
    assert local(c.next_after(ts(2026, 1, 10, 12, 0))) == "2026-01-11T02:30:00+01:00"


def test_spring_forward_skipped_time_runs_once_at_the_jump() -> None:
    # 2026-03-29: Paris clocks jump from 02:00 to 03:00; 02:30 does not exist that night
    slots = take(Cron("30 2 * * *", "Europe/Paris"), ts(2026, 3, 28, 12, 0), 3)
    assert [local(s) for s in slots] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_fall_back_repeated_time_runs_once() -> None:
    # 2026-10-25: 02:30 happens twice in Paris; a fixed-time entry fires at the first only
    slots = take(Cron("30 2 * * *", "Europe/Paris"), ts(2026, 10, 24, 12, 0), 2)
    assert [local(s) for s in slots] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_stepped_cron_follows_real_time_through_the_repeated_hour() -> None:
    slots = take(Cron("*/30 * * * *", "Europe/Paris"), ts(2026, 10, 25, 1, 50), 4)
    gaps = {b - a for a, b in itertools.pairwise(slots)}
    assert gaps == {1800.0}


def test_seconds_field_and_aliases() -> None:
    after = ts(2026, 5, 1, 0, 0, 1, tz=ZoneInfo("UTC"))
    assert take(Cron("*/20 * * * * *"), after, 2) == [after + 19, after + 39]
    assert local(Cron("@hourly").next_after(after), ZoneInfo("UTC")) == "2026-05-01T01:00:00+00:00"
    assert Cron("@daily").next_after(after) == ts(2026, 5, 2, tz=ZoneInfo("UTC"))


def test_every_is_aligned_so_all_beats_agree() -> None:
    e = Every(30)
    assert take(e, 1000.0, 3) == [1020.0, 1050.0, 1080.0]
    assert take(e, 1019.9, 1) == take(e, 1005.0, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 * * * *'"),
        ({"cron": "* * *"}, "expected 5 fields"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": 0}, "positive number of seconds"),
        ({"every": 0.5}, "every=0.5 would fire more than once a second"),
        ({"every": 5, "tz": "UTC"}, "tz= only applies to cron"),
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= or every="),
    ],
)
def test_bad_schedules_are_refused_with_a_clear_error(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("*", r"\*")):
        make_schedule(**kwargs)  # type: ignore[arg-type]


def test_beat_schedule_mapping_is_validated() -> None:
    e = entry_from_mapping(
        "nightly", {"task": "proj.report", "cron": "30 2 * * *", "tz": "Europe/Paris", "args": [1]}
    )
    assert (e.task, e.args, e.schedule) == ("proj.report", (1,), Cron("30 2 * * *", "Europe/Paris"))
    with pytest.raises(ConfigurationError, match=r"unknown key.*cronn"):
        entry_from_mapping("x", {"task": "t", "cronn": "* * * * *"})
    with pytest.raises(ConfigurationError, match="overlap must be"):
        entry_from_mapping("x", {"task": "t", "every": 1, "overlap": "never"})
    assert entry_from_mapping("nightly", e.to_dict()) == e


def entry(**kw: object) -> Entry:
    return Entry(name="e", task="t", schedule=Every(10), **kw)  # type: ignore[arg-type]


def test_slot_ids_and_jitter_are_the_same_on_every_beat() -> None:
    a, b = entry(jitter=5.0), entry(jitter=5.0)
    assert a.slot_id(100.0) == b.slot_id(100.0) != a.slot_id(110.0)
    assert a.send_at(100.0) == b.send_at(100.0)
    assert 100.0 <= a.send_at(100.0) < 105.0


def test_a_new_entry_starts_with_its_next_slot() -> None:
    p = plan(entry(), None, 105.0)
    assert (p.send, p.through, p.wake) == ([], None, 110.0)


def test_on_time_slot_is_sent() -> None:
    p = plan(entry(), 100.0, 110.2)
    assert (p.send, p.skipped, p.through, p.wake) == ([110.0], {}, 110.0, 120.0)


def test_catch_up_latest_sends_the_newest_and_counts_the_rest() -> None:
    p = plan(entry(), 100.0, 155.0)
    assert (p.send, p.skipped, p.through) == ([150.0], {"missed": 4}, 150.0)


def test_catch_up_all_sends_every_missed_slot_up_to_the_limit() -> None:
    p = plan(entry(catch_up="all"), 100.0, 155.0)
    assert p.send == [110.0, 120.0, 130.0, 140.0, 150.0]
    p = plan(entry(catch_up="all", catch_up_limit=2), 100.0, 155.0)
    assert (p.send, p.skipped) == ([140.0, 150.0], {"missed (catch_up_limit)": 3})


def test_catch_up_none_drops_missed_slots() -> None:
    p = plan(entry(catch_up="none"), 100.0, 155.0)
    assert (p.send, p.skipped, p.through) == ([], {"missed": 5}, 150.0)
    assert plan(entry(catch_up="none"), 100.0, 110.5).send == [110.0]


def test_cron_catch_up_counts_without_listing_every_slot() -> None:
    e = Entry(name="c", task="t", schedule=Cron("* * * * *"))
    day = 86400.0
    p = plan(e, 0.0, day + 30)
    assert (p.send, p.skipped) == ([day], {"missed": 1439})


def test_expired_slots_are_skipped_with_their_reason() -> None:
    p = plan(entry(expires=3.0), 100.0, 115.0)
    assert (p.send, p.skipped, p.through) == ([], {"expired": 1}, 110.0)


def test_paused_entries_skip_and_move_on() -> None:
    p = plan(entry(paused=True), 100.0, 110.0)
    assert (p.send, p.skipped, p.through) == ([], {"paused": 1}, 110.0)


def test_overlap_skip_and_queue() -> None:
    p = plan(entry(overlap="skip"), 100.0, 110.0, previous_running=True)
    assert (p.send, p.skipped, p.through) == ([], {"overlap": 1}, 110.0)
    held = plan(entry(overlap="queue"), 100.0, 110.0, previous_running=True)
    assert (held.send, held.through, held.wake) == ([], None, 111.0)
    later = plan(entry(overlap="queue"), 100.0, 125.0, previous_running=False)
    assert (later.send, later.skipped) == ([120.0], {"missed": 1})
    assert plan(entry(overlap="allow"), 100.0, 110.0, previous_running=True).send == [110.0]


def test_utc_default() -> None:
    assert Cron("0 0 * * *").next_after(0.0) == datetime(1970, 1, 2, tzinfo=UTC).timestamp()


def test_slot_ids_are_uuid5_of_entry_and_instant() -> None:
    """The fast path computes the same ids as uuid.uuid5 (ids of running systems must not
    change between versions: a slot sent by an older beat is the same task)."""
    import uuid

    from aiotask.beat.entry import SLOT_NAMESPACE

    for name in ("a", "proj.tick", "émoji ✓"):
        e = Entry(name=name, task="t", schedule=Every(1))
        for slot in (0.0, 1.5, 1795983108.0, 1795983108.123):
            ms = round(slot * 1000)
            assert e.slot_id(slot) == str(uuid.uuid5(SLOT_NAMESPACE, f"{name}\x00{ms}"))
