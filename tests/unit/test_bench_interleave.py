"""The interleaved ratio benchmarks' arithmetic (benchmarks/interleave.py), on made-up samples."""

from __future__ import annotations

import math

from benchmarks.interleave import _at, ratio


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
