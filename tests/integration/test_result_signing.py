"""Result signing (result_signing=True) through a real Worker on every result backend: the
worker seals what it stores, readers verify it, and a record written by anyone else — unsigned,
signed with a foreign key, altered, or another task's — raises ResultSignatureError naming the
task id instead of returning its value. Key rotation keeps old results readable."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from aiotask import App, AsyncResult, chord, group
from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.backends.memory import MemoryBackend
from aiotask.exceptions import ConfigurationError, ResultSignatureError
from aiotask.result import GroupResult
from aiotask.security import results as signed
from aiotask.security.signing import Keyring
from aiotask.settings import Settings
from aiotask.states import FAILURE, SUCCESS
from aiotask.testing import start_worker

if TYPE_CHECKING:
    from aiotask.context import TaskContext

K1 = "result-signing-secret-number-one"
K2 = "result-signing-secret-number-two"
KINDS = ["memory", "sqlite", "redis", "postgres", "amqp"]


@pytest.fixture(params=KINDS)
def urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(broker, backend): each backend with its own broker; RabbitMQ has no result backend,
    so its worker stores results in SQLite."""
    if request.param == "memory":
        return "memory://", "memory://"
    if request.param == "amqp":
        return request.getfixturevalue("amqp_url"), request.getfixturevalue("sqlite_url")
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url, url


