"""Middleware: async hooks for cross-cutting concerns (tracing, metrics, context propagation)."""

from __future__ import annotations

from aiotask.middleware.base import CallNext, Middleware

__all__ = ["CallNext", "Middleware"]
