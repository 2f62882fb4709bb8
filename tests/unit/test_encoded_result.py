"""encoded_result (the worker's fast path) builds the same frozen EncodedResult as the class."""

from __future__ import annotations

import dataclasses

import pytest

from aiotask.backends.base import EncodedResult, encoded_result


def test_same_object_as_the_constructor() -> None:
    fast = encoded_result("id-1", "SUCCESS", b'{"id":"id-1"}', 60.0)
    slow = EncodedResult("id-1", "SUCCESS", b'{"id":"id-1"}', 60.0)
    assert type(fast) is EncodedResult
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert fast.ready


def test_still_frozen() -> None:
    fast = encoded_result("id-1", "STARTED", b"{}", 1.0)
    assert not fast.ready
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.state = "SUCCESS"  # type: ignore[misc]
