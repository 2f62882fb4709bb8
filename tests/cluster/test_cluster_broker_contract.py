"""The broker contract suite (tests/contract) over a private Redis Cluster."""

from __future__ import annotations

from tests.contract.test_broker_contract import *  # noqa: F403
