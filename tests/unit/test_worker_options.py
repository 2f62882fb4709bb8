"""Definition-time refusals and route lookup (no I/O)."""

from __future__ import annotations

import pytest

from aiotask import App
from aiotask.exceptions import ConfigurationError


def test_acks_late_false_is_refused_with_the_reason() -> None:
    app = App("opts", broker="memory://")
    with pytest.raises(ConfigurationError, match=r"acks_late=False is not supported.*idempotent"):

        @app.task(acks_late=False)
        async def early() -> None: ...

    @app.task(acks_late=True)  # Celery's default, accepted
    async def late() -> None: ...

    assert late.options.acks_late is True


def test_routes_are_cached_per_task_name_and_follow_a_new_conf() -> None:
    app = App("opts", broker="memory://", task_routes={"img.*": "images", "mail.send": "mail"})
    assert app.route("img.resize") == "images"
    assert app.route("mail.send") == "mail"
    assert app.route("other") == "default"
    assert app.route("img.resize") == "images"  # from the cache
    app.conf = app.conf.replace(task_routes={"img.*": "gpu"}, default_queue="main")
    assert app.route("img.resize") == "gpu"  # a new conf is a new cache
    assert app.route("mail.send") == "main"
