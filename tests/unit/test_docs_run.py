"""The docs check runs every example: it must fail on an example that breaks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.docs_check import cli_options, unparsable_blocks
from tests.docs_cli_usage import check_line, wrong_cli_usage
from tests.docs_nav_hook import add_missing, listed
from tests.docs_run import blocks, run_page

if TYPE_CHECKING:
    from pathlib import Path

FENCE = "```"


def page(tmp_path: Path, text: str, name: str = "page.md") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("~~~", FENCE))
    return path


def test_an_example_with_an_undefined_name_fails_at_its_line(tmp_path: Path) -> None:
    doc = page(tmp_path, "# P\n\n~~~python\nx = 1\ny = x + z\n~~~\n")
    (problem,) = run_page(doc)
    assert problem.endswith("page.md:5: example fails: NameError: name 'z' is not defined")


def test_blocks_of_a_page_share_a_namespace_and_a_worker_runs_their_tasks(
    tmp_path: Path,
) -> None:
    doc = page(
        tmp_path,
        """# P

~~~python
from aiotask import App

app = App("proj", broker="redis://localhost:6379/0")   # the check swaps it for memory://

@app.task
async def add(x: int, y: int) -> int:
    return x + y
~~~

Text between the blocks, then an indented one:

  ~~~python
  r = await add.send(2, 3)
  assert await r.get(timeout=5) == 5
  assert app.conf.broker_url == "memory://"
  ~~~
""",
    )
    assert [b.line for b in blocks(doc)] == [4, 16]
    assert run_page(doc) == []


def test_a_failed_assertion_in_a_later_block_fails(tmp_path: Path) -> None:
    doc = page(
        tmp_path,
        """~~~python
from aiotask import App

app = App("proj", broker="memory://")

@app.task
async def add(x: int, y: int) -> int:
    return x + y
~~~

~~~python
assert await (await add.send(2, 3)).get(timeout=5) == 6
~~~
""",
    )
    (problem,) = run_page(doc)
    assert "page.md:12: example fails: AssertionError" in problem


def test_no_run_needs_a_reason_and_then_skips_the_block(tmp_path: Path) -> None:
    broken = "~~~python\nimport not_a_module_anywhere\n~~~\n"
    assert run_page(page(tmp_path, "<!-- docs-check: no-run needs a server -->\n" + broken)) == []
    assert run_page(page(tmp_path, "<!-- docs-check: no-run -->\n" + broken)) == [
        f"{tmp_path / 'page.md'}:3: docs-check no-run marker needs a reason"
    ]
    assert "ModuleNotFoundError" in run_page(page(tmp_path, broken))[0]


TEST_BLOCK = """~~~python
from aiotask import App
from aiotask.testing import start_worker

app = App("t", broker="memory://", backend="memory://")

@app.task
async def add(x: int, y: int) -> int:
    return x + y

async def test_add():
    async with start_worker(app):
        assert await (await add.send(1, 2)).get(timeout=5) == 3
~~~
"""


def test_a_pytest_example_runs_with_the_settings_its_page_shows(tmp_path: Path) -> None:
    config = '~~~toml\n# pyproject.toml\n[tool.pytest.ini_options]\nasyncio_mode = "auto"\n~~~\n'
    assert run_page(page(tmp_path, config + TEST_BLOCK)) == []


def test_a_pytest_example_fails_when_its_page_omits_a_needed_setting(tmp_path: Path) -> None:
    (problem,) = run_page(page(tmp_path, TEST_BLOCK))
    assert "pytest example: expected 1 passed" in problem


def test_the_nav_hook_lists_pages_missing_from_the_nav(tmp_path: Path) -> None:
    for name in ("index.md", "canvas.md", "reliability.md", "deployment.md", "new.md"):
        page(tmp_path, "# x\n", name)
    nav: list[object] = [
        {"Home": "index.md"},
        {"User guide": ["canvas.md"]},
        {"Migrating": "m.md"},
        {"API": "api.md"},
        {"Benchmarks": "b.md"},
    ]
    assert add_missing(nav, tmp_path) == ["deployment.md", "new.md", "reliability.md"]
    assert nav[2] == "deployment.md"  # top level, before the last three
    assert nav[1] == {"User guide": ["canvas.md", "new.md", "reliability.md"]}
    assert {"index.md", "canvas.md", "reliability.md", "deployment.md", "new.md"} <= listed(nav)


def test_command_lines_in_the_docs_must_use_commands_and_options_that_exist(
    tmp_path: Path,
) -> None:
    commands = cli_options()
    assert check_line(" worker -A proj:app --autoscale", commands) == [
        "`aiotask worker` has no option --autoscale"
    ]
    assert check_line(" schedule list -A proj:app --every-day", commands) == [
        "`aiotask schedule list` has no option --every-day"
    ]
    assert check_line(" inspekt active", commands) == ["unknown command `aiotask inspekt`"]
    assert check_line(" COMMAND --help", commands) == []
    assert check_line(" schedule pause|resume -A proj:app NAME", commands) == []
    assert check_line(" call -A p:app proj.add --args '[1, 2]' --countdown=5", commands) == []
    doc = page(
        tmp_path,
        "Run `aiotask worker -A p:app --pool x`, not `from aiotask import App`.\n\n"
        "~~~\naiotask beat -A p:app -B   # aiotask is fine here\n~~~\n",
    )
    assert wrong_cli_usage(doc, commands, "p.md") == [
        "p.md:4: `aiotask beat` has no option -B",
        "p.md:1: `aiotask worker` has no option --pool",
    ]


def test_a_block_that_does_not_parse_is_reported_and_its_page_not_run(tmp_path: Path) -> None:
    doc = page(tmp_path, "~~~toml\n[tool.x\n~~~\n\n~~~python\nx = (\n~~~\n")
    found = unparsable_blocks(doc)
    assert [p.split(": ", 1)[1].split(":")[0] for p in found] == [
        "toml block does not parse",
        "python block does not parse",
    ]
