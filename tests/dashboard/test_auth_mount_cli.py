"""Auth (Basic, bearer token), CSRF and origin checks, mounting under FastAPI, and the
`aiotask dashboard` command as a real process (refuses to bind beyond loopback without auth)."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from aiotask import App
from tests.dashboard.conftest import ROOT, SHIM
from tests.procs import worker_env
from tests.servers import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytest.importorskip("starlette")

from aiotask.dashboard import Auth, create_app


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


@pytest.fixture
async def memory_app() -> AsyncIterator[App]:
    app = App("authdash", broker="memory://", backend="memory://")

    @app.task(name="authdash.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        yield app


async def client_for(web: object, **kwargs: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=web)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://dash", **kwargs)  # type: ignore[arg-type]


async def test_basic_auth_is_required_everywhere(
    memory_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIOTASK_DASHBOARD_TOKEN", raising=False)
    web = create_app(memory_app, auth="admin:s3cret")
    async with await client_for(web) as client:
        for path in ("/api/workers", "/api/openapi.json", "/", "/tasks", "/api/events"):
            r = await client.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Basic")
        r = await client.post("/api/tasks/authdash.add", json={"args": [1, 2]})
        assert r.status_code == 401
        assert (
            await client.get("/api/workers", headers=basic("admin", "wrong"))
        ).status_code == 401
        assert (
            await client.get("/api/workers", headers=basic("root", "s3cret"))
        ).status_code == 401
        bad = {"authorization": "Basic !!!not-base64"}
        assert (await client.get("/api/workers", headers=bad)).status_code == 401
        r = await client.get("/api/workers", headers=basic("admin", "s3cret"))
        assert r.status_code == 200
        r = await client.post(
            "/api/tasks/authdash.add", json={"args": [1, 2]}, headers=basic("admin", "s3cret")
        )
        assert r.status_code == 202
    await web.state.dashboard.close()


async def test_bearer_token_from_the_environment(
    memory_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOTASK_DASHBOARD_TOKEN", "tok-123")
    web = create_app(memory_app)
    assert "tok-123" not in repr(web.state.auth)
    async with await client_for(web) as client:
        assert (await client.get("/api/queues")).status_code == 401
        wrong = {"authorization": "Bearer tok-124"}
        assert (await client.get("/api/queues", headers=wrong)).status_code == 401
        right = {"authorization": "Bearer tok-123"}
        assert (await client.get("/api/queues", headers=right)).status_code == 200
    await web.state.dashboard.close()


def test_auth_values_are_checked_and_never_shown() -> None:
    auth = Auth.build("admin:pa:ss", token="t0k")  # noqa: S106
    assert auth.password == "pa:ss"  # the first ':' splits
    assert "pa:ss" not in repr(auth) and "t0k" not in repr(auth)
    assert repr(auth) == "Auth(basic+token)"
    with pytest.raises(Exception, match="USER:PASSWORD"):
        Auth.build("nocolon", token="")
    for spec in (":pw", "user:"):
        with pytest.raises(Exception, match="user must be non-empty"):
            Auth.build(spec, token="")
    with pytest.raises(Exception, match="is set but empty"):
        Auth(token="")


async def test_forms_need_the_csrf_token_and_cross_origin_posts_are_refused(
    memory_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIOTASK_DASHBOARD_TOKEN", raising=False)
    web = create_app(memory_app)
    async with await client_for(web) as client:
        r = await client.post("/actions/revoke", data={"id": "x", "next": "/"})
        assert r.status_code == 403
        assert "CSRF" in r.json()["error"]
        page = await client.get("/tasks")  # sets the cookie; the form carries the same token
        token = page.cookies["aiotask_csrf"]
        assert f'name="csrf" value="{token}"' not in page.text  # the tasks page has no form
        r = await client.post("/actions/revoke", data={"id": "x", "csrf": "forged", "next": "/"})
        assert r.status_code == 403
        r = await client.post(
            "/actions/revoke", data={"id": "x", "csrf": token, "next": "//evil.example/"}
        )
        assert r.status_code == 303
        assert r.headers["location"].startswith("/?msg=revoked")  # never another site
        assert (await memory_app.AsyncResult("x").state()) == "REVOKED"
        r = await client.post(
            "/api/results/y/revoke", json={}, headers={"origin": "http://evil.example"}
        )
        assert r.status_code == 403
        r = await client.post("/api/results/y/revoke", json={}, headers={"origin": "http://dash"})
        assert r.status_code == 202
        # an empty cross-site form post (no Origin, old browser) is not JSON: refused
        r = await client.post(
            "/api/results/y/revoke", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert r.status_code == 415
    await web.state.dashboard.close()


async def test_mounted_under_a_fastapi_service(
    memory_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    fastapi = pytest.importorskip("fastapi")
    monkeypatch.delenv("AIOTASK_DASHBOARD_TOKEN", raising=False)
    service = fastapi.FastAPI()
    dashboard = create_app(memory_app, auth="ops:pw")
    service.mount("/aiotask", dashboard)

    @service.get("/health")
    async def health() -> dict[str, str]:
        return {"ok": "yes"}

    async with await client_for(service) as client:
        assert (await client.get("/health")).json() == {"ok": "yes"}
        assert (await client.get("/aiotask/api/workers")).status_code == 401
        creds = basic("ops", "pw")
        r = await client.post(
            "/aiotask/api/tasks/authdash.add", json={"args": [1, 2]}, headers=creds
        )
        assert r.status_code == 202
        doc = (await client.get("/aiotask/api/openapi.json", headers=creds)).json()
        assert doc["servers"] == [{"url": "/aiotask"}]
        page = await client.get("/aiotask/", headers=creds)
        assert page.status_code == 200
        assert 'href="/aiotask/tasks"' in page.text
        assert 'src="/aiotask/static/dashboard.js"' in page.text
        assert 'data-partial="/aiotask/partials"' in page.text
        assert (await client.get("/aiotask/partials", headers=creds)).status_code == 200
    await dashboard.state.dashboard.close()


def _serve(directory: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiotask", "dashboard", "-A", "proc_tasks:app", *args],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _listening(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the dashboard did not start listening")


def _env(directory: Path) -> dict[str, str]:
    (directory / "proc_tasks.py").write_text(SHIM)
    (directory / "logs").mkdir(exist_ok=True)
    return worker_env(directory, f"sqlite:///{directory}/cli.db", PYTHONPATH=f"{directory}:{ROOT}")


def test_refuses_to_bind_beyond_loopback_without_auth(tmp_path: Path) -> None:
    env = _env(tmp_path)
    proc = _serve(tmp_path, env, "--host", "0.0.0.0", "--port", str(free_port()))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "refusing to serve the dashboard on 0.0.0.0 without auth" in out
    assert "--auth" in out


def test_serves_with_basic_auth_and_token_and_logs_neither(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["AIOTASK_DASHBOARD_TOKEN"] = "env-token-zyx"
    port = free_port()
    proc = _serve(tmp_path, env, "--host", "0.0.0.0", "--port", str(port), "--auth", "ops:pw-qrs")
    try:
        _listening(port, proc)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/api/workers").status_code == 401
            assert client.get("/api/workers", auth=("ops", "pw-qrs")).status_code == 200
            bearer = {"authorization": "Bearer env-token-zyx"}
            r = client.post("/api/tasks/dash.add", json={"args": [1, 2]}, headers=bearer)
            assert r.status_code == 202
            r = client.post("/api/tasks/dash.add", json={"args": "x"}, headers=bearer)
            assert r.status_code == 422
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "dashboard of dash on http://0.0.0.0:" in out
    assert "pw-qrs" not in out and "env-token-zyx" not in out


async def test_an_app_without_result_backend_still_serves_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIOTASK_DASHBOARD_TOKEN", raising=False)
    app = App("nobackend", broker="memory://", backend=None)
    web = create_app(app)
    async with app, await client_for(web) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert "has no result backend" in page.text
        assert (await client.get("/tasks/some-id")).status_code == 200
        r = await client.get("/api/results/some-id")
        assert r.status_code == 503
        assert "results are not available" in r.json()["error"]
    await web.state.dashboard.close()


async def test_read_only_credentials_look_but_do_not_act_and_actions_are_audited(
    memory_app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("AIOTASK_DASHBOARD_TOKEN", raising=False)
    auth = Auth.build("boss:b-pw-1", viewer="peek:p-pw-2")
    assert repr(auth) == "Auth(basic+read-only)"
    web = create_app(memory_app, auth=auth)
    viewer, admin = basic("peek", "p-pw-2"), basic("boss", "b-pw-1")
    caplog.set_level("INFO", logger="aiotask.dashboard.audit")
    async with await client_for(web) as client:
        assert (await client.get("/api/workers", headers=viewer)).status_code == 200
        r = await client.post("/api/tasks/authdash.add", json={"args": [1, 2]}, headers=viewer)
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        r = await client.post("/api/results/x/revoke", json={}, headers=viewer)
        assert r.status_code == 403
        page = (await client.get("/", headers=viewer)).text
        assert "peek (read-only)" in page and 'method="post"' not in page
        assert 'action="/actions/rate-limit"' in (await client.get("/", headers=admin)).text
        r = await client.post("/api/tasks/authdash.add", json={"args": [1, 2]}, headers=admin)
        assert r.status_code == 202
        sent = r.json()["id"]
        r = await client.post(
            f"/api/results/{sent}/revoke", json={"terminate": True}, headers=admin
        )
        assert r.status_code == 202
    await web.state.dashboard.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiotask.dashboard.audit"]
    assert lines[0].startswith(f"send authdash.add by boss (admin) from 127.0.0.1: sent as {sent}")
    assert lines[1].startswith(f"terminate {sent} by boss (admin)")
    assert len(lines) == 2  # the refused ones changed nothing
    assert not any("pw" in r.getMessage() for r in caplog.records)


def test_the_read_only_user_is_not_the_admin() -> None:
    with pytest.raises(Exception, match="must not be the admin user"):
        Auth.build("same:a", viewer="same:b", token="")
