"""Pure layout for the two drawings: the canvas graph and the overview's throughput chart.

Both are drawn as SVG by the templates (autoescaped, no script, no external file): this module
only turns records and buckets into boxes, lines and bars with coordinates.

A workflow's graph: a task's predecessors are its parent (the task whose success sent it) and,
when that parent is a member of a group the task is not in (a chord body after its header),
every member of that group. Columns are the longest path from a task without predecessors, so
a chain reads left to right and a group stacks in one column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiotask.history import Bucket, HistoryRecord

NODE_W, NODE_H = 170, 44
GAP_X, GAP_Y = 60, 16
PAD = 10
CHART_W, CHART_H = 720, 160
CHART_PAD = 28


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    state: str
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int


def predecessors(records: Sequence[HistoryRecord]) -> dict[str, set[str]]:
    by_id = {r.id: r for r in records}
    members: dict[str, set[str]] = {}
    for r in records:
        if r.group_id:
            members.setdefault(r.group_id, set()).add(r.id)
    out: dict[str, set[str]] = {}
    for r in records:
        preds: set[str] = set()
        parent = by_id.get(r.parent_id or "")
        if parent is not None:
            preds.add(parent.id)
            if parent.group_id and parent.group_id != r.group_id:
                preds |= members.get(parent.group_id, set())
        preds.discard(r.id)
        out[r.id] = preds
    return out


def _columns(records: Sequence[HistoryRecord], preds: dict[str, set[str]]) -> dict[str, int]:
    column: dict[str, int] = {}

    def depth(task_id: str, path: frozenset[str]) -> int:
        if task_id in column:
            return column[task_id]
        before = [p for p in preds[task_id] if p not in path]  # a cycle is a bad record
        value = 1 + max((depth(p, path | {task_id}) for p in before), default=-1)
        column[task_id] = value
        return value

    for r in records:
        depth(r.id, frozenset())
    return column


def layout(records: Sequence[HistoryRecord]) -> Graph:
    """Boxes and arrows for a workflow (records oldest first, as the store's `family`)."""
    preds = predecessors(records)
    column = _columns(records, preds)
    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for r in records:
        col = column[r.id]
        row = rows.get(col, 0)
        rows[col] = row + 1
        x = PAD + col * (NODE_W + GAP_X)
        y = PAD + row * (NODE_H + GAP_Y)
        nodes[r.id] = Node(r.id, r.name, r.state, x, y)
    edges = [
        Edge(a.x + NODE_W, a.y + NODE_H // 2, b.x, b.y + NODE_H // 2)
        for b in nodes.values()
        for a in (nodes[p] for p in sorted(preds[b.id]))
    ]
    width = PAD * 2 + (max(column.values(), default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(rows.values(), default=1) * (NODE_H + GAP_Y) - GAP_Y
    return Graph(list(nodes.values()), edges, width, height)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_h: float
    fail_y: float
    fail_h: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    top: int
    succeeded: int
    failed: int
    width: int = CHART_W
    height: int = CHART_H
    pad: int = CHART_PAD


def chart(buckets: Sequence[Bucket], minutes_per_bucket: float = 1.0) -> Chart:
    """Stacked bars (successes under failures) per bucket, scaled to the tallest."""
    top = max((b.succeeded + b.failed for b in buckets), default=0)
    scale_top = max(top, 1)
    inner_w, inner_h = CHART_W - 2 * CHART_PAD, CHART_H - 2 * CHART_PAD
    step = inner_w / max(len(buckets), 1)
    bars = []
    for i, b in enumerate(buckets):
        ok_h = inner_h * b.succeeded / scale_top
        fail_h = inner_h * b.failed / scale_top
        base = CHART_PAD + inner_h
        ago = (len(buckets) - 1 - i) * minutes_per_bucket
        bars.append(
            Bar(
                x=round(CHART_PAD + i * step + 1, 1),
                width=round(max(step - 2, 1), 1),
                ok_y=round(base - ok_h, 1),
                ok_h=round(ok_h, 1),
                fail_y=round(base - ok_h - fail_h, 1),
                fail_h=round(fail_h, 1),
                label=f"{ago:.0f} min ago: {b.succeeded} succeeded, {b.failed} failed",
            )
        )
    return Chart(
        bars,
        top,
        sum(b.succeeded for b in buckets),
        sum(b.failed for b in buckets),
    )
