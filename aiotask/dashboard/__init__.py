"""The web dashboard and HTTP API (`aiotask dashboard`, or mount `create_app(app)`).

Needs the `dashboard` extra: `pip install 'aiotask[dashboard]'`. See docs/dashboard.md.
"""

from __future__ import annotations

from aiotask.dashboard.app import create_app
from aiotask.dashboard.auth import TOKEN_ENV, Auth

__all__ = ["TOKEN_ENV", "Auth", "create_app"]
