"""The message codec an app uses: aiotask's envelope, or Celery protocol v2 with celery_compat."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiotask import protocol
from aiotask.celery_compat import v2
from aiotask.exceptions import MessageRefused, ProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiotask.protocol import Message
    from aiotask.settings import Settings


def decoder(settings: Settings) -> Callable[[bytes], Message]:
    """Wire bytes -> Message for this app's settings (ProtocolError when not one)."""
    return v2.decode if settings.celery_compat else protocol.decode


def encoder(settings: Settings) -> Callable[[Message], bytes]:
    """Message -> wire bytes for this app's settings (SerializationError when not JSON)."""
    return v2.encode if settings.celery_compat else protocol.encode


def decode_any(body: bytes) -> Message:
    """For tools that show bodies (inspect, dead letters): aiotask's envelope, else Celery's."""
    try:
        return protocol.decode(body)
    except ProtocolError:
        pass
    try:
        return v2.decode(body)
    except MessageRefused as exc:  # shown all the same: its id and task name are known
        return protocol.Message(exc.task_id, exc.task)
