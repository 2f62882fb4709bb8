from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aiotask.exceptions import Reject, Retry, TaskRevoked
from aiotask.retry import RetryPolicy, decide
from aiotask.worker.outcome import Failed, Rejected, Retrying, Revoked, classify


def fixed(lo: float, hi: float) -> float:
    return hi


def test_no_autoretry_means_fail() -> None:
    assert decide(RetryPolicy(), ValueError(), 0) is None


def test_autoretry_until_max() -> None:
    policy = RetryPolicy(max_retries=2, autoretry_for=(OSError,), default_retry_delay=3)
    assert decide(policy, OSError(), 0).delay == 3  # type: ignore[union-attr]
    assert decide(policy, OSError(), 1) is not None
    assert decide(policy, OSError(), 2) is None
    assert decide(policy, ValueError(), 0) is None


def test_unlimited_retries() -> None:
    policy = RetryPolicy(max_retries=None, autoretry_for=(OSError,))
    assert decide(policy, OSError(), 1000) is not None


def test_exponential_backoff_capped_without_jitter() -> None:
    policy = RetryPolicy(
        autoretry_for=(OSError,),
        max_retries=None,
        retry_backoff=True,
        retry_backoff_max=10,
        retry_jitter=False,
    )
    assert [decide(policy, OSError(), n).delay for n in range(5)] == [1, 2, 4, 8, 10]  # type: ignore[union-attr]


def test_backoff_factor_and_full_jitter() -> None:
    policy = RetryPolicy(autoretry_for=(OSError,), retry_backoff=3, retry_jitter=True)
    decision = decide(policy, OSError(), 2, rand=fixed)
    assert decision is not None and decision.delay == 12
    seen = {decide(policy, OSError(), 2, rand=lambda lo, hi: lo).delay}  # type: ignore[union-attr]
    assert seen == {0.0}


def test_explicit_retry_countdown_eta_and_max() -> None:
    policy = RetryPolicy(max_retries=3)
    cause = KeyError("k")
    d = decide(policy, Retry(cause, countdown=5), 0)
    assert d is not None and d.delay == 5 and d.exc is cause
    eta = datetime.now(UTC) + timedelta(seconds=30)
    d = decide(policy, Retry(eta=eta), 0)
    assert d is not None and 28 < d.delay <= 30
    assert decide(policy, Retry(countdown=1), 3) is None
    assert decide(policy, Retry(countdown=1, max_retries=10), 3) is not None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (Reject("no", requeue=True), Rejected),
        (TaskRevoked("x"), Revoked),
        (ValueError(), Failed),
        (Retry(countdown=1), Retrying),
    ],
)
def test_classify(exc: BaseException, kind: type) -> None:
    assert isinstance(classify(exc, RetryPolicy(), 0), kind)


def test_classify_gives_up_with_the_cause() -> None:
    cause = OSError("disk")
    outcome = classify(Retry(cause), RetryPolicy(max_retries=1), 1)
    assert isinstance(outcome, Failed) and outcome.exc is cause
