"""The aiotask pytest plugin."""

from __future__ import annotations
