"""`--workers N`: parsing, and what each child's command line gets (pure, no process)."""

from __future__ import annotations

import os

import pytest

from aiotask import App
from aiotask.cli._run_worker import WorkerOptions
from aiotask.cli._supervisor import child_argv, pool_size
from aiotask.worker.supervisor import parse_workers

OPTS = WorkerOptions(
    app="proj:app", queues="a,b", concurrency=7, processes=None, prefetch=None, name="",
    loglevel="INFO", max_tasks_per_child=None, max_memory_per_child=None, metrics_port=9100,
    log_format="text", logfile="", keep_logging=False, embed_beat=True, events=True,
)  # fmt: skip


def test_workers_is_a_positive_number_or_auto() -> None:
    assert parse_workers("3") == 3
    assert parse_workers("auto") == (os.cpu_count() or 1)
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError):
            parse_workers(bad)


def test_each_child_gets_the_options_its_name_and_only_the_first_beats() -> None:
    first, second = child_argv(OPTS, 1, "w-1", 2), child_argv(OPTS, 2, "w-2", 2)
    assert first[first.index("-n") + 1] == "w-1" and second[second.index("-n") + 1] == "w-2"
    assert "--beat" in first and "--beat" not in second
    assert second[second.index("-Q") + 1] == "a,b" and second[second.index("-c") + 1] == "7"
    assert "-E" in second and "--workers" not in second
    ports = [argv[argv.index("--metrics-port") + 1] for argv in (first, second)]
    assert ports == ["9100", "9101"]  # one port each


def test_pool_processes_are_per_child_and_auto_is_shared_out() -> None:
    app = App("x", broker="memory://")
    cpus = os.cpu_count() or 1
    assert pool_size(app, 3, 4) == 3  # -P given: per child
    assert pool_size(app, None, 1) == cpus
    assert pool_size(app, 0, cpus * 2) == 1  # never below one
    assert pool_size(app, None, 2) == max(1, cpus // 2)
