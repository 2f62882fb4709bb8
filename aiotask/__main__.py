"""`python -m aiotask` runs the CLI."""

from __future__ import annotations

from aiotask.cli import main

main()
