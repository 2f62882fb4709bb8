"""The Django example project, run for real: the test client calls views that send with
`delay()`, a management command sends, and a worker (in a thread) runs the tasks on SQLite."""

from __future__ import annotations

import importlib
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.examples.support import serving

if TYPE_CHECKING:
    from collections.abc import Iterator

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "django_project"

django = pytest.importorskip("django")


@pytest.fixture(scope="module")
def shop_app() -> Any:
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    django.setup()
    return importlib.import_module("shop.tasks").app


@pytest.fixture
def client(shop_app: Any, sqlite_url: str) -> Iterator[Any]:
    from django.test import Client

    with serving(shop_app, sqlite_url):
        yield Client()


def test_a_view_sends_and_another_reads_the_result(client: Any) -> None:
    sent = client.post("/orders/7/total?price=1.5&price=2.25")
    assert sent.status_code == 202
    task_id = sent.json()["id"]
    got = client.get(f"/results/{task_id}?wait=10").json()
    assert got == {"id": task_id, "state": "SUCCESS", "result": {"order_id": 7, "total": 3.75}}


def test_a_management_command_sends(client: Any) -> None:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("send_order_total", "9", "1", "2", "--wait", "10", stdout=out)
    assert "result {'order_id': 9, 'total': 3.0}" in out.getvalue()
