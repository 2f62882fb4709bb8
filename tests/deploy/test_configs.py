"""The shipped Docker, compose and Kubernetes examples keep the stop-timeout sizing rule
(>= shutdown_grace + 15 s, docs/deployment.md) and point at files that exist."""

from __future__ import annotations

import re

from tests.deploy._apps import DEPLOY, ROOT, STOP_MARGIN


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.M)
    assert match, pattern
    return float(match.group(1))


def test_dockerfile() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "STOPSIGNAL SIGTERM" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the image must not run as root"
    assert "COPY deploy/probe.py /usr/local/bin/aiotask-probe" in text
    assert _number(r"AIOTASK_SHUTDOWN_GRACE=(\d+)", text) == 30


def test_compose_stop_grace_period() -> None:
    text = (DEPLOY / "docker" / "compose.yaml").read_text()
    grace = _number(r'AIOTASK_SHUTDOWN_GRACE: "(\d+)"', text)
    assert _number(r"stop_grace_period: (\d+)s", text) >= grace + STOP_MARGIN
    assert "appendonly" in text and "noeviction" in text
    assert "init: true" in text
    assert (ROOT / "deploy" / "docker" / "Dockerfile").exists()


def test_kubernetes_grace_and_probes() -> None:
    text = (DEPLOY / "k8s" / "worker-deployment.yaml").read_text()
    grace = _number(r'name: AIOTASK_SHUTDOWN_GRACE\n\s+value: "(\d+)"', text)
    assert _number(r"terminationGracePeriodSeconds: (\d+)", text) >= grace + STOP_MARGIN
    assert '"/usr/local/bin/aiotask-probe", "live"' in text
    assert '["aiotask", "status", "-A", "proj.tasks:app", "--local"]' in text
