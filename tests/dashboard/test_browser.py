"""The pages in a real browser: Debian's chromium driven by Playwright, against
`aiotask dashboard` and a worker (events on) as real processes on Redis.

Screenshots go to the test's temp dir; with AIOTASK_SCREENSHOTS=DIR they are also copied
there (how docs/img/dashboard-*.png were made).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.dashboard.conftest import ROOT, SHIM
from tests.dashboard.test_auth_mount_cli import _listening
from tests.procs import start_worker, stop, worker_env
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "ops", "browser-pw"

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str
    directory: Path
    api: httpx.Client
    shots: Path
    #: the broker: redis, sqlite or amqp
    kind: str
    env: dict[str, str]

    def send(self, task: str, *args: Any, **options: Any) -> str:
        r = self.api.post(f"/api/tasks/{task}", json={"args": list(args), "options": options})
        assert r.status_code == 202, r.text
        task_id: str = r.json()["id"]
        return task_id


def _chromium() -> None:
    pytest.importorskip("playwright")
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: apt-get install chromium (make test does)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)


def _urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The broker URL of the test's parameter (Redis unless the test says otherwise), and
    the result backend: RabbitMQ keeps none, so its tasks' results and history go to Redis."""
    kind = getattr(request, "param", "redis")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/browser.db", {}
    redis: str = request.getfixturevalue("redis_url")
    if kind == "amqp":
        return request.getfixturevalue("amqp_url"), {"AIOTASK_RESULT_BACKEND": redis}
    return redis, {}


def _drop_amqp_queue(url: str, namespace: str) -> None:
    import asyncio

    from aiotask.brokers.rabbitmq import RabbitMQBroker
    from tests.dashboard.dash_tasks import make_app

    async def drop() -> None:
        app = make_app(broker=url, backend=None, key_prefix=namespace)
        assert isinstance(app.broker, RabbitMQBroker)
        async with app:
            await app.broker.delete_queue("default")

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, drop()).result()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Served]:
    _chromium()
    (tmp_path / "proc_tasks.py").write_text(SHIM)
    (tmp_path / "logs").mkdir()
    url, backend = _urls(request, tmp_path)
    env = worker_env(
        tmp_path,
        url,
        AIOTASK_KEY_PREFIX=namespace,
        PYTHONPATH=f"{tmp_path}:{ROOT}",
        AIOTASK_EVENTS="true",  # the dashboard's sends emit task-sent too
        **backend,
    )
    worker = start_worker(tmp_path, env, "-E", "-c", "8")
    port = free_port()
    argv = ["dashboard", "-A", "proc_tasks:app", "--port", str(port)]
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "aiotask", *argv, "--auth", f"{USER}:{PASSWORD}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _listening(port, dashboard)
        with httpx.Client(base_url=base, auth=(USER, PASSWORD), timeout=10) as api:
            kind = getattr(request, "param", "redis")
            yield Served(base, tmp_path, api, tmp_path / "shots", kind, env)
    finally:
        dashboard.send_signal(signal.SIGTERM)
        out, _ = dashboard.communicate(timeout=30)
        stop(worker, signal.SIGQUIT)  # cold: a test that failed may leave a long task running
        if url.startswith("amqp"):
            _drop_amqp_queue(url, namespace)
    assert dashboard.returncode == 0, out
    assert PASSWORD not in out


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium for the module's tests (a launch each cost seconds on a loaded machine);
    each test gets a context of its own: no cookie, cache or page is shared."""
    _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(served: Served, chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1280, "height": 800},
    )
    try:
        yield context
    finally:
        context.close()


def shot(served: Served, page: Any, name: str, *, main: bool = False) -> None:
    """A screenshot; with `main`, only the Redis run's goes to the docs (one per page)."""
    served.shots.mkdir(exist_ok=True)
    path = served.shots / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    copy_to = os.environ.get("AIOTASK_SCREENSHOTS")
    if copy_to and (not main or served.kind == "redis"):
        shutil.copy(path, Path(copy_to) / path.name)


