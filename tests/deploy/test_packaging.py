"""Package metadata: what a user can install, and that the licence matches."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_base_install_has_no_server_client_libraries() -> None:
    names = {
        dep.split("[")[0].split(">")[0].split(";")[0].strip() for dep in PROJECT["dependencies"]
    }
    assert {"orjson", "typer", "cronsim", "typing-extensions"} <= names
    assert not names & {"redis", "aio-pika", "hiredis"}


def test_user_extras_and_no_bench_extra() -> None:
    extras = PROJECT["optional-dependencies"]
    assert extras["redis"] == ["redis[hiredis]>=5.0"]
    assert extras["rabbitmq"] == ["aio-pika>=10.2"]
    assert extras["postgres"] == ["asyncpg>=0.29"]
    assert extras["all"] == ["aiotask[redis,rabbitmq,postgres,dashboard]"]
    assert "aiotask[all]" in extras["dev"]
    assert not [name for name in extras if name.startswith("bench")]


def test_licence_file_matches_metadata() -> None:
    assert PROJECT["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "License :: OSI Approved :: MIT License" in PROJECT["classifiers"]
    assert {"Homepage", "Source", "Issues"} <= set(PROJECT["urls"])
