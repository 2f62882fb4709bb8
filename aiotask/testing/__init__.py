"""Test helpers."""

from __future__ import annotations
