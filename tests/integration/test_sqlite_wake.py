"""Cross-process wakeups on an SQLite file (aiotask/_sqlite_wake.py), between real processes.

The waits below are long (20 s) on purpose: a doorbell answers at once, the polling fallback
would not answer at all within them (the waiter polls nothing), so a pass proves the bell rang.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from aiotask import App, _sqlite, _sqlite_wake

WAITER = textwrap.dedent(
    """
    import asyncio, sys
    from aiotask import _sqlite

    async def main() -> None:
        signal = _sqlite.Signal()
        _sqlite.subscribe(sys.argv[1], "messages", signal)
        print("ready", flush=True)
        woke = await signal.wait(20)
        _sqlite.unsubscribe(sys.argv[1], "messages", signal)
        print("woken" if woke else "timed out", flush=True)

    asyncio.run(main())
    """
)


SLOW_POLL_WORKER = (
    "import sys; from aiotask import _sqlite; _sqlite.POLL_MAX = _sqlite.BELL_WAIT_MAX = 30.0; "
    "from aiotask.cli import main; sys.argv[0] = 'aiotask'; main()"
)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _slow_poll_worker(directory: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_POLL_WORKER, "worker", "-A", "wake_tasks:app", "-c", "2"],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _bells(path: str) -> list[str]:
    directory = _sqlite_wake.wake_dir(path)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_a_notify_wakes_a_waiter_in_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "wake.db")
    with subprocess.Popen(
        [sys.executable, "-c", WAITER, path], stdout=subprocess.PIPE, text=True
    ) as waiter:
        try:
            assert waiter.stdout is not None
            assert waiter.stdout.readline().strip() == "ready"
            [bell] = _bells(path)
            assert bell.startswith(f"messages.{waiter.pid}.")
            _sqlite.notify(path, "events")  # another topic rings nobody
            _sqlite.notify(path, "messages")
            assert waiter.stdout.readline().strip() == "woken"
            assert waiter.wait(10) == 0
        finally:
            if waiter.poll() is None:
                waiter.kill()
    assert not os.path.exists(_sqlite_wake.wake_dir(path))  # the last one removes the directory


def test_a_dead_process_socket_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    path = str(tmp_path / "wake.db")
    with subprocess.Popen(
        [sys.executable, "-c", WAITER, path], stdout=subprocess.PIPE, text=True
    ) as waiter:
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "ready"
        waiter.kill()  # kill -9: its socket file stays behind
    assert len(_bells(path)) == 1
    _sqlite.notify(path, "messages")
    assert _bells(path) == []


async def test_own_waiters_are_not_rung_and_unsubscribe_closes_the_bell(tmp_path: Path) -> None:
    path = str(tmp_path / "wake.db")
    signal = _sqlite.Signal()
    _sqlite.subscribe(path, "messages", signal)
    [name] = _bells(path)
    assert f".{os.getpid()}." in name
    _sqlite.notify(path, "messages")  # in memory only: the bell would fire it a second time
    assert await signal.wait(1)
    signal.clear()
    await asyncio.sleep(0.05)
    assert not await signal.wait(0.05)
    _sqlite.unsubscribe(path, "messages", signal)
    assert _bells(path) == []


def test_a_long_path_gets_a_hashed_directory_under_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / "broker.db"
    directory = _sqlite_wake.wake_dir(str(deep))
    assert not directory.startswith(str(deep))
    assert directory == _sqlite_wake.wake_dir(str(deep))  # every process agrees
    assert len(os.path.join(directory, "messages.4194304.123456").encode()) <= 100
    assert _sqlite_wake.wake_dir("/srv/app/aiotask.db") == "/srv/app/aiotask.db-wake"


async def test_no_usable_directory_falls_back_to_polling(tmp_path: Path) -> None:
    path = str(tmp_path / "wake.db")
    blocker = Path(_sqlite_wake.wake_dir(path))
    _write(blocker, "not a directory")
    signal = _sqlite.Signal()
    _sqlite.subscribe(path, "messages", signal)  # no bell, no error
    _sqlite.notify(path, "messages")  # rings nobody, no error
    assert await signal.wait(1)  # in memory, as before
    _sqlite.unsubscribe(path, "messages", signal)
    os.unlink(blocker)


async def test_a_worker_process_answers_at_once_after_idling(tmp_path: Path) -> None:
    """End to end: a task sent to an idle worker in another process, its result awaited here.

    The worker's poll backoff is raised to 30 s and the result wait's too, so only the
    doorbells can make this finish within the test's timeout."""
    _write(
        tmp_path / "wake_tasks.py",
        textwrap.dedent(
            """
            from aiotask import App
            app = App("wake")

            @app.task
            async def echo(x: int) -> int:
                return x
            """
        ),
    )
    url = f"sqlite:///{tmp_path}/app.db"
    env = dict(os.environ, AIOTASK_BROKER_URL=url, PYTHONPATH=str(tmp_path))
    worker = _slow_poll_worker(tmp_path, env)
    original = _sqlite.POLL_MAX, _sqlite.BELL_WAIT_MAX
    _sqlite.POLL_MAX = _sqlite.BELL_WAIT_MAX = 30.0
    try:
        deadline = time.monotonic() + 20
        while not any(b.startswith("messages.") for b in _bells(str(tmp_path / "app.db"))):
            assert worker.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the worker's poll backoff is now long
        async with App("wake", broker=url) as app:
            for i in range(3):
                result = await app.send_task("wake_tasks.echo", args=[i])
                assert await result.get(timeout=15) == i
                await asyncio.sleep(0.5)
    finally:
        _sqlite.POLL_MAX, _sqlite.BELL_WAIT_MAX = original
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err


