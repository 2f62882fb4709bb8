"""The OpenAPI 3.1 document of the HTTP API, served at /api/openapi.json.

Written by hand (the API is small) and checked by the property tests, which generate
requests from it and require every answer to be one it documents.
"""

from __future__ import annotations

from typing import Any

from aiotask import __version__

Schema = dict[str, Any]

_ERROR = {"$ref": "#/components/schemas/Error"}
_STR = {"type": "string"}
_STRS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_OBJ = {"type": "object"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Schema]:
    text = {
        400: "the body is not JSON",
        401: "credentials missing or wrong (when auth is on)",
        404: "no such task, result entry or schedule",
        409: "the task is not in a state this applies to",
        413: "the body is too large",
        415: "the body is not application/json",
        422: "the body or a parameter is invalid (the reason says which)",
        503: "the result backend is not available",
    }
    return {str(c): _json(_ERROR, text[c]) for c in (401, *codes)}


def _body(schema: Schema, required: bool = False) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _op(summary: str, ok: dict[str, Schema], **extra: Any) -> Schema:
    return {"summary": summary, "responses": ok, **extra}


_SELECT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ids": _STRS,
        "all": {"type": "boolean"},
        "queue": _STR,
        "task": _STR,
        "reason": _STR,
    },
    "description": 'either "ids" or "all": true; queue/task (glob)/reason narrow "all"',
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "SendBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "args": {"type": "array"},
            "kwargs": {"type": "object"},
            "options": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "countdown": {"type": "number", "minimum": 0},
                    "eta": {
                        "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]
                    },
                    "expires": {"type": "number", "minimum": 0},
                    "priority": {"type": "integer"},
                    "queue": {"type": "string", "minLength": 1, "maxLength": 200},
                    "task_id": {"type": "string", "minLength": 1, "maxLength": 200},
                    "headers": {"type": "object", "additionalProperties": _STR},
                    "ignore_result": {"type": "boolean"},
                },
            },
        },
    },
    "Sent": {"type": "object", "required": ["id"], "properties": {"id": _STR}},
    "Result": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": _STR,
            "state": _STR,
            "task": _STR,
            "result": {},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": _STR, "message": _STR, "traceback": _STR},
            },
        },
    },
    "Revoke": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"terminate": {"type": "boolean"}},
    },
    "Select": _SELECT,
    "Report": {
        "type": "object",
        "properties": {"replayed": _STRS, "purged": _STRS, "missing": _STRS},
    },
}


def _bulk_filter(**more: Schema) -> Schema:
    """The body of the bulk history endpoints: the history's filter (and `more` fields)."""
    fields = {"q": _STR, "state": _STR, "task": _STR, "worker": _STR}
    bounds = {"since": {"type": "number"}, "until": {"type": "number"}}
    return _body(
        {"type": "object", "additionalProperties": False, "properties": fields | bounds | more}
    )


