"""The broker admin suite (queue stats, dead letters, known queues) over a private Redis Cluster."""

from __future__ import annotations

from tests.contract.test_broker_admin import *  # noqa: F403
