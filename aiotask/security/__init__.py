"""Message security and payload handling: signing, size caps, compression, serializers.

`Wire` (wire.py) is the one place a message becomes bytes and bytes become a message; the App
builds one from its settings (`app.wire`). See docs/security.md for the threat model.
"""

from __future__ import annotations

from aiotask.security.wire import BAD_SIGNATURE, TOO_LARGE, UNDECODABLE, Refused, Wire, peek

__all__ = ["BAD_SIGNATURE", "TOO_LARGE", "UNDECODABLE", "Refused", "Wire", "peek"]
