from __future__ import annotations

from tests.docs_check import problems


def test_docs_links_resolve_and_python_blocks_parse() -> None:
    assert problems() == []
