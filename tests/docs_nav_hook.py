"""mkdocs hook: every docs/*.md page appears in the site's navigation.

mkdocs.yml lists the pages that existed when it was written; a page added later (by another
change) is put in the nav here instead of breaking `mkdocs build --strict` with an "omitted
file" warning. Links keep being checked strictly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.docs_nav")

#: where a page that mkdocs.yml does not list goes: a section title, or None for the top level
PLACES: dict[str, str | None] = {
    "deployment.md": None,
    "reliability.md": "User guide",
    "sync.md": "User guide",
}
DEFAULT_SECTION = "User guide"


def listed(nav: list[Any]) -> set[str]:
    """Every page file named anywhere in a mkdocs nav."""
    found: set[str] = set()
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            if isinstance(value, list):
                found |= listed(value)
            elif isinstance(value, str):
                found.add(value)
    return found


def section(nav: list[Any], title: str) -> list[Any]:
    """The item list of a top-level section, made at the end when missing."""
    for item in nav:
        if isinstance(item, dict) and isinstance(item.get(title), list):
            entries: list[Any] = item[title]
            return entries
    entries = []
    nav.append({title: entries})
    return entries


def add_missing(nav: list[Any], docs: Path) -> list[str]:
    """Put every page of `docs` that `nav` does not name into it; returns what was added."""
    known = listed(nav)
    added: list[str] = []
    for page in sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md")):
        if page in known:
            continue
        place = PLACES.get(page, DEFAULT_SECTION)
        if place is None:
            nav.insert(max(len(nav) - 3, 0), page)  # before Migrating / API / Benchmarks
        else:
            section(nav, place).append(page)
        added.append(page)
    return added


def on_config(config: Any, **kwargs: Any) -> Any:
    nav = config["nav"]
    if nav:
        for page in add_missing(nav, Path(config["docs_dir"])):
            log.info("%s is not in mkdocs.yml's nav: listed by the nav hook", page)
    return config
