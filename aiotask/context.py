"""The request context a `bind=True` task receives, and the current-task context variable."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiotask.backends.base import EncodedResult, ResultRecord
from aiotask.exceptions import ConfigurationError, Retry

if TYPE_CHECKING:
    from datetime import datetime

    from aiotask.backends.base import ResultBackend
    from aiotask.security.signing import Keyring


@dataclass(slots=True)
class TaskContext:
    """What a running task knows about its own invocation (Celery's `self.request`)."""

    id: str
    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delivery_count: int = 1
    #: where update_state() writes; None when run locally or with no result backend
    backend: ResultBackend | None = None
    result_ttl: float = 86400.0
    #: seals the states update_state() stores (result_signing; None: off)
    result_keyring: Keyring | None = field(default=None, repr=False)

    async def update_state(self, state: str, meta: Any = None) -> None:
        """Record a progress state (e.g. "PROGRESS", {"done": 3}) that AsyncResult.state() shows."""
        if self.backend is None:
            raise ConfigurationError(
                f"task {self.name}[{self.id}]: update_state needs a result backend"
            )
        record = ResultRecord(self.id, state, meta, task=self.name, retries=self.retries)
        await self.backend.store([EncodedResult.of(record, self.result_ttl, self.result_keyring)])

    def retry(
        self,
        exc: BaseException | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
    ) -> Retry:
        """The exception to raise to re-queue this task: `raise ctx.retry(exc=err, countdown=5)`."""
        return Retry(exc, countdown=countdown, eta=eta, max_retries=max_retries)


current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "aiotask_current_task", default=None
)
