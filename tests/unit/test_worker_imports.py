"""What an idle `aiotask worker` on Redis holds in memory (issue 19: idle RSS).

Each check runs in a fresh interpreter, set up as `python -m aiotask.cli._run_worker` sets up
the worker (deferred imports, the app, its broker and backend, a Worker), without a server:
nothing here connects. docs/benchmarks.md has the RSS each module costs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: Never in a Redis worker's process: the CLI framework, other brokers' clients, the dashboard.
FOREIGN = (
    "typer",
    "click",
    "rich",
    "pydantic",
    "aio_pika",
    "aiormq",
    "pamqp",
    "asyncpg",
    "sqlite3",
    "starlette",
    "uvicorn",
    "jinja2",
    "prometheus_client",
    "opentelemetry.sdk.trace",
    "aiotask.dashboard",
    "aiotask.brokers.rabbitmq",
    "aiotask.brokers.postgres",
    "aiotask.brokers.sqlite",
)
#: Loaded on first use, not by an idle worker whose tasks do not need them.
ON_DEMAND = (
    "aiotask.worker._pool_child",  # the process pool: the first sync task
    "aiotask.worker._pool_process",
    "pickle",  # the pool's pipe, serializer="pickle"
    "aiotask.beat",  # beat_schedule, @app.periodic, --beat, app.schedules
    "zoneinfo",  # cron entries
    "cronsim",
    "aiotask.events",  # events on (-E, the `events` setting)
    "aiotask.history",  # the dashboard, events on
    "aiotask.deadletters",
    "aiotask.celery_compat",  # celery_compat=True
    "logging.handlers",  # --logfile
    "hmac",  # signing keys (hmac imports hashlib: OpenSSL's digests, 0.7 MiB)
    "secrets",  # it imports hmac
    "concurrent.futures.thread",  # the sync API's loop thread (`task.delay`...)
    "aiotask.brokers._redis_admin",  # purge, stats, dead letters (the CLI, the dashboard)
    "aiotask.brokers._redis_events",  # events on
    "aiotask.backends._history_redis",
    "aiotask.backends._schedule_redis",
    "aiotask.backends._coord_redis",
    "aiotask.backends._lock_redis",
)

#: Never in an idle SQLite worker (the default broker and backend): the other brokers' clients,
#: and what only long file paths, signing keys or the optional stores need.
SQLITE_FOREIGN = (
    *(n for n in FOREIGN if n not in ("sqlite3", "aiotask.brokers.sqlite")),
    "redis",
    "hiredis",
    "aiotask.brokers.redis_streams",
    "hashlib",  # signing keys, unique/debounce keys, long paths' wake directory: 0.7 MiB
    "tempfile",  # a long path's wake directory (tempfile imports shutil, bz2, lzma: 0.7 MiB)
    "shutil",
    "bz2",
    "lzma",
    "aiotask.backends._history_sqlite",  # the stores load with their first use
    "aiotask.backends._schedule_sqlite",
    "aiotask.backends._coord_sqlite",
    "aiotask.backends._lock_sqlite",
)

SCRIPT = textwrap.dedent(
    """
    import json, sys, types
    from aiotask.cli._run_worker import defer_imports
    defer_imports()
    from aiotask import App
    from aiotask.worker import Worker

    URL = sys.argv[1]
    app = App("imports", broker=URL, backend=URL, key_prefix="imports-test")

    @app.task
    async def coro() -> None: ...

    @app.task
    def plain() -> None: ...

    app.broker, app.backend  # their instances (and modules), no I/O
    Worker(app, concurrency=10, processes=1)
    if URL.startswith("redis"):
        from aiotask._redis.client import make_client

        make_client(URL, "imports-test")  # a client object: no connection yet
    else:
        app.backend.history_store  # a bound method: the store module is not loaded yet
    meta = sys.modules.get("importlib.metadata")
    print(json.dumps({
        "modules": sorted(sys.modules),
        "metadata_loaded": meta is not None and type(meta) is types.ModuleType,
    }))
    """
)


def _idle_worker_imports(url: str = "redis://127.0.0.1:1/0") -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _modules_of(name: str) -> list[str]:
    """What importing `name` alone loads (redis-py 8 imports concurrent.futures.thread)."""
    script = f"import json, sys, {name}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    modules: list[str] = json.loads(out.stdout)
    return modules


def _loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


def test_idle_redis_worker_import_graph() -> None:
    """A Redis worker's process imports neither other brokers' clients nor the CLI framework,
    nor what only some tasks or options need; redis-py's importlib.metadata stays unloaded
    (aiotask names redis-py's version itself)."""
    got = _idle_worker_imports()
    modules = got["modules"]
    assert isinstance(modules, list)
    assert "redis.asyncio" in modules and "aiotask.brokers.redis_streams" in modules
    assert _loaded(modules, FOREIGN) == []
    assert _loaded(modules, ON_DEMAND) == _loaded(_modules_of("redis.asyncio"), ON_DEMAND)
    assert got["metadata_loaded"] is False


def test_idle_sqlite_worker_import_graph(tmp_path: Path) -> None:
    """An idle SQLite worker imports neither redis-py nor hashlib, tempfile or the stores
    that only beat, the dashboard, locks or coordination use."""
    got = _idle_worker_imports(f"sqlite:///{tmp_path / 'jobs.db'}")
    modules = got["modules"]
    assert isinstance(modules, list)
    assert "sqlite3" in modules and "aiotask.brokers.sqlite" in modules
    assert _loaded(modules, SQLITE_FOREIGN) == []
    # the SQLite connections run their queries in a ThreadPoolExecutor
    assert _loaded(modules, ON_DEMAND) == ["concurrent.futures.thread"]


def test_lazily_loaded_pieces_work(tmp_path: Path) -> None:
    """What an idle worker leaves out loads on first use: a long path's wake directory, the
    SQLite stores, signing keys (sign and verify), unique keys' digests."""
    from aiotask import _sqlite_wake
    from aiotask.backends.sqlite import SQLiteBackend
    from aiotask.coordination.unique import lock_key
    from aiotask.security.signing import Keyring
    from aiotask.settings import Settings

    long_path = str(tmp_path / ("x" * 90) / "jobs.db")
    assert "aiotask-wake" in _sqlite_wake.wake_dir(long_path)
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'jobs.db'}", Settings())
    assert type(backend.lock_store()).__name__ == "SQLiteLockStore"
    ring = Keyring.of({"k1": "s" * 32}, "k1")
    tag = ring.sign(b"head", b"payload")
    assert ring.verify(b"k1", tag, b"head", b"payload")
    assert not ring.verify(b"k1", tag, b"head", b"other")
    assert lock_key("t", [1]) == lock_key("t", (1,))


def test_deferred_module_works_on_first_use() -> None:
    """A deferred module is the real one at its first attribute access."""
    script = (
        "from aiotask.cli._run_worker import defer_imports\n"
        "defer_imports()\n"
        "import sys, types\n"
        "from importlib import metadata as m\n"
        "assert type(sys.modules['importlib.metadata']) is not types.ModuleType\n"
        "print(m.version('redis'))\n"
        "assert type(sys.modules['importlib.metadata']) is types.ModuleType\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()[0].isdigit()


def test_task_subscript_defaults_its_last_parameter_at_run_time() -> None:
    """`Task[P, R]` works at run time (annotations evaluated by pydantic, FastAPI...) as it
    type-checks: the call-result parameter defaults to Any, as PEP 696 says for L."""
    from typing import Any, get_args

    from aiotask.task import Task

    assert Task[..., int] == Task[..., int, Any]
    assert get_args(Task[[int, str], int]) == ((int, str), int, Any)
    assert get_args(Task[[int], int, str]) == ((int,), int, str)

    class Partly(Task[..., int, Any]):  # no free L left: nothing to fill in
        pass

    assert not getattr(Partly, "__parameters__", ())
