"""Every `aiotask ...` command line the docs show must use commands and options that exist.

Looked at: shell-like fenced blocks (no language, bash, sh, shell, console, ini, text) and
inline code spans. A word after `aiotask` that is not a command is an error, unless it is an
upper-case placeholder (`aiotask COMMAND --help`); `a|b` and `a/b` name alternatives.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING

from tests.docs_run import blocks

if TYPE_CHECKING:
    from pathlib import Path

SHELL = {"", "bash", "sh", "shell", "console", "ini", "text"}
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
COMMAND_LINE = re.compile(r"(?:^|(?<=[\s/$]))aiotask(?=\s)(?P<rest>[^\n#`]*)")
COMMENT = re.compile(r"(^|\s)[#;].*$")  # shell and ini comments
PLACEHOLDER = re.compile(r"^[A-Z_]+$")
WORD = re.compile(r"^[a-z][a-z/|-]*$")


def _tokens(rest: str) -> list[str]:
    try:
        return shlex.split(rest)
    except ValueError:  # an unbalanced quote in a fragment: fall back to whitespace
        return rest.split()


def _without_app(tokens: list[str]) -> list[str]:
    """The tokens less `-A VALUE` pairs (a group's -A may come before its subcommand)."""
    out: list[str] = []
    skip = False
    for token in tokens:
        if not skip and token in ("-A", "--app"):
            skip = True
        elif skip:
            skip = False
        else:
            out.append(token)
    return out


def check_line(rest: str, commands: dict[str, list[list[str]]]) -> list[str]:
    """Problems of one command line (`rest` is what follows `aiotask`)."""
    tokens = _tokens(rest)
    if "|" in tokens:  # a shell pipe: what follows is another program
        tokens = tokens[: tokens.index("|")]
    path = "aiotask"
    found: list[str] = []
    for i, token in enumerate(_without_app(tokens)):
        if token.startswith("-"):
            break
        alternatives = re.split(r"[|/]", token)
        known = [f"{path} {alt}" for alt in alternatives if f"{path} {alt}" in commands]
        if len(known) == len(alternatives):
            path = known[0]
            continue
        if path == "aiotask" and i == 0 and WORD.match(token) and not PLACEHOLDER.match(token):
            found.append(f"unknown command `aiotask {token}`")
        break
    if path == "aiotask":
        return found
    names = {name for option in commands[path] for name in option} | {"--help"}
    for token in tokens:
        option = token.strip("[]").split("=", 1)[0]
        is_option = option.startswith("-") and len(option) > 1 and not option[1:].isdigit()
        if is_option and option not in names:
            found.append(f"`{path}` has no option {option}")
    return found


def command_lines(page: Path) -> list[tuple[int, str]]:
    """(line, text after `aiotask`) for every command line shown in code on the page."""
    found: list[tuple[int, str]] = []
    for block in blocks(page):
        if block.lang in SHELL:
            for n, line in enumerate(block.code.splitlines()):
                code = COMMENT.sub("", line)
                found += [(block.line + n, m["rest"]) for m in COMMAND_LINE.finditer(code)]
    in_fence = False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for span in SPAN.findall(line):
            if not span.startswith(("from ", "import ")):
                found += [(n, m["rest"]) for m in COMMAND_LINE.finditer(span)]
    return found


def wrong_cli_usage(page: Path, commands: dict[str, list[list[str]]], name: str) -> list[str]:
    return [
        f"{name}:{line}: {problem}"
        for line, rest in command_lines(page)
        for problem in check_line(rest, commands)
    ]