def make_app(urls: tuple[str, str], namespace: str, **settings: Any) -> App:
    settings.setdefault("result_signing", True)
    settings.setdefault("signing_keys", {"k1": K1})
    app = App("rs", broker=urls[0], backend=urls[1], key_prefix=namespace, **settings)

    @app.task(name="rs.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rs.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="rs.fail")
    async def fail() -> None:
        raise ValueError("as planned")

    @app.task(name="rs.progress", bind=True)
    async def progress(ctx: TaskContext) -> str:
        await ctx.update_state("PROGRESS", {"done": 1})
        return "done"

    return app


def reconfigure(app: App, **changes: Any) -> None:
    """As another process configured so would see it (memory:// data lives in the App, so the
    same App is reconfigured rather than a second one made)."""
    app.conf = app.conf.replace(**changes)


async def test_round_trip_results_are_sealed_and_verified(
    urls: tuple[str, str], namespace: str
) -> None:
    app = make_app(urls, namespace)
    add, total = app.tasks["rs.add"], app.tasks["rs.total"]
    async with app, start_worker(app):
        r = await add.send(2, 3)
        assert await r.get(timeout=10) == 5
        assert await r.state() == SUCCESS and await r.info() == 5
        raw = await (await app.result_backend()).get(r.id)
        assert raw is not None and raw.sealed is not None and raw.sealed.startswith(signed.PREFIX)
        with pytest.raises(ValueError, match="as planned"):
            await (await app.tasks["rs.fail"].send()).get(timeout=10)
        assert await (await app.tasks["rs.progress"].send()).get(timeout=10) == "done"
        gr = await group(add.s(i, i) for i in range(4)).send()
        assert await gr.get(timeout=10) == [0, 2, 4, 6]
        assert await gr.completed_count() == 4
        assert (
            await (await chord(group(add.s(i, 1) for i in range(3)), total.s()).send()).get(
                timeout=10
            )
            == 6
        )
        await app.revoke(["never-sent"])  # the App seals the REVOKED record it writes too
        assert await app.AsyncResult("never-sent").state() == "REVOKED"
    # a reader without result_signing reads sealed records unchecked (rollout order)
    reconfigure(app, result_signing=False)
    async with app:
        assert await app.AsyncResult(r.id).get(timeout=5) == 5


def forgeries(prefix: str, other: bytes) -> dict[str, EncodedResult]:
    """What someone who can write the backend (but holds no key) might store, each under a
    task id of its own; `other` is a genuine sealed record of another task."""
    foreign = Keyring.of({"k1": "an-attackers-own-key-0123456789"}, "k1")
    genuine_json = signed.unsealed(other)[0]
    altered = other.replace(genuine_json, genuine_json.replace(b":5", b":6", 1))
    assert altered != other
    ids = [f"{prefix}-{n}" for n in range(4)]
    return {
        "unsigned": EncodedResult.of(ResultRecord(ids[0], SUCCESS, 666), 60),
        "foreign key": EncodedResult.of(ResultRecord(ids[1], SUCCESS, 666), 60, foreign),
        "altered": EncodedResult(ids[2], SUCCESS, altered, 60),
        "another task's": EncodedResult(ids[3], SUCCESS, other, 60),
    }


async def test_forged_results_raise_and_never_return_the_value(
    urls: tuple[str, str], namespace: str
) -> None:
    app = make_app(urls, namespace)
    async with app, start_worker(app):
        genuine = await app.tasks["rs.add"].send(2, 3)
        assert await genuine.get(timeout=10) == 5
    backend = await app.result_backend()
    record = await backend.get(genuine.id)
    assert record is not None and record.sealed is not None
    expected = {
        "unsigned": "it is not signed",
        "foreign key": re.escape("signature does not verify (key id 'k1')"),
        "altered": "signature does not verify",
        "another task's": "signed record of another task",
    }
    async with app:
        backend = await app.result_backend()
        for name, forged in forgeries(namespace, record.sealed).items():
            await backend.store([forged])
            r = app.AsyncResult(forged.task_id)
            for read in (r.get(timeout=5), r.info(), r.state()):
                with pytest.raises(ResultSignatureError, match=expected[name]) as caught:
                    await read
                assert caught.value.task_id == forged.task_id
                assert forged.task_id in str(caught.value)
            with pytest.raises(ResultSignatureError):
                await GroupResult("g", [genuine, r], app).get(timeout=5)


async def test_rotation_old_results_stay_readable(urls: tuple[str, str], namespace: str) -> None:
    app = make_app(urls, namespace, signing_keys={"k1": K1})
    async with app, start_worker(app):
        before = await app.tasks["rs.add"].send(1, 1)
        assert await before.get(timeout=10) == 2
    # step 2: the new key everywhere, signing with it; the old one still verifies
    reconfigure(app, signing_keys={"k2": K2, "k1": K1}, signing_key_id="k2")
    async with app, start_worker(app):
        after = await app.tasks["rs.add"].send(2, 2)
        assert await after.get(timeout=10) == 4
        assert await app.AsyncResult(before.id).get(timeout=5) == 2
        stored = await (await app.result_backend()).get(after.id)
        assert stored is not None and stored.sealed is not None and b"k2" in stored.sealed[:10]
    # step 3: the old key removed: results it signed are refused, by key id, never shown
    reconfigure(app, signing_keys={"k2": K2}, signing_key_id=None)
    async with app:
        assert await app.AsyncResult(after.id).get(timeout=5) == 4
        with pytest.raises(ResultSignatureError, match="key id 'k1', which is not in"):
            await app.AsyncResult(before.id).get(timeout=5)


async def test_a_forged_chord_member_never_reaches_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(("memory://", "memory://"), "x")
    add, total = app.tasks["rs.add"], app.tasks["rs.total"]
    async with app:
        r = await chord(group(add.s(i, i) for i in range(3)), total.s()).send()
        assert isinstance(r, AsyncResult)
        backend = app.backend
        assert isinstance(backend, MemoryBackend)
        (group_id,) = backend._groups
        # member 0 "reported" by someone with backend access: its record is the first, so kept
        forged = EncodedResult.of(ResultRecord("m0", SUCCESS, 1000), 60)
        await backend.add_to_group(group_id, 0, forged)
        async with start_worker(app):
            with pytest.raises(TimeoutError):
                await r.get(timeout=1.5)
    assert "body not run, a member's stored result" in caplog.text
    assert await r.state() == "PENDING"


def test_result_signing_settings() -> None:
    with pytest.raises(ConfigurationError, match="result_signing is on but no signing key"):
        Settings(result_signing=True)
    with pytest.raises(ConfigurationError, match="celery_compat cannot be combined with result"):
        Settings(
            broker_url="redis://localhost/0",
            celery_compat=True,
            result_signing=True,
            signing_keys={"k1": K1},
        )
    conf = Settings.from_env({"AIOTASK_RESULT_SIGNING": "true", "AIOTASK_SIGNING_KEYS": f"k:{K1}"})
    assert conf.result_signing
    assert App("x", broker="memory://", result_signing=True, signing_keys={"k": K1}).result_keyring
    assert App("x", broker="memory://", signing_keys={"k": K1}).result_keyring is None


def test_a_failure_record_is_sealed_whole() -> None:
    keyring = Keyring.of({"k1": K1}, "k1")
    stored = EncodedResult.of(ResultRecord("t1", FAILURE, None, task="rs.fail"), 60, keyring)
    payload, was_sealed = signed.unsealed(stored.data)
    assert was_sealed and orjson.loads(payload)["state"] == FAILURE
    assert signed.verify(keyring, stored.data) is None
    for cut in (3, 8, 30):  # truncated seals are refused, never parsed as something else
        assert signed.verify(keyring, stored.data[:cut]) is not None
