"""Run the Python examples of README.md and docs/*.md, as `make docs` does.

Each page runs like a notebook: its Python blocks run in order in one namespace (so a block
may use the `app` and tasks an earlier block of the same page defined), in a temporary
directory (an `App("proj")` with no URL makes its SQLite file there), on one event loop,
with top-level `await` allowed. The sandbox changes only two things, both so that no
server is needed:

- string constants that are server URLs (`redis://`, `rediss://`, `amqp://`, `amqps://`)
  become `memory://`;
- before each block, every App the page has defined that registers tasks gets a real worker
  on the same loop (`aiotask.testing.start_worker`, default queue), so `await r.get()`
  returns. Workers stop and apps close when the page ends.

Blocks that define `test_*` functions are pytest examples: they are written to a test file
in a temporary project, with the page's ```toml block that starts with `# pyproject.toml`
as its pyproject.toml, and run by pytest in a subprocess; every test must pass (none
skipped), so a setting the page forgets to mention fails the check.

Opt out of running (not of parsing) with an HTML comment on the line before the fence:
`<!-- docs-check: no-run REASON -->`. The reason is required.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.S | re.M,
)
NO_RUN = re.compile(r"<!--\s*docs-check:\s*no-run\b(?P<reason>[^>]*?)-->\s*$")
SERVER_URL = re.compile(r"^(redis|rediss|amqp|amqps)://")
BLOCK_TIMEOUT = 20.0
PYTHON = {"python", "py"}


@dataclass(frozen=True, slots=True)
class Block:
    page: Path
    line: int  # 1-based line of the first line of code
    lang: str
    code: str
    no_run: str | None  # the reason, when opted out

    @property
    def name(self) -> str:
        """The page's path as the check prints it (relative to the checkout when inside it)."""
        return str(self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page)

    @property
    def where(self) -> str:
        return f"{self.name}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, with its language and any no-run marker."""
    text = page.read_text()
    found: list[Block] = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NO_RUN.search(before)
        reason = marker.group("reason").strip() if marker else None
        line = text.count("\n", 0, m.start("body")) + 1
        code = textwrap.dedent(m.group("body"))
        found.append(Block(page, line, m.group("lang").lower(), code, reason))
    return found


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in PYTHON]


class _ServerUrlsToMemory(ast.NodeTransformer):
    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and SERVER_URL.match(node.value):
            return ast.copy_location(ast.Constant("memory://"), node)
        return node


def _defines_tests(tree: ast.Module) -> bool:
    return any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
        for n in tree.body
    )


def compile_block(block: Block) -> Any:
    """The block's code object, line numbers pointing into the page, server URLs swapped."""
    tree = ast.parse(block.code)
    tree = _ServerUrlsToMemory().visit(tree)
    ast.increment_lineno(tree, block.line - 1)
    ast.fix_missing_locations(tree)
    return compile(tree, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _apps(namespace: dict[str, Any]) -> list[Any]:
    """Every App the page defined: bound to a name, or the app of a task bound to a name."""
    from aiotask import App, Task

    found: list[Any] = []
    for value in list(namespace.values()):
        app = value if isinstance(value, App) else getattr(value, "app", None)
        if isinstance(value, App | Task) and isinstance(app, App) and app not in found:
            found.append(app)
    return found


def _user_tasks(app: Any) -> bool:
    return any(not name.startswith("aiotask.") for name in app.tasks)


def _failure(block: Block, exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == block.name]
    line = frames[-1].lineno if frames else block.line
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"{block.name}:{line}: example did not finish within {BLOCK_TIMEOUT:.0f} s"
    return f"{block.name}:{line}: example fails: {type(exc).__name__}: {exc}"


async def _run_page(page_blocks: list[Block]) -> list[str]:
    from aiotask.testing import start_worker

    namespace: dict[str, Any] = {"__name__": "proj"}
    workers_for: list[Any] = []
    try:
        async with contextlib.AsyncExitStack() as workers:
            for block in page_blocks:
                for app in _apps(namespace):
                    if app not in workers_for and _user_tasks(app):
                        workers_for.append(app)
                        await workers.enter_async_context(
                            start_worker(app, processes=1, shutdown_grace=2)
                        )
                try:
                    async with asyncio.timeout(BLOCK_TIMEOUT):
                        code = compile_block(block)
                        result = eval(code, namespace)  # noqa: S307 - the docs' own examples
                        if inspect.isawaitable(result):
                            await result
                except Exception as exc:
                    return [_failure(block, exc)]
    finally:  # after the workers stopped (each closes its app): the apps they did not serve
        for app in _apps(namespace):
            await app.close()
    return []


def _pytest_project(page: Path, tests: list[Block], tmp: Path) -> list[str]:
    config = [
        b.code
        for b in blocks(page)
        if b.lang == "toml" and b.code.lstrip().startswith("# pyproject.toml")
    ]
    (tmp / "pyproject.toml").write_text("\n".join(config))
    (tmp / "test_docs_example.py").write_text("\n\n".join(b.code for b in tests))
    expected = sum(
        1
        for b in tests
        for n in ast.parse(b.code).body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTASK_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    summary = proc.stdout.strip().rsplit("\n", 1)[-1]
    if proc.returncode != 0 or f"{expected} passed" not in summary or "skipped" in summary:
        where = tests[0].where
        detail = textwrap.indent(proc.stdout[-3000:] + proc.stderr[-2000:], "    ")
        return [f"{where}: pytest example: expected {expected} passed, got: {summary}\n{detail}"]
    return []


def _quietly(run: Coroutine[Any, Any, list[str]]) -> list[str]:
    """Run a page with its prints swallowed and the worker's INFO/WARNING logs silenced."""
    logger = logging.getLogger("aiotask")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return asyncio.run(run)
    finally:
        logger.setLevel(level)


def run_page(page: Path) -> list[str]:
    """Problems of one page's Python examples (empty when every runnable block runs)."""
    page_blocks = python_blocks(page)
    found = [
        f"{b.where}: docs-check no-run marker needs a reason" for b in page_blocks if b.no_run == ""
    ]
    runnable = [b for b in page_blocks if b.no_run is None]
    tests = [b for b in runnable if _defines_tests(ast.parse(b.code))]
    plain = [b for b in runnable if b not in tests]
    if not runnable:
        return found
    cwd = Path.cwd()
    saved = {k: v for k, v in os.environ.items() if k.startswith("AIOTASK_")}
    with tempfile.TemporaryDirectory(prefix="aiotask-docs-") as tmp:
        for key in saved:
            del os.environ[key]
        os.chdir(tmp)
        try:
            if plain:
                found += _quietly(_run_page(plain))
            if tests:
                found += _pytest_project(page, tests, Path(tmp))
        finally:
            os.chdir(cwd)
            os.environ.update(saved)
    return found
