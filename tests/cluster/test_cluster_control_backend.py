"""tests/contract/test_control_backend.py over a private Redis Cluster."""

from __future__ import annotations

from tests.contract.test_control_backend import *  # noqa: F403
