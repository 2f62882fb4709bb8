"""Optional client libraries: a missing one is a ConfigurationError that names the extra.

The base install (`pip install aiotask`) runs the embedded SQLite broker and the CLI;
Redis, RabbitMQ and PostgreSQL need their client libraries, installed with `aiotask[redis]`,
`aiotask[rabbitmq]`, `aiotask[postgres]` or `aiotask[all]`. Broker and backend factories
import their module through `require()`, so the user reads which extra to install instead of a
bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from types import ModuleType

#: top-level client module -> the extra that installs it
EXTRA_OF: dict[str, str] = {
    "redis": "redis",
    "hiredis": "redis",
    "aio_pika": "rabbitmq",
    "starlette": "dashboard",
    "uvicorn": "dashboard",
    "jinja2": "dashboard",
    "asyncpg": "postgres",
}


def require(module: str, *, what: str) -> ModuleType:
    """Import one of our modules that needs an optional client library; name the extra if not.

    `what` says what needs it ("the Redis broker"). Only a missing *client* library is turned
    into the install hint; any other ImportError (a bug of ours) propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".", 1)[0]
        extra = EXTRA_OF.get(missing)
        if extra is None:
            raise
        raise ConfigurationError(
            f"{what} needs the {missing!r} package, which is not installed: "
            f"pip install 'aiotask[{extra}]' (or 'aiotask[all]')"
        ) from None