def _paths() -> dict[str, Schema]:
    task_id = _path_param("id", "the task id")
    return {
        "/api/tasks/{name}": {
            "post": _op(
                "Send a task by its registered name",
                {
                    "202": _json(_ref("Sent"), "sent; poll /api/results/{id}"),
                    **_errors(400, 404, 413, 415, 422),
                },
                parameters=[_path_param("name", "the task's registered name")],
                requestBody=_body(_ref("SendBody")),
            )
        },
        "/api/results/{id}": {
            "get": _op(
                "A task's state and result (or error)",
                {"200": _json(_ref("Result"), "PENDING when nothing is known"), **_errors(503)},
                parameters=[task_id],
            )
        },
        "/api/results/{id}/revoke": {
            "post": _op(
                "Revoke a task; terminate: stop it if it is running",
                {"202": _json(_OBJ, "revoked"), **_errors(400, 413, 415, 422)},
                parameters=[task_id],
                requestBody=_body(_ref("Revoke")),
            )
        },
        "/api/workers": {
            "get": _op("Workers in the registry, online or lost", {"200": _json(_OBJ, "workers")})
        },
        "/api/workers/rate-limit": {
            "post": _op(
                "Change a task's rate limit on running workers",
                {"200": _json(_OBJ, "replies by worker"), **_errors(400, 413, 415, 422)},
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["task", "rate"],
                        "properties": {
                            "task": _STR,
                            "rate": {"oneOf": [_STR, {"type": "number"}]},
                            "destination": _STRS,
                        },
                    },
                    True,
                ),
            )
        },
        "/api/workers/shutdown": {
            "post": _op(
                "Warm shutdown of the named workers",
                {"200": _json(_OBJ, "replies by worker"), **_errors(400, 413, 415, 422)},
                requestBody=_body(
                    {
                        "type": "object",
                        "required": ["destination"],
                        "properties": {"destination": _STRS},
                    },
                    True,
                ),
            )
        },
        "/api/queues": {
            "get": _op(
                "Per queue: ready, delayed, in flight and dead letters (null: unknown)",
                {"200": _json(_OBJ, "queues")},
            )
        },
        "/api/dead-letters": {
            "get": _op(
                "Dead letters with their arguments, oldest first per queue",
                {"200": _json(_OBJ, "dead letters"), **_errors(422)},
                parameters=[
                    _query("queue", _STR, "only this queue"),
                    _query("task", _STR, "task name or glob"),
                    _query("reason", _STR, "substring of the reason"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "at most"),
                ],
            )
        },
        "/api/dead-letters/replay": {
            "post": _op(
                "Send dead letters back to their queue",
                {
                    "200": _json(_ref("Report"), "replayed and missing ids"),
                    **_errors(400, 413, 415, 422),
                },
                requestBody=_body(_ref("Select"), True),
            )
        },
        "/api/dead-letters/purge": {
            "post": _op(
                "Delete dead letters for good",
                {
                    "200": _json(_ref("Report"), "purged and missing ids"),
                    **_errors(400, 413, 415, 422),
                },
                requestBody=_body(_ref("Select"), True),
            )
        },
        "/api/schedules": {
            "get": _op("Periodic entries with next and last run", {"200": _json(_OBJ, "schedules")})
        },
        "/api/schedules/{name}/{action}": {
            "post": _op(
                "Pause, resume or run a periodic entry now",
                {
                    "200": _json(_OBJ, "done"),
                    "202": _json(_OBJ, "run-now: sent"),
                    **_errors(404),
                },
                parameters=[
                    _path_param("name", "the entry's name"),
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["pause", "resume", "run-now"]},
                    },
                ],
            )
        },
        "/api/history": {
            "get": _op(
                "Tasks in the stored history, most recently changed first",
                {"200": _json(_OBJ, "tasks and total"), **_errors(422)},
                parameters=[
                    _query(
                        "q", _STR, "id prefix, or part of the task name, arguments or error text"
                    ),
                    _query("state", _STR, "only this state"),
                    _query("task", _STR, "only this task name"),
                    _query("worker", _STR, "only tasks last seen on this worker"),
                    _query("since", {"type": "number"}, "changed at or after (unix seconds)"),
                    _query("until", {"type": "number"}, "changed at or before (unix seconds)"),
                    _query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"
                    ),
                    _query("offset", {"type": "integer", "minimum": 0}, "skip this many"),
                ],
            )
        },
        "/api/history/{id}": {
            "get": _op(
                "One task: timeline, arguments (JSON text, when known), links and result",
                {"200": _json(_OBJ, "task and result"), **_errors(404, 503)},
                parameters=[task_id],
            )
        },
        "/api/history/revoke": {
            "post": _op(
                "Revoke every unfinished task of the history a filter matches",
                {"200": _json(_OBJ, "the revoked ids"), **_errors(400, 413, 415, 422)},
                requestBody=_bulk_filter(terminate={"type": "boolean"}),
            )
        },
        "/api/history/retry": {
            "post": _op(
                "Send again every failed, revoked or dead task of the history a filter matches "
                "whose arguments are known (sent here); the others are skipped",
                {
                    "202": _json(_OBJ, "retried: {old id: new id}"),
                    **_errors(400, 413, 415, 422),
                },
                requestBody=_bulk_filter(),
            )
        },
        "/api/history/delete": {
            "post": _op(
                "Forget the results and delete the history of every task a filter matches "
                "(a filter is required)",
                {"200": _json(_OBJ, "the deleted ids"), **_errors(400, 413, 415, 422)},
                requestBody=_bulk_filter(),
            )
        },
        "/api/history/{id}/retry": {
            "post": _op(
                "Send a failed, revoked or dead task again (arguments known when sent here)",
                {
                    "202": _json(_ref("Sent"), "sent again, under a new id"),
                    **_errors(404, 409, 422),
                },
                parameters=[task_id],
            )
        },
        "/api/events": {
            "get": _op(
                "Live task changes as server-sent events",
                {"200": {"description": "text/event-stream", "content": {"text/event-stream": {}}}},
            )
        },
    }


def openapi_document(root_path: str = "") -> Schema:
    """The document; `root_path` is where the dashboard is mounted (its `servers` entry)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aiotask dashboard API",
            "version": __version__,
            "description": "Send tasks, read results, revoke; workers, queues, dead letters.",
        },
        "servers": [{"url": root_path or "/"}],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"basic": []}, {"bearer": []}, {}],
    }
