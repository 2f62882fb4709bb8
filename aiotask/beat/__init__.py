"""Periodic tasks: entries (cron or interval), the store they agree on, and the beat loop."""

from __future__ import annotations

from aiotask.beat.entry import Entry, entry_from_mapping
from aiotask.beat.schedule import Cron, Every, make_schedule

__all__ = ["Cron", "Entry", "Every", "entry_from_mapping", "make_schedule"]
