"""Resolve `-A module:attribute` (or `module`, meaning its `app`) to an App."""

from __future__ import annotations

import importlib
import os
import sys

from aiotask.app import App
from aiotask.exceptions import ConfigurationError


def load_app(spec: str) -> tuple[App, str]:
    """Import the app; returns it with its canonical `module:attr` path. Errors say what to fix."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise ConfigurationError(f"bad -A {spec!r}: expected module:attribute, e.g. proj.tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project directory is importable
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"cannot import {module_name!r} given by -A {spec!r}: no such module "
                f"(run from your project directory, or check the dotted path)"
            ) from None
        raise
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        found = "nothing" if app is None else type(app).__name__
        raise ConfigurationError(
            f"-A {spec!r}: {module_name}.{attr} is {found}, not an aiotask App; "
            f"point -A at the module and attribute holding App(...)"
        )
    return app, f"{module_name}:{attr}"


def group_app(ctx_obj: object, spec: str) -> tuple[App, str]:
    """The app of a subcommand: its own -A, else the -A its group's callback stored in
    `ctx.obj` (`aiotask dlq -A proj:app list` and `aiotask dlq list -A proj:app` both work)."""
    given = spec or (ctx_obj if isinstance(ctx_obj, str) else "")
    if not given:
        raise ConfigurationError(
            "missing -A/--app: give it before or after the subcommand, e.g. "
            "aiotask schedule -A proj.tasks:app list"
        )
    return load_app(given)
