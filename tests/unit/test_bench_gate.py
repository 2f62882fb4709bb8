"""The smoke benchmark's gate rules (benchmarks/harness.py `gate`), on made-up aggregates."""

from __future__ import annotations

from benchmarks.gate import IDLE_RSS_BOUND_MIB, gate

ALL = ("aiotask", "aiotask-sqlite", "celery")


def fig(value: float) -> dict[str, float]:
    return {"median": value, "min": value, "max": value}


def agg(
    sqlite_p50: float = 1.0, rss: float = 30.0, drain: float = 10.0
) -> dict[str, dict[str, dict[str, float]]]:
    return {
        "aiotask": {"drain": fig(drain), "p50_ms": fig(0.5), "idle_rss_mib": fig(rss)},
        "aiotask-sqlite": {"p50_ms": fig(sqlite_p50), "idle_rss_mib": fig(30.0)},
        "celery": {"drain": fig(5.0), "p50_ms": fig(2.0), "idle_rss_mib": fig(140.0)},
    }


def test_a_healthy_run_passes() -> None:
    assert gate(agg(), ALL) == []


def test_sqlite_round_trip_over_three_times_redis_fails() -> None:
    assert gate(agg(sqlite_p50=1.4), ALL) == []
    [why] = gate(agg(sqlite_p50=1.6), ALL)
    assert "SQLite/Redis = 3.20" in why


def test_idle_rss_over_the_bound_fails_only_for_aiotask_rows() -> None:
    [why] = gate(
        agg(rss=IDLE_RSS_BOUND_MIB["aiotask"] + 1), ALL
    )  # Celery's 140 MiB is not ours to gate
    assert why.startswith("idle_rss_mib: aiotask idles")


def test_the_celery_ratios_and_missing_pairs_still_fail() -> None:
    assert any("aiotask/Celery" in f for f in gate(agg(drain=4.0), ALL))
    missing = agg()
    del missing["aiotask-sqlite"]["p50_ms"]
    assert gate(missing, ALL) == ["p50_ms: no aiotask SQLite/Redis pair of figures to compare"]
    assert gate(missing, ("aiotask", "celery")) == []  # a rule applies when its rows ran
