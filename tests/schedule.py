"""The order in which `make test` hands test files to its processes: the slowest first.

`--dist loadfile` gives each file's tests to one process. By default pytest-xdist queues the
files with the most tests first, so the slow files with few tests (worker processes, private
servers, beat runs) came last, and one process ran them alone while the other idled. Handed
out longest first, the last files are short ones and both processes finish together.

tests/durations.txt holds each file's seconds (setup, call and teardown of its tests) from one
run; `python -m tests.schedule REPORT.xml` rewrites it from a JUnit report
(`pytest --junitxml=REPORT.xml`). `make test` passes --no-loadscope-reorder so that xdist keeps
this order. A file the list does not know (a new one) goes first, as if slow; a stale list costs
balance only, never a test.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

DURATIONS = Path(__file__).with_name("durations.txt")


def load(path: Path = DURATIONS) -> dict[str, float]:
    """`tests/x.py` -> seconds, from lines `SECONDS PATH` (# comments and blank lines skipped)."""
    weights: dict[str, float] = {}
    if not path.exists():
        return weights
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            seconds, name = line.split(maxsplit=1)
            weights[name] = float(seconds)
    return weights


def slowest_first(items: list[pytest.Item], weights: dict[str, float]) -> None:
    """Sort `items` by their file's seconds, longest first; tests keep their order in a file."""
    unknown = float("inf")
    items.sort(key=lambda item: -weights.get(item.nodeid.split("::", 1)[0], unknown))


def from_junit(report: Path) -> dict[str, float]:
    """Per-file seconds from a JUnit XML report (pytest writes one `testcase` per test)."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).iter("testcase"):  # noqa: S314 - our own pytest's report
        module = case.get("classname", "")
        # classname is the dotted module path, plus a class name for tests in a class
        parts = [part for part in module.split(".") if part]
        while parts and not Path(*parts).with_suffix(".py").exists():
            parts.pop()
        if parts:
            seconds[str(Path(*parts).with_suffix(".py"))] += float(case.get("time", "0"))
    return dict(seconds)


def main(argv: list[str]) -> None:
    """Rewrite tests/durations.txt from the JUnit reports named on the command line."""
    total: dict[str, float] = defaultdict(float)
    for report in argv:
        for name, seconds in from_junit(Path(report)).items():
            total[name] = max(total[name], seconds)
    lines = [
        "# seconds per test file, from `pytest --junitxml`; `python -m tests.schedule REPORT.xml`",
        "# rewrites it. Only the order matters: make test hands out the slowest files first.",
    ]
    lines += [f"{s:8.1f} {name}" for name, s in sorted(total.items(), key=lambda kv: -kv[1])]
    DURATIONS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
