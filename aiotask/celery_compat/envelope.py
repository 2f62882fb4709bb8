"""kombu's transport message as bytes: the JSON document kombu's Redis transport stores.

    {"body": "<base64>", "content-type": "application/json", "content-encoding": "utf-8",
     "headers": {...}, "properties": {"body_encoding": "base64", "delivery_tag": "...",
     "delivery_info": {"exchange": "...", "routing_key": "..."}, "priority": 0,
     "correlation_id": "...", "reply_to": "..."}}

The Celery-layout brokers carry exactly this between the wire and the codec above them, so a
broker deals in transport framing (headers, properties, a delivery tag) and never in tasks.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from aiotask.exceptions import ProtocolError

JSON = "application/json"


@dataclass(slots=True)
class Envelope:
    """One kombu message: the raw body bytes plus its headers and properties."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = JSON
    content_encoding: str = "utf-8"
    correlation_id: str | None = None
    reply_to: str | None = None
    priority: int = 0
    exchange: str = ""
    routing_key: str = ""
    delivery_tag: str = field(default_factory=lambda: str(uuid.uuid4()))

    def dumps(self) -> bytes:
        """The kombu Redis form (body base64-encoded, as kombu writes it)."""
        doc = {
            "body": base64.b64encode(self.body).decode("ascii"),
            "content-encoding": self.content_encoding,
            "content-type": self.content_type,
            "headers": self.headers,
            "properties": {
                "correlation_id": self.correlation_id,
                "reply_to": self.reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": self.exchange, "routing_key": self.routing_key},
                "priority": self.priority,
                "body_encoding": "base64",
                "delivery_tag": self.delivery_tag,
            },
        }
        return orjson.dumps(doc, default=str)


def loads(raw: bytes) -> Envelope:
    """Parse kombu's JSON message; ProtocolError says what is wrong (never a bare KeyError)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not a kombu message (not JSON: {exc})") from None
    if not isinstance(doc, dict) or "body" not in doc:
        raise ProtocolError("not a kombu message (no 'body')")
    props = doc.get("properties") or {}
    info = props.get("delivery_info") or {}
    body = doc["body"]
    if props.get("body_encoding") == "base64":
        try:
            data = base64.b64decode(body)
        except (binascii.Error, TypeError) as exc:
            raise ProtocolError(f"kombu message body is not base64: {exc}") from None
    else:
        data = body.encode() if isinstance(body, str) else orjson.dumps(body)
    headers = doc.get("headers") or {}
    if not isinstance(headers, dict):
        raise ProtocolError("kombu message headers are not an object")
    return Envelope(
        body=data,
        headers=headers,
        content_type=str(doc.get("content-type") or JSON),
        content_encoding=str(doc.get("content-encoding") or "utf-8"),
        correlation_id=props.get("correlation_id"),
        reply_to=props.get("reply_to"),
        priority=int(props.get("priority") or 0),
        exchange=str(info.get("exchange") or ""),
        routing_key=str(info.get("routing_key") or ""),
        delivery_tag=str(props.get("delivery_tag") or uuid.uuid4()),
    )
