"""Flask handlers that send tasks with the sync API.

    aiotask worker -A examples.web_tasks:app &
    flask --app examples.flask_app run

    curl -X POST localhost:5000/add -H 'content-type: application/json' -d '{"x": 2, "y": 3}'
    curl 'localhost:5000/results/<id>?wait=5'

Flask views are plain functions on the server's threads: `add.delay()` and `SyncResult` are
thread-safe and share one connection set per process (also under gunicorn's forked workers).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from aiotask.exceptions import ResultTimeout
from examples.web_tasks import add, app

flask_app = Flask(__name__)


@flask_app.post("/add")
def send_add() -> tuple[dict[str, Any], int]:
    body = request.get_json(force=True)
    r = add.delay(int(body["x"]), int(body["y"]))
    return {"id": r.id}, 202


@flask_app.post("/slow")
def send_slow() -> tuple[dict[str, Any], int]:
    """Sent by name with a per-call option: `send_task_sync` takes apply_async's options."""
    r = app.send_task_sync("examples.slow", args=(1.0,), countdown=float(request.args["delay"]))
    return {"id": r.id}, 202


@flask_app.get("/results/<task_id>")
def result(task_id: str) -> dict[str, Any]:
    r = app.SyncResult(task_id)
    wait = float(request.args.get("wait", 0))
    if wait:
        try:
            return {"id": task_id, "state": "SUCCESS", "result": r.get(timeout=wait)}
        except ResultTimeout:
            pass
        except Exception as exc:  # the task's own exception, re-raised by get()
            return {"id": task_id, "state": r.state, "error": repr(exc)}
    return {"id": task_id, "state": r.state}


@flask_app.post("/results/<task_id>/revoke")
def revoke(task_id: str) -> dict[str, Any]:
    app.SyncResult(task_id).revoke(terminate=False)
    return {"id": task_id, "state": app.SyncResult(task_id).state}
