"""Defining periodic entries (`@app.periodic`, `beat_schedule`) and changing them at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from aiotask import App
from aiotask.beat.schedule import Cron, Every
from aiotask.exceptions import ConfigurationError, NotRegistered

if TYPE_CHECKING:
    from pathlib import Path


def make_app(**settings: Any) -> App:
    app = App("api", broker="memory://", backend="memory://", **settings)

    @app.periodic(cron="*/5 * * * *", tz="Europe/Paris", overlap="skip")
    @app.task(name="api.sweep")
    async def sweep() -> None:
        return None

    @app.task(name="api.other")
    async def other(n: int) -> int:
        return n

    return app


def test_periodic_and_beat_schedule_define_entries() -> None:
    app = make_app(beat_schedule={"tick": {"task": "api.other", "every": 30, "args": [1]}})
    sweep, tick = app.beat_entries["api.sweep"], app.beat_entries["tick"]
    assert (sweep.schedule, sweep.overlap) == (Cron("*/5 * * * *", "Europe/Paris"), "skip")
    assert (tick.schedule, tick.args) == (Every(30), (1,))


def test_definition_errors_are_raised_where_the_entry_is_written() -> None:
    app = App("bad", broker="memory://")
    with pytest.raises(ConfigurationError, match="bad cron expression"):

        @app.periodic(cron="* * * 13 *")
        @app.task
        async def a() -> None: ...

    with pytest.raises(ConfigurationError, match=r"goes above @app\.task"):
        app.periodic(every=5)(lambda: None)
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        App(
            "bad2",
            broker="memory://",
            beat_schedule={"x": {"task": "t", "cron": "@daily", "tz": "Nowhere"}},
        )


async def test_schedules_api_round_trip() -> None:
    app = make_app()
    async with app:
        info = await app.schedules.add("dyn", task="api.other", every=60, args=[3])
        assert (info.source, info.paused, info.schedule) == ("dynamic", False, "every 60s")
        names = [i.name for i in await app.schedules.list()]
        assert names == ["api.sweep", "dyn"]
        await app.schedules.pause("api.sweep")
        assert (await app.schedules.get("api.sweep")).paused is True
        await app.schedules.resume("api.sweep")
        assert (await app.schedules.get("api.sweep")).paused is False
        changed = await app.schedules.change("dyn", cron="0 * * * *")
        assert changed.schedule == "cron '0 * * * *' (UTC)"
        assert changed.entry["args"] == [3]
        r = await app.schedules.run_now("dyn")
        [d] = await app.broker.receive(["default"], 10)
        assert d.message_id == r.id
        await app.broker.ack([d])
        assert await app.schedules.remove("dyn") is True
        assert [i.name for i in await app.schedules.list()] == ["api.sweep"]
        with pytest.raises(NotRegistered, match=r"no\.such"):
            await app.schedules.add("x", task="no.such", every=5)
        with pytest.raises(ConfigurationError, match="defined in code"):
            await app.schedules.remove("api.sweep")
        with pytest.raises(ConfigurationError, match="no periodic entry named 'ghost'"):
            await app.schedules.pause("ghost")


MODULE = textwrap.dedent(
    """
    from aiotask import App

    app = App("cliapp")

    @app.periodic(every=3600)
    @app.task(name="cliapp.hourly")
    async def hourly() -> None: ...
    """
)


def run(tmp: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    env.update(AIOTASK_BROKER_URL=f"sqlite:///{tmp}/cli.db", PYTHONPATH=str(tmp))
    return subprocess.run(
        [sys.executable, "-m", "aiotask", *argv],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_schedule_cli(tmp_path: Path) -> None:
    (tmp_path / "cliapp.py").write_text(MODULE)
    added = run(tmp_path, "schedule", "add", "-A", "cliapp", "n1", "--task", "cliapp.hourly",
                "--cron", "30 2 * * *", "--tz", "Europe/Paris", "--json")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert orjson.loads(added.stdout)["schedule"] == "cron '30 2 * * *' (Europe/Paris)"
    assert run(tmp_path, "schedule", "-A", "cliapp", "pause", "n1").returncode == 0  # contract
    listed = run(tmp_path, "schedule", "list", "-A", "cliapp", "--json")
    entries = {e["name"]: e for e in orjson.loads(listed.stdout)}
    assert entries["n1"]["paused"] is True
    assert entries["cliapp.hourly"]["source"] == "code"
    assert entries["cliapp.hourly"]["next_run"] is not None
    bad = run(tmp_path, "schedule", "add", "-A", "cliapp", "n2", "--task", "cliapp.hourly",
              "--cron", "99 * * * *")  # fmt: skip
    assert bad.returncode == 2
    assert "bad cron expression '99 * * * *'" in bad.stderr
    removed = run(tmp_path, "schedule", "remove", "-A", "cliapp", "n1")
    assert removed.returncode == 0, removed.stderr
    assert "n1" not in run(tmp_path, "schedule", "list", "-A", "cliapp").stdout
    missing = run(tmp_path, "schedule", "list")
    assert missing.returncode == 2
    assert "missing -A/--app" in missing.stderr


def test_beat_refuses_an_unknown_task_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "badbeat.py").write_text(
        "from aiotask import App\n"
        "app = App('b', beat_schedule={'x': {'task': 'b.missing', 'every': 5}})\n"
    )
    done = run(tmp_path, "beat", "-A", "badbeat")
    assert done.returncode == 2
    assert "task 'b.missing' is not registered" in done.stderr


def test_more_than_once_a_second_is_refused_everywhere(tmp_path: Path) -> None:
    """At definition (App import: beat exits 2), at `schedule add`, and at beat start for a
    stored entry that no longer validates."""
    with pytest.raises(ConfigurationError, match="more than once a second"):
        make_app(beat_schedule={"fast": {"task": "api.other", "every": 0.2}})
    (tmp_path / "fastbeat.py").write_text(
        "from aiotask import App\n"
        "app = App('f', beat_schedule={'x': {'task': 'f.t', 'every': 0.5}})\n"
        "@app.task(name='f.t')\nasync def t() -> None: ...\n"
    )
    done = run(tmp_path, "beat", "-A", "fastbeat")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: periodic entry 'x': every=0.5 would fire more than once a second: "
        "the shortest interval is every=1 (one slot per second per entry)"
    ]
    (tmp_path / "cliapp.py").write_text(MODULE)
    added = run(tmp_path, "schedule", "add", "-A", "cliapp", "n3", "--task", "cliapp.hourly",
                "--every", "0.25")  # fmt: skip
    assert added.returncode == 2
    assert "every=0.25 would fire more than once a second" in added.stderr
    # an entry stored by hand (or an older version) is refused when a beat starts
    import sqlite3
    from contextlib import closing

    good = run(tmp_path, "schedule", "add", "-A", "cliapp", "n4", "--task", "cliapp.hourly",
               "--every", "60")  # fmt: skip
    assert good.returncode == 0, good.stderr
    with closing(sqlite3.connect(tmp_path / "cli.db")) as db, db:
        blob = db.execute("SELECT blob FROM beat_entries WHERE name = 'n4'").fetchone()[0]
        spec = {**orjson.loads(blob), "every": 0.5}
        db.execute("UPDATE beat_entries SET blob = ? WHERE name = 'n4'", (orjson.dumps(spec),))
    started = run(tmp_path, "beat", "-A", "cliapp")
    assert started.returncode == 2
    assert "stored periodic entry 'n4': every=0.5 would fire more than once" in started.stderr
