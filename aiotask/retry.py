"""Retry policy, pure: (options, exception, attempt) -> retry after a delay, or give up."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiotask._time import now, to_timestamp
from aiotask.exceptions import Retry

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry-related task options (Celery's names and defaults)."""

    max_retries: int | None = 3
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    default_retry_delay: float = 180.0


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Retry after `delay` seconds; `exc` is what the RETRY state records."""

    delay: float
    exc: BaseException


def decide(
    policy: RetryPolicy,
    exc: BaseException,
    retries: int,
    *,
    rand: Callable[[float, float], float] = random.uniform,
) -> RetryDecision | None:
    """Whether a task that raised `exc` on attempt `retries` (0-based) runs again, and when.

    None means give up: the task fails with `exc` (or, for an explicit retry, its cause).
    """
    if isinstance(exc, Retry):
        limit = exc.max_retries if exc.max_retries is not None else policy.max_retries
        if limit is not None and retries >= limit:
            return None
        cause = exc.exc if exc.exc is not None else exc
        if exc.countdown is not None:
            return RetryDecision(max(exc.countdown, 0.0), cause)
        if exc.eta is not None:
            return RetryDecision(max(to_timestamp(exc.eta) - now(), 0.0), cause)
        return RetryDecision(_delay(policy, retries, rand), cause)
    if not policy.autoretry_for or not isinstance(exc, policy.autoretry_for):
        return None
    if policy.max_retries is not None and retries >= policy.max_retries:
        return None
    return RetryDecision(_delay(policy, retries, rand), exc)


def _delay(policy: RetryPolicy, retries: int, rand: Callable[[float, float], float]) -> float:
    if not policy.retry_backoff:
        return policy.default_retry_delay
    factor = 1.0 if policy.retry_backoff is True else float(policy.retry_backoff)
    delay = min(factor * (2**retries), policy.retry_backoff_max)
    return rand(0.0, delay) if policy.retry_jitter else delay


def final_exception(exc: BaseException) -> BaseException:
    """What a task that gave up failed with: an explicit retry's cause, else the exception."""
    if isinstance(exc, Retry) and exc.exc is not None:
        return exc.exc
    return exc
