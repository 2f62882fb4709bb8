"""The chaos table: one row per broker, in Markdown, plus the details behind a failure."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.chaos.scenario import Profile, Tally

HEADER = (
    "| broker | faults | tasks sent | completed | lost | canvases | stuck | executions "
    "| duplicates (bound) | worker kills | worker deaths | recover s (max) | drain s |"
)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _recover(t: Tally) -> str:
    parts = []
    for fault, values in t.recover.items():
        if fault == "sigstop":
            continue
        worst = None if any(v is None for v in values) else max(values, default=0.0)  # type: ignore[type-var]
        parts.append(f"{fault} {_seconds(worst)}")
    return ", ".join(parts) or "-"


def _faults(t: Tally) -> str:
    counts: dict[str, int] = {}
    for f in t.faults:
        counts[f] = counts.get(f, 0) + 1
    named = [f"kill -9 x{t.kills}"] if t.kills else []
    named += [f"{f} x{n}" for f, n in counts.items()]
    return ", ".join(named) or "none"


def row(t: Tally) -> str:
    if t.skipped or t.error:
        why = f"skipped: {t.skipped}" if t.skipped else f"ERROR: {t.error}"
        return f"| {t.broker} | {why[:300]} |" + " |" * 11
    dup = f"{t.duplicates} ({t.dup_bound}{'' if t.dup_ok else ', EXCEEDED'})"
    cells = [
        t.broker, _faults(t), str(t.sent), str(t.completed), str(t.lost_count),
        str(t.canvases), str(len(t.stuck)), str(t.executions), dup, str(t.kills),
        str(t.running_deaths), _recover(t), _seconds(t.drain),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def table(tallies: list[Tally]) -> str:
    rule = "|" + "---|" * 13
    return "\n".join([HEADER, rule, *(row(t) for t in tallies)])


def details(tallies: list[Tally]) -> str:
    """What went wrong, per broker: lost ids, stuck canvases, workers that exited by themselves."""
    out: list[str] = []
    for t in tallies:
        lines = [f"  lost: {x}" for x in t.lost]
        lines += [f"  stuck: {x}" for x in t.stuck[:10]]
        died = [x for x in t.worker_deaths if "after ready" in x]
        lines += [f"  {x}" for x in died[:10]]
        refused = len(t.worker_deaths) - len(died)
        if refused:
            lines.append(f"  {refused} worker starts gave up while the broker was down (exit 1)")
        if any(code != 0 for code in t.exit_codes):
            lines.append(f"  exit codes at the final warm shutdown: {t.exit_codes}")
        if t.send_retries:
            lines.append(f"  producer send retries: {t.send_retries}")
        if lines:
            out.append(f"{t.broker}:")
            out += lines
    return "\n".join(out)


def summary(profile: Profile, tallies: list[Tally], commit: str, seconds: float) -> str:
    p = profile
    head = (
        f"chaos profile {p.name} on {commit}: {p.tasks} tasks over {p.duration:.0f} s, a canvas "
        f"every {p.canvas_every} s, kill -9 a worker every {p.kill_every} s, {p.workers} workers "
        f"x {p.concurrency} concurrency, lease {p.lease:.0f} s, outages {p.outage:.0f} s; "
        f"{seconds:.0f} s in all"
    )
    parts = [head, "", table(tallies)]
    more = details(tallies)
    if more:
        parts += ["", more]
    return "\n".join(parts)
