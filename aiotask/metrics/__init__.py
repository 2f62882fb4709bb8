"""Prometheus metrics for a worker: `aiotask worker --metrics-port P` (extra `aiotask[metrics]`).

Names are stable and documented in docs/monitoring.md. Import this package only when metrics
are wanted: it needs prometheus-client, and a worker without it pays nothing per task.
"""

from __future__ import annotations

from aiotask.metrics._worker import SENT_HEADER, SendTime, WorkerMetrics, serve

__all__ = ["SENT_HEADER", "SendTime", "WorkerMetrics", "serve"]
