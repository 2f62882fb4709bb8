"""Celery interoperability: Celery's wire formats above the byte-level brokers and backends.

- `envelope`: kombu's transport message (body, headers, properties) as one JSON document, the
  form kombu keeps in Redis lists; the Celery-layout brokers hand these bytes up and down.
- `v2`: Celery task protocol v2 <-> aiotask `Message` (headers, [args, kwargs, embed]).
- `results`: Celery's result meta (`celery-task-meta-<id>`) <-> aiotask result records.

Enabled by `App(..., celery_compat=True)` / AIOTASK_CELERY_COMPAT=true; see
docs/migrating-from-celery.md for what crosses the boundary and what does not.
"""

from __future__ import annotations
