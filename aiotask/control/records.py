"""The wire formats of the worker registry and the control channel (pure; no I/O).

Registry: each worker writes a `WorkerInfo` (JSON) every `worker_heartbeat_interval`; it
counts as lost once `worker_lost_after` passes without one, and the entry expires after
`REGISTRY_KEEP_FACTOR` x `worker_lost_after`.

Control: a request is one broadcast `{"v": 1, "op": "inspect" | "control", "cmd", "args",
"reply_to", "to", "ns"}`; each addressed worker appends one reply `{"worker", "ok"}` or
`{"worker", "error"}` under `reply_to`. The older `{"op": "revoke", "ids", "terminate"}`
broadcast (App.revoke) needs no reply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

from aiotask.exceptions import ProtocolError

#: A lost worker's entry is kept this many times `worker_lost_after`, then expires.
REGISTRY_KEEP_FACTOR = 10
#: Seconds a reply is kept for a client that has not taken it (it gave up or crashed).
REPLY_TTL = 60.0
PROTOCOL_VERSION = 1

INSPECT_COMMANDS = (
    "ping",
    "active",
    "reserved",
    "scheduled",
    "revoked",
    "registered",
    "stats",
    "conf",
)
CONTROL_COMMANDS = (
    "rate_limit",
    "add_consumer",
    "cancel_consumer",
    "pool_grow",
    "pool_shrink",
    "shutdown",
)

State = Literal["online", "lost"]


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker's registry entry, as of its latest heartbeat."""

    name: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    processes: int
    version: str
    #: unix seconds
    started_at: float
    #: unix seconds of this heartbeat
    beat_at: float
    #: the worker's own `worker_lost_after`: how stale a beat may get before it counts as lost
    lost_after: float
    done: int = 0
    failed: int = 0
    active: int = 0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def state(self, at: float) -> State:
        """Online while its latest beat is younger than `lost_after` at unix time `at`."""
        return "online" if at - self.beat_at <= self.lost_after else "lost"

    def to_dict(self, at: float | None = None) -> dict[str, Any]:
        """JSON-ready; with `at`, also its `state` then."""
        out = asdict(self)
        out["queues"], out["load"] = list(self.queues), list(self.load)
        if at is not None:
            out["state"] = self.state(at)
        return out

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> WorkerInfo:
        """Parse a stored record; ProtocolError if it is not one (another version, garbage)."""
        try:
            raw = orjson.loads(data)
            load = [float(x) for x in raw.get("load", ())[:3]] + [0.0, 0.0, 0.0]
            return cls(
                name=str(raw["name"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                queues=tuple(str(q) for q in raw["queues"]),
                concurrency=int(raw["concurrency"]),
                processes=int(raw["processes"]),
                version=str(raw["version"]),
                started_at=float(raw["started_at"]),
                beat_at=float(raw["beat_at"]),
                lost_after=float(raw["lost_after"]),
                done=int(raw.get("done", 0)),
                failed=int(raw.get("failed", 0)),
                active=int(raw.get("active", 0)),
                load=(load[0], load[1], load[2]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"not a worker record: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Request:
    """One control request, as a worker reads it off the channel."""

    op: str
    cmd: str
    args: dict[str, Any]
    reply_to: str
    #: worker names it is for; None: every worker
    to: frozenset[str] | None
    #: the sender's key prefix: a worker of another app sharing the channel ignores it
    ns: str | None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": PROTOCOL_VERSION,
                "op": self.op,
                "cmd": self.cmd,
                "args": self.args,
                "reply_to": self.reply_to,
                "to": sorted(self.to) if self.to is not None else None,
                "ns": self.ns,
            }
        )

    def for_worker(self, name: str, ns: str) -> bool:
        return (self.to is None or name in self.to) and (self.ns is None or self.ns == ns)


def decode_request(raw: object) -> Request:
    """A parsed broadcast -> Request; ProtocolError saying what is wrong with it."""
    if not isinstance(raw, dict):
        raise ProtocolError("a control message must be a JSON object")
    op, cmd, args = raw.get("op"), raw.get("cmd"), raw.get("args", {})
    reply_to, to, ns = raw.get("reply_to"), raw.get("to"), raw.get("ns")
    if op not in ("inspect", "control"):
        raise ProtocolError(f"unknown control op {op!r}")
    if not isinstance(cmd, str) or not isinstance(reply_to, str) or not reply_to:
        raise ProtocolError("a control request needs a string 'cmd' and 'reply_to'")
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be a JSON object")
    if to is not None and (not isinstance(to, list) or not all(isinstance(n, str) for n in to)):
        raise ProtocolError("'to' must be a list of worker names")
    if ns is not None and not isinstance(ns, str):
        raise ProtocolError("'ns' must be a string")
    return Request(op, cmd, args, reply_to, frozenset(to) if to is not None else None, ns)


def encode_reply(worker: str, *, ok: object = None, error: str | None = None) -> bytes:
    body: dict[str, object] = {"worker": worker}
    if error is not None:
        body["error"] = error
    else:
        body["ok"] = ok
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS, default=str)


def decode_reply(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """(worker name, {"ok": ...} or {"error": ...}); None for anything else (ignored)."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("worker"), str):
        return None
    if "error" in raw:
        return raw["worker"], {"error": str(raw["error"])}
    return raw["worker"], {"ok": raw.get("ok")}
