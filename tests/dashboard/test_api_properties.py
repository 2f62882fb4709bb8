"""Property tests of the HTTP API against its own OpenAPI document: requests generated from
the document (and mangled: random JSON, random bytes, odd ids) never get a 5xx, every
answer is one the document lists, and with auth on, nothing answers without credentials.

No worker runs (what is tested here is the HTTP layer's input handling, on memory:// and on
Redis; the operations themselves are tested against real workers in test_api.py).
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiotask import App

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.testclient import TestClient

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from aiotask.dashboard import Auth, create_app
from aiotask.dashboard.openapi import openapi_document

DOC = openapi_document()
#: (method, path template, operation) for every operation but the endless event stream
OPERATIONS = [
    (method, path, op)
    for path, item in DOC["paths"].items()
    for method, op in item.items()
    if path != "/api/events"
]
CREDS = {"authorization": "Basic " + base64.b64encode(b"prop:erty").decode()}
SETTINGS = settings(
    database=None,  # no .hypothesis/ directory in the work tree
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that fit a (small subset of) JSON schema, as the document writes them."""
    if "$ref" in schema:
        return from_schema(DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    if "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=4)
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=30)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    return JSON


def body_of(op: dict[str, Any]) -> st.SearchStrategy[tuple[bytes, str] | None]:
    """A body that fits the document, arbitrary JSON, or arbitrary bytes (with a type)."""
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    fitting = from_schema(schema.get("schema", {})) if schema else JSON
    as_json = st.one_of(fitting, JSON).map(lambda v: (json.dumps(v).encode(), "application/json"))
    raw = st.tuples(
        st.binary(max_size=40),
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
    )
    return st.one_of(st.none(), as_json, raw)


def segment() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(min_size=1, max_size=30), st.sampled_from(["dash.add", "x", "..", "%2F"])
    )


def request_for(method: str, path: str, op: dict[str, Any]) -> st.SearchStrategy[Any]:
    params = {p["name"]: p for p in op.get("parameters", [])}
    path_values = {
        name: (from_schema(p["schema"]) if "enum" in p["schema"] else segment())
        for name, p in params.items()
        if p["in"] == "path"
    }
    query = {
        name: st.one_of(from_schema(p["schema"]).map(str), st.text(max_size=10))
        for name, p in params.items()
        if p["in"] == "query"
    }
    return st.tuples(
        st.fixed_dictionaries(path_values),
        st.fixed_dictionaries({}, optional=query),
        body_of(op) if method == "post" else st.none(),
    )


def url(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", quote(str(value), safe=""))
    return path


@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest, namespace: str) -> Iterator[TestClient]:
    """The API over memory://, and over Redis (odd queue names, ids and filters reach it)."""
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    app = App("props", broker=url, backend=url, key_prefix=namespace)

    @app.task(name="dash.add")
    async def add(x: int, y: int) -> int:
        return x + y

    web = create_app(app, auth=Auth("prop", "erty"))
    with TestClient(web, raise_server_exceptions=False) as c:
        yield c
        c.portal.call(app.close)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("method", "path", "op"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_no_5xx_and_only_documented_answers(
    client: TestClient, method: str, path: str, op: dict[str, Any]
) -> None:
    documented = set(op["responses"])

    @SETTINGS
    @given(request_for(method, path, op))
    def check(request: Any) -> None:
        path_values, query, body = request
        headers = dict(CREDS)
        content = None
        if body is not None:
            content, headers["content-type"] = body
        r = client.request(
            method.upper(), url(path, path_values), params=query, content=content, headers=headers
        )
        assert r.status_code < 500, (method, path, request, r.text)
        # 404: a path segment that routes nowhere (e.g. an id with '/' decoded by a proxy)
        assert str(r.status_code) in documented | {"404", "405"}, (request, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        if r.status_code >= 400:
            assert r.json()["error"], r.text

    check()


@pytest.mark.parametrize(
    ("method", "path", "op"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_auth_is_required(client: TestClient, method: str, path: str, op: dict[str, Any]) -> None:
    @SETTINGS
    @given(request_for(method, path, op), st.sampled_from(["", "Basic cHJvcDp4", "Bearer x"]))
    def check(request: Any, authorization: str) -> None:
        path_values, query, _ = request
        headers = {"authorization": authorization} if authorization else {}
        r = client.request(method.upper(), url(path, path_values), params=query, headers=headers)
        assert r.status_code == 401, (request, r.text)

    check()
