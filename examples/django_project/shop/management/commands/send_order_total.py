"""`python manage.py send_order_total 7 1.5 2.25 [--wait 10]`: a management command sends too."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.tasks import order_total


class Command(BaseCommand):
    help = "Send shop.order_total and optionally wait for its result"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("order_id", type=int)
        parser.add_argument("prices", type=float, nargs="+")
        parser.add_argument("--wait", type=float, default=0.0)

    def handle(self, *args: Any, **options: Any) -> None:
        r = order_total.delay(options["order_id"], options["prices"])
        self.stdout.write(f"sent {r.id}")
        if options["wait"]:
            self.stdout.write(f"result {r.get(timeout=options['wait'])}")