async def test_an_idle_worker_wakes_for_a_delayed_message_when_it_is_due(tmp_path: Path) -> None:
    """Waits are long with a doorbell (nothing to poll for), so the worker must sleep until the
    next row is due: a countdown sent while it idles runs then, not at the safety cap (30 s
    here, so the 15 s wait below fails without the due time)."""
    _write(
        tmp_path / "wake_tasks.py",
        "from aiotask import App\napp = App('wake')\n\n@app.task\nasync def echo(x: int) -> int:\n"
        "    return x\n",
    )
    url = f"sqlite:///{tmp_path}/due.db"
    env = dict(os.environ, AIOTASK_BROKER_URL=url, PYTHONPATH=str(tmp_path))
    worker = _slow_poll_worker(tmp_path, env)
    original = _sqlite.POLL_MAX, _sqlite.BELL_WAIT_MAX
    _sqlite.POLL_MAX = _sqlite.BELL_WAIT_MAX = 30.0
    try:
        deadline = time.monotonic() + 20
        while not any(b.startswith("messages.") for b in _bells(str(tmp_path / "due.db"))):
            assert worker.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with App("wake", broker=url) as app:
            later = await app.send_task("wake_tasks.echo", args=[7], countdown=1.0)
            sooner = await app.send_task("wake_tasks.echo", args=[8], countdown=0.3)
            assert await sooner.get(timeout=15) == 8
            assert await later.get(timeout=15) == 7
    finally:
        _sqlite.POLL_MAX, _sqlite.BELL_WAIT_MAX = original
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err


def test_the_ring_survives_a_full_buffer(tmp_path: Path) -> None:
    path = str(tmp_path / "full.db")
    directory = _sqlite_wake.wake_dir(path)
    os.makedirs(directory)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "messages.1.0"))  # a "process" that never reads
    try:
        for _ in range(5000):
            _sqlite_wake.ringer.ring(path, "messages")  # never raises, never blocks
        assert os.path.exists(os.path.join(directory, "messages.1.0"))
    finally:
        sock.close()
