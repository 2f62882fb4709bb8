"""Fixtures of the TLS tests (test_tls_*.py): per module, a temp dir, a private CA with its
certificates, and a TLS-only redis-server that requires client certificates."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from tests.tls_support import PKI, TLSRedis, make_pki

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="module")
def tls_dir(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(tls_dir: Path) -> PKI:
    return make_pki(tls_dir / "pki")


@pytest.fixture(scope="module")
def tls_redis(tls_dir: Path, pki: PKI) -> Iterator[TLSRedis]:
    (tls_dir / "redis").mkdir()
    server = TLSRedis(tls_dir / "redis", pki)
    server.start()
    try:
        yield server
    finally:
        server.kill()
