"""Tests share Redis and RabbitMQ with other runs: none may read or wipe server-wide state."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
#: server-wide figures and wipes: a test's result must not depend on (or destroy) others' data
FORBIDDEN = re.compile(r"connected_clients|flushall|flushdb|\bdbsize\b|keys\(\s*['\"]\*['\"]", re.I)


def test_no_test_reads_or_wipes_server_wide_state() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line) and not line.lstrip().startswith("#")
    ]
    assert not offenders, "\n".join(offenders)
