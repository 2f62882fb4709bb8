"""The shop's tasks, in the Django app's own module (Celery's `tasks.py` convention).

The worker imports this module: `cd examples/django_project && aiotask worker -A shop.tasks:app`.
Tasks that need the ORM call `django.setup()` in the worker first (not needed here).
"""

from __future__ import annotations

import asyncio

from aiotask import App

app = App("shop")


@app.task(name="shop.order_total")
async def order_total(order_id: int, prices: list[float]) -> dict[str, float]:
    await asyncio.sleep(0.01)  # stands for a slow call to a payment or tax service
    return {"order_id": order_id, "total": round(sum(prices), 2)}
