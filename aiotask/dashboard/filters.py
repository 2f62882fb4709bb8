"""The Tasks page's filter: query string (or form) -> HistoryQuery, and back to a query string.

Besides the API's keys (q, state, task, worker, since, until) the page offers `within`, a
window back from now ("15m", "1h", "24h", "7d"), so a link stays meaningful when shared.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiotask.dashboard.core import Problem, history_query

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiotask.history import HistoryQuery

#: The windows the page offers, by their query value.
WITHIN: dict[str, float] = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
#: The keys a filter keeps in links (paging, the revoke form).
KEYS = ("q", "state", "task", "worker", "within")


def filter_query(params: Mapping[str, Any], limit: int = 50, offset: int = 0) -> HistoryQuery:
    query = history_query(params, limit, offset)
    within = str(params.get("within") or "")
    if within:
        if within not in WITHIN:
            raise Problem(422, f"unknown window {within!r}; one of {', '.join(WITHIN)}")
        since = time.time() - WITHIN[within]
        if query.since is None or query.since < since:
            query = replace(query, since=since)
    return query


def filter_values(params: Mapping[str, Any]) -> dict[str, str]:
    """The filter's own keys, as strings, for the form and the links."""
    return {k: str(params.get(k) or "") for k in KEYS}


def link_query(values: Mapping[str, str], offset: int) -> str:
    return urlencode({**{k: v for k, v in values.items() if v}, "offset": max(offset, 0)})
