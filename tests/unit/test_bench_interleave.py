"""The interleaved ratio benchmarks' arithmetic (benchmarks/interleave.py), on made-up samples."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from benchmarks.events_ratio import variants
from benchmarks.harness import Measurement
from benchmarks.interleave import _at, interleave, ratio

if TYPE_CHECKING:
    from benchmarks.frameworks import Framework


def test_cpu_is_interpolated_between_the_samples_around_a_mark() -> None:
    samples = [(10.0, 1.0), (10.1, 1.0), (10.2, 1.5), (10.3, 2.0)]
    assert math.isclose(_at(samples, 10.15), 1.25)
    assert _at(samples, 10.2) == 1.5
    assert _at(samples, 9.0) == 1.0  # before the first sample: the first
    assert _at(samples, 11.0) == 2.0  # after the last: the last
    # the drain's CPU is the difference at its two marks: start-up before it is left out
    assert math.isclose(_at(samples, 10.3) - _at(samples, 10.15), 0.75)


def test_ratio_is_of_the_medians_with_the_per_round_range() -> None:
    r = ratio([9.0, 10.0, 30.0], [10.0, 10.0, 20.0])
    assert r.median == 1.0  # 10 / 10, the medians; not the median of the per-round ratios
    assert (r.low, r.high) == (0.9, 1.5)
    assert "1.000 (per round 0.900-1.500)" in str(r)


def test_ratio_skips_rounds_without_a_figure() -> None:
    r = ratio([10.0, 10.0], [float("nan"), 5.0])
    assert (r.low, r.high) == (2.0, 2.0)
    assert math.isnan(ratio([1.0], [float("nan")]).low)


class _Recorder:
    """Stands in for the harness's Runner: records when each drain starts and ends."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []

    async def measure(self, fw: Framework, workload: str, repeat: int) -> Measurement:
        self.log.append(("start", fw.key, repeat))
        await asyncio.sleep(0.01)
        self.log.append(("end", fw.key, repeat))
        m = Measurement(fw.key, workload, repeat, "ns")
        m.values.update(drain=1000.0, cpu_us_per_task=50.0, sys_us_per_task=5.0)
        return m


def _run(together: bool) -> list[tuple[str, str, int]]:
    runner = _Recorder()
    series = asyncio.run(
        interleave(runner, variants(), 2, "t", together=together)  # type: ignore[arg-type]
    )
    assert series is not None
    assert [len(s.cpu_us) for s in series.values()] == [2, 2]
    return runner.log


def test_one_after_the_other_the_order_is_rotated_every_round() -> None:
    starts = [(key, r) for what, key, r in _run(False) if what == "start"]
    assert starts == [
        ("aiotask", 0),
        ("aiotask-events", 0),
        ("aiotask-events", 1),
        ("aiotask", 1),
    ]


def test_together_both_drains_of_a_round_overlap_and_rounds_do_not() -> None:
    log = _run(True)
    # round 0: both start before either ends; round 1 starts after both of round 0 ended
    assert [w for w, _, _ in log] == ["start", "start", "end", "end"] * 2
    assert [r for _, _, r in log] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_control_variant_is_the_same_worker_without_events() -> None:
    off, again = variants(control=True)
    assert again.key != off.key
    assert "-E" not in again.worker_argv("drain", "ns")
    assert variants()[1].worker_argv("drain", "ns")[-1] == "-E"
