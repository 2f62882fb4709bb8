"""`make docs`: every relative link in README.md and docs/ resolves; every Python and TOML
block parses; every Python block runs (tests/docs_run.py: the sandbox, the opt-out marker);
every `aiotask ...` command line shown uses commands and options that exist; every option of
every command is documented in docs/cli.md under its command, and every setting in
docs/settings.md. The site itself is built by `mkdocs build --strict` (also `make docs`)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.docs_cli_usage import wrong_cli_usage
from tests.docs_run import PYTHON, blocks, run_page

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#+) .*$", re.M)
CLI_PAGE = ROOT / "docs" / "cli.md"


def problems() -> list[str]:
    found: list[str] = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    commands = cli_options()
    for page in pages:
        found.extend(wrong_cli_usage(page, commands, str(page.relative_to(ROOT))))
        found.extend(broken_links(page))
        unparsed = unparsable_blocks(page)
        found.extend(unparsed)
        if not unparsed:
            found.extend(run_page(page))
    found.extend(undocumented_cli_options(CLI_PAGE.read_text() if CLI_PAGE.exists() else ""))
    found.extend(undocumented_settings((ROOT / "docs" / "settings.md").read_text()))
    return found


def broken_links(page: Path) -> list[str]:
    found: list[str] = []
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            found.append(f"{page.relative_to(ROOT)}: broken link {target}")
    return found


def unparsable_blocks(page: Path) -> list[str]:
    """Python and TOML blocks that do not parse (a page with one is not run)."""
    found: list[str] = []
    for block in blocks(page):
        try:
            if block.lang in PYTHON:
                ast.parse(block.code)
            elif block.lang == "toml":
                tomllib.loads(block.code)
        except (SyntaxError, tomllib.TOMLDecodeError) as exc:
            found.append(f"{block.where}: {block.lang} block does not parse: {exc}")
    return found


def undocumented_settings(text: str) -> list[str]:
    """Every Settings field and its AIOTASK_* variable must appear in docs/settings.md."""
    from dataclasses import fields

    from aiotask.settings import ENV_PREFIX, Settings

    return [
        f"docs/settings.md: setting {f.name} is not documented"
        for f in fields(Settings)
        if f"`{f.name}`" not in text or f"`{ENV_PREFIX}{f.name.upper()}`" not in text
    ]


def cli_options() -> dict[str, list[list[str]]]:
    """Every `aiotask ...` command (subcommands too) -> the names of each of its options."""
    import typer.main

    from aiotask.cli import cli

    out: dict[str, list[list[str]]] = {}

    def walk(prefix: str, command: Any) -> None:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(f"{prefix} {name}", sub)
        if prefix != "aiotask" or not getattr(command, "commands", None):
            out[prefix] = [
                [*p.opts, *p.secondary_opts]
                for p in command.params
                if p.param_type_name == "option" and not p.hidden
            ]

    walk("aiotask", typer.main.get_command(cli))
    return out


def section(text: str, command: str) -> str | None:
    """The part of the page under the heading that names `command`, up to the next heading
    of the same or a higher level; None when no heading names it."""
    headings = list(HEADING.finditer(text))
    for i, h in enumerate(headings):
        if re.search(rf"`{re.escape(command)}`", h.group(0)):
            level = len(h.group(1))
            end = next(
                (n.start() for n in headings[i + 1 :] if len(n.group(1)) <= level), len(text)
            )
            return text[h.end() : end]
    return None


def undocumented_cli_options(text: str) -> list[str]:
    """Each command needs a heading in docs/cli.md, and each name of each of its options
    (`-c` and `--concurrency`) must appear under it."""
    found: list[str] = []
    for command, options in cli_options().items():
        body = section(text, command)
        if body is None:
            found.append(f"docs/cli.md: no heading for `{command}`")
            continue
        for names in options:
            for name in names:
                if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", body):
                    found.append(f"docs/cli.md: `{command}` option {name} is not documented")
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"docs: {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