@pytest.mark.parametrize("served", ["redis", "sqlite", "amqp"], indirect=True)
def test_every_page_loads_in_the_browser(served: Served, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(served.url + "/")  # subscribe first: tasks sent before the page are not seen
    expect(page.locator("#live-status")).to_have_class("live on")
    done = served.send("dash.add", 2, 3)
    served.send("dash.boom", "<script>alert('pwned')</script>")
    served.send("dash.echo", {"html": "<b>bold</b>"})
    expect(page.locator(".w-online")).to_have_count(1)
    expect(page.locator(".counts")).to_contain_text("SUCCESS 2")  # live, no reload
    expect(page.locator(".counts")).to_contain_text("FAILURE 1")
    expect(page.locator("#throughput rect.bar-ok")).not_to_have_count(0)  # the chart, live
    expect(page.locator("#throughput rect.bar-fail")).to_have_count(1)
    shot(served, page, "overview", main=True)

    page.goto(served.url + "/tasks")
    expect(page.locator("tbody#task-rows tr")).to_have_count(3)
    shot(served, page, "tasks", main=True)
    page.fill("input[name=q]", done[:10])
    page.click("form.search button")
    expect(page.locator("tbody#task-rows tr")).to_have_count(1)
    page.click(f"a[href='/tasks/{done}']")
    expect(page.locator("#task-state")).to_have_text("SUCCESS")
    expect(page.locator("pre.result")).to_have_text("5")
    expect(page.locator("ol.timeline li")).to_have_count(4)  # sent, received, started, succeeded

    page.goto(served.url + "/tasks?state=FAILURE")
    page.click("tbody#task-rows a")
    expect(page.locator("#task-state")).to_have_text("FAILURE")
    expect(page.locator("pre.args")).to_contain_text("<script>alert('pwned')</script>")
    expect(page.locator("pre.traceback")).to_contain_text("ValueError")
    assert page.locator("main script").count() == 0  # the argument is text, not an element
    shot(served, page, "task-failed", main=True)

    page.goto(served.url + "/schedules")
    row = page.locator("tr[data-schedule='nightly-sum']")
    expect(row).to_contain_text("cron")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button", has_text="Pause").click()
    expect(page.locator(".flash")).to_contain_text("paused nightly-sum")
    expect(row.locator(".s-paused")).to_have_text("paused")
    shot(served, page, "schedules", main=True)
    page.once("dialog", lambda dialog: dialog.dismiss())  # a refused confirm sends nothing
    row.locator("button", has_text="Resume").click()
    expect(row.locator(".s-paused")).to_have_text("paused")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button", has_text="Resume").click()
    expect(row.locator(".s-paused")).to_have_count(0)
    assert errors == []


def test_revoke_shows_live_on_another_page(served: Served, browser_page: Any) -> None:
    from playwright.sync_api import expect

    watcher = browser_page.new_page()
    watcher.goto(served.url + "/tasks")
    expect(watcher.locator("#live-status")).to_have_class("live on")
    task_id = served.send("dash.slow", 120)
    watcher.goto(f"{served.url}/tasks/{task_id}")
    expect(watcher.locator("#live-status")).to_have_class("live on")
    expect(watcher.locator("#task-state")).to_have_text("STARTED")

    actor = browser_page.new_page()
    actor.goto(f"{served.url}/tasks/{task_id}")
    actor.once("dialog", lambda dialog: dialog.accept())
    actor.click("#terminate")
    expect(actor.locator(".flash")).to_contain_text(f"terminated {task_id}")
    # the watcher did not reload: the SSE stream brought the change
    expect(watcher.locator("#task-state")).to_have_text("REVOKED")
    expect(watcher.locator("ol.timeline")).to_contain_text("task-revoked")
    shot(served, watcher, "task-revoked")
    assert served.api.get(f"/api/results/{task_id}").json()["state"] == "REVOKED"


def test_a_live_update_keeps_what_is_typed_in_the_search(served: Served, browser_page: Any) -> None:
    """The search form is part of the live fragment: a change re-renders the fragment, which
    used to wipe what the user was typing (and made this page's search flaky under load)."""
    from playwright.sync_api import expect

    page = browser_page.new_page()
    page.goto(served.url + "/tasks")
    expect(page.locator("#live-status")).to_have_class("live on")
    page.fill("input[name=q]", "typed, not sent")
    done = served.send("dash.add", 1, 1)
    # the task ran (its result is stored) and its events were streamed to the page ...
    for _ in range(100):
        if served.api.get(f"/api/results/{done}").json()["state"] == "SUCCESS":
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(1500)  # ... well past the 300 ms refresh delay
    expect(page.locator("input[name=q]")).to_have_value("typed, not sent")
    expect(page.locator(f"a[href='/tasks/{done}']")).to_have_count(0)  # not re-rendered yet
    page.fill("input[name=q]", "")  # back to what was rendered, and no longer focused:
    page.locator("h1").click()
    expect(page.locator(f"a[href='/tasks/{done}']")).to_have_count(1)  # the refresh comes


def test_replay_a_dead_letter(served: Served, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page.new_page()
    page.goto(served.url + "/dead-letters")
    expect(page.locator("#live-status")).to_have_class("live on")
    task_id = served.send("dash.poison", 4)
    row = page.locator(f"tr[data-dead-letter='{task_id}']")
    expect(row).to_contain_text("poison pill 4")  # appears live
    shot(served, page, "dead-letters")
    (served.directory / "logs" / "allow").write_text("")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.replay").click()
    expect(page.locator(".flash")).to_contain_text("replayed 1 dead letter(s)")
    expect(row).to_have_count(0)
    page.goto(f"{served.url}/tasks/{task_id}")
    expect(page.locator("#task-state")).to_have_text("SUCCESS")
    expect(page.locator("pre.result")).to_have_text("40")


def _send_chain(served: Served) -> str:
    """chain(hold, echo, chord([echo a, echo b], echo), add) from this process (the API sends
    single tasks); the id of its first task, the workflow's root, which runs until released."""
    import asyncio

    from aiotask import chain, chord
    from tests.dashboard.dash_tasks import make_app

    env = served.env
    options: dict[str, Any] = {"key_prefix": env["AIOTASK_KEY_PREFIX"], "events": True}
    if "AIOTASK_RESULT_BACKEND" in env:
        options["backend"] = env["AIOTASK_RESULT_BACKEND"]
    app = make_app(broker=env["AIOTASK_BROKER_URL"], **options)
    hold, add, echo = app.tasks["dash.hold"], app.tasks["dash.add"], app.tasks["dash.echo"]

    async def send() -> str:
        async with app:
            flow = chain(
                hold.s("graph"),
                echo.s(),
                chord([echo.si("a"), echo.si("b")], echo.s()),
                add.si(1, 1),
            )
            plan = await flow.send()
            return str(plan.id)

    with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        pool.submit(asyncio.run, send()).result()
    for _ in range(100):
        tasks = served.api.get("/api/history", params={"task": "dash.hold"}).json()["tasks"]
        if tasks:
            return str(tasks[0]["id"])
        time.sleep(0.1)
    raise AssertionError("the chain's first task never reached the history")


@pytest.mark.parametrize("served", ["redis", "sqlite", "amqp"], indirect=True)
def test_a_workflow_graph_updates_live(served: Served, browser_page: Any) -> None:
    from playwright.sync_api import expect

    page = browser_page.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(served.url + "/")
    expect(page.locator("#live-status")).to_have_class("live on")
    root = _send_chain(served)
    page.goto(f"{served.url}/canvas/{root}")
    expect(page.locator("#live-status")).to_have_class("live on")
    first = page.locator(f"#canvas-graph a[data-node='{root}']")
    expect(first).to_have_attribute("data-state", "STARTED")  # runs until released
    (served.directory / "logs" / "release-graph").touch()
    # no reload from here: each step's events redraw the graph
    nodes = page.locator("#canvas-graph a[data-node]")
    expect(nodes).to_have_count(6, timeout=30_000)
    for i in range(6):
        expect(nodes.nth(i)).to_have_attribute("data-state", "SUCCESS", timeout=30_000)
    expect(page.locator("#canvas-graph line.edge")).to_have_count(6)
    shot(served, page, "canvas", main=True)
    first.click()
    expect(page.locator("#task-state")).to_have_text("SUCCESS")
    expect(page.locator("#workflow")).to_have_attribute("href", f"/canvas/{root}")
    assert errors == []
