"""The rules `make bench-smoke` fails on (see the harness docstring and docs/benchmarks.md)."""

from __future__ import annotations

#: Idle worker RSS bounds (MiB: the worker process and its children, before any task), per
#: row: measured once an idle worker loads only what it uses (2026-11-30: SQLite 27.5, Redis
#: 29.3 with redis-py 7.4, about 33.5 with redis-py 8 and the OpenTelemetry SDK installed,
#: which redis-py 8 then imports; RabbitMQ with Redis results 35.9), plus about 6 MiB for
#: library updates. Memory does not vary with the machine's load. See docs/benchmarks.md.
IDLE_RSS_BOUND_MIB = {"aiotask-sqlite": 33.5, "aiotask": 39.0, "aiotask-amqp": 42.0}
#: aiotask (SQLite) round trip p50 at most this many times aiotask (Redis)'s of the same run.
SQLITE_P50_FACTOR = 3.0


def gate(agg: dict[str, dict[str, dict[str, float]]], frameworks: tuple[str, ...]) -> list[str]:
    """Why aiotask fails the smoke gate (empty: it passes); each rule applies when its rows ran.

    - aiotask (Redis) vs Celery: drain not lower, p50 round trip not higher (ratios).
    - aiotask (SQLite) round trip p50 <= SQLITE_P50_FACTOR x aiotask (Redis)'s (a ratio).
    - each aiotask row's idle worker RSS (median) <= its IDLE_RSS_BOUND_MIB.
    """
    failures = []
    a = agg.get("aiotask", {})
    if "aiotask" in frameworks and "celery" in frameworks:
        c = agg.get("celery", {})
        for metric, higher_better in (("drain", True), ("p50_ms", False)):
            if metric not in a or metric not in c:
                failures.append(f"{metric}: no aiotask/Celery pair of figures to compare")
                continue
            ratio = a[metric]["median"] / c[metric]["median"]
            if (ratio < 1) if higher_better else (ratio > 1):
                failures.append(f"{metric}: aiotask/Celery = {ratio:.2f} (aiotask is slower)")
    if "aiotask" in frameworks and "aiotask-sqlite" in frameworks:
        q = agg.get("aiotask-sqlite", {})
        if "p50_ms" not in a or "p50_ms" not in q:
            failures.append("p50_ms: no aiotask SQLite/Redis pair of figures to compare")
        else:
            ratio = q["p50_ms"]["median"] / a["p50_ms"]["median"]
            if ratio > SQLITE_P50_FACTOR:
                failures.append(
                    f"p50_ms: aiotask SQLite/Redis = {ratio:.2f} (over {SQLITE_P50_FACTOR:g}x)"
                )
    for key in frameworks:
        rss, bound = agg.get(key, {}).get("idle_rss_mib"), IDLE_RSS_BOUND_MIB.get(key)
        if rss is not None and bound is not None and rss["median"] > bound:
            failures.append(
                f"idle_rss_mib: {key} idles at {rss['median']:.1f} MiB (bound {bound:g} MiB)"
            )
    return failures
