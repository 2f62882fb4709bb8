"""`app.control`: the worker registry (status) and request/reply inspect and control.

Requests go out on the result backend's control channel (Redis pub/sub, the SQLite control
table, memory), so they work with any broker, RabbitMQ included, as long as the app has a
result backend. Replies are gathered until every addressed online worker answered or the
timeout passed, whichever comes first.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiotask._time import monotonic, now, parse_rate
from aiotask.control.records import (
    CONTROL_COMMANDS,
    INSPECT_COMMANDS,
    Request,
    WorkerInfo,
    decode_reply,
)
from aiotask.exceptions import ConfigurationError, ProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.app import App
    from aiotask.backends.base import ResultBackend

log = logging.getLogger(__name__)

#: Seconds to gather replies when the caller gives no timeout.
DEFAULT_TIMEOUT = 2.0

Replies = dict[str, dict[str, Any]]


class Control:
    """Talk to running workers: `await app.control.inspect("active")`, `.rate_limit(...)`."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def _backend(self) -> ResultBackend:
        if self._app.conf.backend_url is None:
            raise ConfigurationError(
                f"app {self._app.main!r} has no result backend: the worker registry and the "
                "control channel live there; pass backend='redis://...' (or sqlite:///...)"
            )
        return await self._app.result_backend()

    async def workers(self) -> list[WorkerInfo]:
        """Every worker in the registry (online or lost), by name; needs no live worker."""
        records = await (await self._backend()).workers()
        found = []
        for name, data in sorted(records.items()):
            try:
                found.append(WorkerInfo.decode(data))
            except ProtocolError as exc:
                log.warning("skipping registry entry %r: %s", name, exc)
        return found

    async def inspect(
        self,
        what: str,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Ask workers about themselves: worker name -> answer ({"error": ...} if it failed).

        `what` is one of ping, active, reserved, scheduled, revoked, registered, stats, conf.
        An empty dict means no worker replied within `timeout`.
        """
        if what not in INSPECT_COMMANDS:
            raise ConfigurationError(
                f"unknown inspect command {what!r}; use one of {', '.join(INSPECT_COMMANDS)}"
            )
        replies = await self.request("inspect", what, {}, destination, timeout)
        return {name: r.get("ok") if "error" not in r else r for name, r in replies.items()}

    async def ping(
        self, *, destination: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """worker name -> "pong", for each worker that answered within `timeout`."""
        return await self.inspect("ping", destination=destination, timeout=timeout)

    async def revoke(self, task_ids: Sequence[str] | str, *, terminate: bool = False) -> None:
        """The same as `app.revoke`: tombstones (every worker, now or later, skips these ids),
        REVOKED results, and a broadcast so running ones stop at once with `terminate`."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        if not ids:
            raise ConfigurationError("revoke needs at least one task id")
        await self._app.revoke(ids, terminate=terminate)

    async def rate_limit(
        self,
        task: str,
        rate: str | float,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Change a task's rate limit on running workers ("10/s", "100/m"; 0: no limit).

        For the workers' lifetime only: a restarted worker uses the code's rate_limit again.
        """
        if rate not in (0, "0"):
            parse_rate(rate)  # bad input fails here, before anything is sent
        return await self.request(
            "control", "rate_limit", {"task": task, "rate": rate}, destination, timeout
        )

    async def add_consumer(
        self,
        queue: str,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Make workers consume one more queue (until they restart)."""
        return await self.request("control", "add_consumer", {"queue": queue}, destination, timeout)

    async def cancel_consumer(
        self,
        queue: str,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Make workers stop consuming a queue; what they prefetched from it is handed back."""
        return await self.request(
            "control", "cancel_consumer", {"queue": queue}, destination, timeout
        )

    async def pool_grow(
        self,
        n: int = 1,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Let workers run `n` more tasks at once (their concurrency)."""
        return await self.request("control", "pool_grow", {"n": _count(n)}, destination, timeout)

    async def pool_shrink(
        self,
        n: int = 1,
        *,
        destination: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Let workers run `n` fewer tasks at once (never below 1); running ones finish."""
        return await self.request("control", "pool_shrink", {"n": _count(n)}, destination, timeout)

    async def shutdown(
        self, *, destination: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Replies:
        """Warm shutdown: workers stop fetching, finish running tasks, then exit 0."""
        return await self.request("control", "shutdown", {}, destination, timeout)

    async def request(
        self,
        op: str,
        cmd: str,
        args: dict[str, Any],
        destination: Sequence[str] | None,
        timeout: float,
    ) -> Replies:
        """Broadcast one request and gather replies: worker name -> {"ok": ...} or {"error"}."""
        if op == "control" and cmd not in CONTROL_COMMANDS:
            raise ConfigurationError(
                f"unknown control command {cmd!r}; use one of {', '.join(CONTROL_COMMANDS)}"
            )
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        backend = await self._backend()
        expected = await self._expected(destination)
        to = frozenset(destination) if destination else None
        reply_to = uuid.uuid4().hex
        request = Request(op, cmd, args, reply_to, to, self._app.conf.key_prefix)
        await backend.broadcast(request.encode())
        replies: Replies = {}
        deadline = monotonic() + timeout
        while (left := deadline - monotonic()) > 0:
            for data in await backend.replies(reply_to, left):
                parsed = decode_reply(data)
                if parsed is not None:
                    replies[parsed[0]] = parsed[1]
            if expected and expected <= replies.keys():
                break  # every online worker addressed has answered: no need to wait longer
        return replies

    async def _expected(self, destination: Sequence[str] | None) -> set[str]:
        """Online workers the request is for; an unknown destination is an error."""
        known = await self.workers()
        names = {w.name for w in known}
        if destination:
            unknown = sorted(set(destination) - names)
            if unknown:
                raise ConfigurationError(
                    f"unknown worker(s) {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(names)) or 'none'} (see `aiotask status`)"
                )
        at = now()
        return {
            w.name
            for w in known
            if w.state(at) == "online" and (not destination or w.name in destination)
        }


def _count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"pool size change must be a positive integer, got {n!r}")
    return n
