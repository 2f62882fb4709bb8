"""tests/contract/test_lock_store.py over a private Redis Cluster."""

from __future__ import annotations

from tests.contract.test_lock_store import *  # noqa: F403
