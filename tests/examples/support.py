"""Point an example's module-level App at this test's SQLite file, and put it back after."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from tests.sync_support import clean_sync, close_leftover_loop, worker_thread

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiotask import App


@contextlib.contextmanager
def serving(app: App, url: str, kind: str = "sqlite", namespace: str = "") -> Iterator[None]:
    """The App on `url` (broker and results) with a real worker on it, in a thread."""
    close_leftover_loop()
    original = app.conf
    prefix = namespace or original.key_prefix
    app.conf = original.replace(broker_url=url, result_backend=url, key_prefix=prefix)
    try:
        with worker_thread(app):
            yield
    finally:
        clean_sync(app, kind, namespace)
        app.conf = original
