"""Worker logging: JSON lines, a log file, the user's handlers kept, task name and id on every
line logged while a task runs, and never a password from a URL."""

from __future__ import annotations

import io
import logging
import logging.config
from typing import TYPE_CHECKING

import orjson
import pytest

from aiotask import App, _log
from aiotask.cli._observe import _running
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "hunter2-s3cret"
URL = f"redis://admin:{SECRET}@cache.example:6379/0"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, settings = root.handlers[:], root.level, _log.current_settings
    yield
    _log.current_settings = settings
    for handler in _log._all_handlers():  # pytest's capture handlers too: leave them as found
        for f in [f for f in handler.filters if isinstance(f, _log.RecordFilter)]:
            handler.removeFilter(f)
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def make_app() -> App:
    app = App("logged", broker="memory://", backend="memory://")
    user_log = logging.getLogger("user.tasks")

    @app.task(name="logged.work")
    async def work(n: int) -> int:
        user_log.info("working on %d against %s", n, URL)
        return n

    @app.task(name="logged.broken")
    async def broken() -> None:
        raise ConnectionError(f"cannot reach {URL}")

    return app


async def run_tasks(app: App) -> tuple[str, str]:
    async with app, start_worker(app):
        ok = await app.send_task("logged.work", args=[7])
        assert await ok.get(timeout=10) == 7
        bad = await app.send_task("logged.broken")
        with pytest.raises(ConnectionError):
            await bad.get(timeout=10)
    return ok.id, bad.id


async def test_json_logfile_has_task_fields_and_no_secret(tmp_path: Path) -> None:
    logfile = tmp_path / "worker.log"
    _log.configure("INFO", fmt="json", logfile=str(logfile), current=_running)
    logging.getLogger("user.setup").warning("broker is %s", URL)
    ok_id, bad_id = await run_tasks(make_app())
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = logfile.read_text()
    assert SECRET not in text
    records = [orjson.loads(line) for line in text.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    user = [r for r in records if r["logger"] == "user.tasks"]
    assert user, records
    assert user[0]["task_name"] == "logged.work"
    assert user[0]["task_id"] == ok_id
    assert "admin:***@cache.example" in user[0]["message"]
    failed = [r for r in records if r.get("task_id") == bad_id and r["level"] == "ERROR"]
    assert failed, records
    assert "ConnectionError" in failed[0]["exc"]
    setup = [r for r in records if r["logger"] == "user.setup"]
    assert setup and "task_id" not in setup[0]


async def test_text_format_appends_task_name_and_id(tmp_path: Path) -> None:
    logfile = tmp_path / "worker.log"
    _log.configure("INFO", fmt="text", logfile=str(logfile), current=_running)
    ok_id, _ = await run_tasks(make_app())
    text = logfile.read_text()
    assert SECRET not in text
    line = next(x for x in text.splitlines() if "working on 7" in x)
    assert line.endswith(f"[logged.work {ok_id}]")


async def test_user_handlers_are_kept_and_redacted() -> None:
    stream = io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"mine": {"format": "MINE %(levelname)s %(task_id)s %(message)s"}},
            "handlers": {
                "mine": {"class": "logging.StreamHandler", "stream": stream, "formatter": "mine"}
            },
            "root": {"handlers": ["mine"], "level": "WARNING"},
        }
    )
    mine = logging.getLogger().handlers[0]
    _log.configure(None, keep=True, current=_running)
    assert logging.getLogger().handlers == [mine]
    assert logging.getLogger().level == logging.WARNING  # no -l: the user's level stays
    _, bad_id = await run_tasks(make_app())
    out = stream.getvalue()
    assert "MINE ERROR" in out
    assert f"MINE ERROR {bad_id}" in out  # %(task_id)s works in the user's own format
    assert "cannot reach redis://admin:***@cache.example" in out  # the traceback, redacted
    assert SECRET not in out


def test_keep_with_level_and_logfile_adds_a_handler(tmp_path: Path) -> None:
    stream = io.StringIO()
    mine = logging.StreamHandler(stream)
    logging.getLogger().handlers[:] = [mine]
    logfile = tmp_path / "also.log"
    _log.configure("DEBUG", keep=True, logfile=str(logfile))
    root = logging.getLogger()
    assert root.handlers[0] is mine and len(root.handlers) == 2
    assert root.level == logging.DEBUG
    logging.getLogger("x").debug("to %s", URL)
    assert SECRET not in stream.getvalue() and "admin:***@" in stream.getvalue()
    assert "admin:***@" in logfile.read_text()


def test_replace_drops_other_root_handlers() -> None:
    logging.getLogger().handlers[:] = [logging.StreamHandler(io.StringIO())]
    _log.configure("INFO")
    (only,) = logging.getLogger().handlers
    assert isinstance(only.formatter, logging.Formatter)
    assert any(isinstance(f, _log.RecordFilter) for f in only.filters)


def test_bad_format_args_do_not_raise_from_the_filter(tmp_path: Path) -> None:
    logfile = tmp_path / "worker.log"
    _log.configure("INFO", logfile=str(logfile))
    handler = logging.getLogger().handlers[0]
    handler.handleError = lambda record: None  # type: ignore[method-assign]
    logging.getLogger("x").info("two %s %s", "one")  # must not raise here
    logging.getLogger("x").info("fine %s", URL)
    assert "fine redis://admin:***@" in logfile.read_text()
