"""Benchmarks: aiotask vs Celery, asyncio peers and a raw redis-py floor (see harness.py)."""
