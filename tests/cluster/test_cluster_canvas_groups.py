"""tests/contract/test_canvas_groups.py over a private Redis Cluster."""

from __future__ import annotations

from tests.contract.test_canvas_groups import *  # noqa: F403
