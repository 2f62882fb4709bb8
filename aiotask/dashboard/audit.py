"""The audit log: one line per state-changing action, who did it, from where, with what.

Logged at INFO on the `aiotask.dashboard.audit` logger (route it to a file or a log shipper
with the logging configuration); never a credential, only the user's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask._log import get_logger
from aiotask.dashboard.auth import identity_of

if TYPE_CHECKING:
    from starlette.requests import Request

log = get_logger("aiotask.dashboard.audit")


def audit(request: Request, action: str, target: str, outcome: str = "done") -> None:
    user, role = identity_of(request.scope)
    client = request.client.host if request.client else "-"
    log.info(
        "%s %s by %s (%s) from %s: %s",
        action,
        target,
        user,
        role,
        client,
        outcome,
        extra={"audit": {"action": action, "target": target, "user": user, "outcome": outcome}},
    )
