from __future__ import annotations

from tests.docs_check import (
    CLI_PAGE,
    cli_options,
    problems,
    undocumented_cli_options,
    undocumented_settings,
)


def test_docs_links_resolve_and_python_blocks_parse() -> None:
    assert problems() == []


def test_cli_options_are_read_from_the_typer_app() -> None:
    options = cli_options()
    assert {"aiotask worker", "aiotask call", "aiotask result", "aiotask purge"} <= set(options)
    assert ["--max-tasks-per-child"] in options["aiotask worker"]
    assert ["-n", "--hostname", "--name"] in options["aiotask worker"]


def test_an_undocumented_cli_option_fails_the_check() -> None:
    page = CLI_PAGE.read_text()
    assert undocumented_cli_options(page) == []
    without = page.replace("`--max-memory-per-child`", "`--max-rss`")
    assert undocumented_cli_options(without) == [
        "docs/cli.md: `aiotask worker` option --max-memory-per-child is not documented"
    ]
    # --force is named nowhere else on the page; -f still is, in purge's example
    moved = page.replace("| `-f`, `--force` | off | do not ask |", "")
    assert undocumented_cli_options(moved) == [
        "docs/cli.md: `aiotask purge` option --force is not documented"
    ]
    # -Q/--queues documented under worker does not count for purge
    no_purge_queues = page.replace(
        "| `-Q`, `--queues` | `default_queue` | comma-separated queues to purge |", ""
    )
    assert undocumented_cli_options(no_purge_queues) == [
        "docs/cli.md: `aiotask purge` option --queues is not documented"
    ]
    assert "no heading for `aiotask call`" in " ".join(
        undocumented_cli_options(page.replace("## `aiotask call`", "## call"))
    )


def test_an_undocumented_setting_fails_the_check() -> None:
    page = (CLI_PAGE.parent / "settings.md").read_text()
    assert undocumented_settings(page) == []
    assert undocumented_settings(page.replace("`AIOTASK_MAX_MESSAGE_SIZE`", "")) == [
        "docs/settings.md: setting max_message_size is not documented"
    ]
