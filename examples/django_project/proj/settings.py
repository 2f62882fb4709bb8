"""A minimal Django project that sends aiotask tasks from views and a management command.

No database: the views only send tasks and read results. The aiotask App reads its broker from
AIOTASK_BROKER_URL (else the SQLite file `aiotask.db` in the current directory).
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
INSTALLED_APPS = ["shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "proj.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
