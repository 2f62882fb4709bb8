"""The harness writes aiotask's bytecode before it measures (issue 19: idle memory).

A worker that compiles aiotask from source at every start (no bytecode written: a fresh
checkout, PYTHONDONTWRITEBYTECODE set) idles 1.3 MiB above an installed aiotask.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.harness import compile_bytecode

if TYPE_CHECKING:
    import pytest


def test_bytecode_is_written_even_where_imports_do_not_write_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    sources = [tmp_path / "aiotask" / "worker" / "run.py", tmp_path / "benchmarks" / "app.py"]
    for src in sources:
        src.parent.mkdir(parents=True)
        src.write_text("VALUE = 1\n")
    compile_bytecode({Path(sys.executable)}, tmp_path)
    for src in sources:
        assert Path(importlib.util.cache_from_source(str(src))).is_file(), src
