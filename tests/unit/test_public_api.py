"""The public surface: what the API contract names is importable from where it says."""

from __future__ import annotations

import aiotask
from aiotask import exceptions


def test_all_is_sorted_and_importable() -> None:
    assert aiotask.__all__ == sorted(aiotask.__all__)
    for name in aiotask.__all__:
        assert getattr(aiotask, name) is not None


def test_contract_names() -> None:
    from aiotask import App, chain, chord, group, signature  # noqa: F401
    from aiotask.testing import start_worker  # noqa: F401

    for name in [
        "NotRegistered",
        "TaskError",
        "ResultTimeout",
        "Retry",
        "Reject",
        "SoftTimeLimitExceeded",
        "TimeLimitExceeded",
        "TaskRevoked",
        "ConfigurationError",
        "SerializationError",
        "BrokerConnectionError",
    ]:
        assert issubclass(getattr(exceptions, name), exceptions.AiotaskError)
    assert issubclass(exceptions.ResultTimeout, TimeoutError)
    assert issubclass(exceptions.ProtocolError, exceptions.SerializationError)


def test_states() -> None:
    from aiotask.states import READY_STATES, State

    assert {s.value for s in State} == {
        "PENDING",
        "STARTED",
        "RETRY",
        "SUCCESS",
        "FAILURE",
        "REVOKED",
    }
    assert {"SUCCESS", "FAILURE", "REVOKED"} == READY_STATES
