"""Canvas: signatures and workflow primitives, compiled to messages the workers expand."""

from __future__ import annotations

from aiotask.canvas.primitives import (
    MAP_TASK,
    STARMAP_TASK,
    Canvas,
    Chain,
    Chord,
    Group,
    Signature,
    chain,
    chord,
    chunks,
    group,
    signature,
    xmap,
    xstarmap,
)

__all__ = [
    "MAP_TASK",
    "STARMAP_TASK",
    "Canvas",
    "Chain",
    "Chord",
    "Group",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "signature",
    "xmap",
    "xstarmap",
]
