"""The Flask, FastAPI and plain-script examples, run for real against a worker on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from examples.web_tasks import app
from tests.examples.support import serving

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "redis"])
def served(request: pytest.FixtureRequest, namespace: str) -> Iterator[str]:
    """The examples' App on this test's SQLite file (the default) or on Redis."""
    kind = str(request.param)
    url = str(request.getfixturevalue(f"{kind}_url"))
    with serving(app, url, kind, namespace):
        yield url


def test_flask_handlers_send_and_read_results(served: str) -> None:
    pytest.importorskip("flask")
    from examples.flask_app import flask_app

    client = flask_app.test_client()
    sent = client.post("/add", json={"x": 2, "y": 3})
    assert sent.status_code == 202
    task_id = sent.get_json()["id"]
    got = client.get(f"/results/{task_id}?wait=10").get_json()
    assert got == {"id": task_id, "state": "SUCCESS", "result": 5}

    later = client.post("/slow?delay=30").get_json()["id"]
    assert client.get(f"/results/{later}").get_json()["state"] == "PENDING"
    assert client.post(f"/results/{later}/revoke").get_json()["state"] == "REVOKED"


def test_flask_handlers_from_many_threads(served: str) -> None:
    pytest.importorskip("flask")
    from concurrent.futures import ThreadPoolExecutor

    from examples.flask_app import flask_app

    def one(i: int) -> object:
        client = flask_app.test_client()
        task_id = client.post("/add", json={"x": i, "y": i}).get_json()["id"]
        return client.get(f"/results/{task_id}?wait=20").get_json()["result"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(24))) == [2 * i for i in range(24)]


def test_fastapi_lifespan_dependency_and_a_thread_endpoint(served: str) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from examples.fastapi_app import api

    with TestClient(api) as client:  # runs the lifespan: connects the App on the app's loop
        sent = client.post("/add", params={"x": 20, "y": 22})
        assert sent.status_code == 202
        task_id = sent.json()["id"]
        assert client.get(f"/results/{task_id}", params={"wait": 10}).json() == {
            "id": task_id,
            "state": "SUCCESS",
            "result": 42,
        }
        threaded = client.post("/add-from-a-thread", params={"x": 1, "y": 2}).json()["id"]
        assert client.get(f"/results/{threaded}", params={"wait": 10}).json()["result"] == 3


def test_plain_script(served: str) -> None:
    env = {**os.environ, "AIOTASK_BROKER_URL": served, "PYTHONPATH": str(ROOT)}
    env["AIOTASK_KEY_PREFIX"] = app.conf.key_prefix
    env.pop("AIOTASK_RESULT_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-m", "examples.script", "4", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "4 + 5 = 9 (SUCCESS)" in done.stdout
    assert "4 + 10 = 14" in done.stdout
    assert "Traceback" not in done.stderr  # connections closed cleanly at exit
