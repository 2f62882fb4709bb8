"""Optional payload compression, and decompression that never expands past a cap.

zlib is built in; zstd needs the `zstandard` package (`pip install aiotask[zstd]`). A worker
decompresses at most `limit + 1` bytes: a small message that claims to expand to gigabytes
(a zip bomb) is refused after `limit` bytes of work and memory, never expanded in full.
"""

from __future__ import annotations

import importlib.util
import zlib
from typing import Any

from aiotask.exceptions import ConfigurationError

NONE, ZLIB, ZSTD = "none", "zlib", "zstd"
ALGORITHMS = (NONE, ZLIB, ZSTD)
#: one byte on the wire per algorithm
CODES: dict[str, bytes] = {NONE: b"-", ZLIB: b"z", ZSTD: b"s"}
NAMES: dict[bytes, str] = {v: k for k, v in CODES.items()}


class TooLarge(Exception):
    """Decompressed data would pass the cap (internal; the caller dead-letters `too-large`)."""


class Corrupt(Exception):
    """The compressed bytes are not valid for their algorithm (internal)."""


def zstd_available() -> bool:
    return importlib.util.find_spec("zstandard") is not None


def check(algorithm: str) -> None:
    """Refuse an unknown algorithm, or zstd where `zstandard` is not installed."""
    if algorithm not in ALGORITHMS:
        raise ConfigurationError(
            f"compression must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}"
        )
    if algorithm == ZSTD and not zstd_available():
        raise ConfigurationError(
            "compression='zstd' needs the zstandard package: pip install 'aiotask[zstd]' "
            "(or use compression='zlib', built in)"
        )


def _zstd() -> Any:
    import zstandard

    return zstandard


def compress(data: bytes, algorithm: str) -> bytes:
    if algorithm == ZLIB:
        return zlib.compress(data, 6)
    if algorithm == ZSTD:
        return bytes(_zstd().ZstdCompressor(level=3).compress(data))
    return data


def decompress(data: bytes, algorithm: str, limit: int) -> bytes:
    """Expand `data`; TooLarge as soon as the output passes `limit` (0: no limit)."""
    bound = limit + 1 if limit else -1
    if algorithm == ZLIB:
        unzip = zlib.decompressobj()
        try:
            out = unzip.decompress(data, bound if bound > 0 else 0)
        except zlib.error as exc:
            raise Corrupt(f"zlib: {exc}") from None
        if (limit and len(out) > limit) or unzip.unconsumed_tail:
            raise TooLarge(f"expands past {limit} bytes")
        if not unzip.eof:
            raise Corrupt("zlib: truncated data")
        return out
    if algorithm == ZSTD:
        return _unzstd(data, bound)
    raise Corrupt(f"unknown compression {algorithm!r}")


def _unzstd(data: bytes, bound: int) -> bytes:
    try:
        zstandard = _zstd()
    except ImportError:
        raise Corrupt(
            "zstd-compressed, but this worker lacks the zstandard package: "
            "pip install 'aiotask[zstd]'"
        ) from None
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        with reader:
            out = bytes(reader.read(bound))
    except zstandard.ZstdError as exc:
        raise Corrupt(f"zstd: {exc}") from None
    if bound > 0 and len(out) >= bound:
        raise TooLarge(f"expands past {bound - 1} bytes")
    return out
