"""Plain (sync) Django views: they send with `delay()` and read with `SyncResult`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import JsonResponse

from aiotask.exceptions import ResultTimeout
from shop.tasks import app, order_total

if TYPE_CHECKING:
    from django.http import HttpRequest


def order_total_view(request: HttpRequest, order_id: int) -> JsonResponse:
    """POST /orders/<id>/total?price=1.5&price=2 -> 202 {"id": ...}."""
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    prices = [float(p) for p in request.GET.getlist("price")]
    r = order_total.delay(order_id, prices)
    return JsonResponse({"id": r.id}, status=202)


def result(request: HttpRequest, task_id: str) -> JsonResponse:
    """GET /results/<id>?wait=5 -> the state, and the result once there is one."""
    r = app.SyncResult(task_id)
    wait = float(request.GET.get("wait", 0))
    if wait:
        try:
            return JsonResponse({"id": task_id, "state": "SUCCESS", "result": r.get(timeout=wait)})
        except ResultTimeout:
            pass
    return JsonResponse({"id": task_id, "state": r.state})
