"""Cluster-wide coordination of task sends and runs (unique tasks, debounce, limits).

Each feature is its own module; this package re-exports nothing, so modules can be added
side by side.
"""
