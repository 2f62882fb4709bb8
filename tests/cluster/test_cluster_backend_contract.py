"""The result backend contract suite (tests/contract) over a private Redis Cluster."""

from __future__ import annotations

from tests.contract.test_backend_contract import *  # noqa: F403
