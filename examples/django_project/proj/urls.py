from __future__ import annotations

from django.urls import path
from shop import views

urlpatterns = [
    path("orders/<int:order_id>/total", views.order_total_view),
    path("results/<str:task_id>", views.result),
]
