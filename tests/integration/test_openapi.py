"""The OpenAPI document of /api/v1: it lists every route, and schemathesis finds the server
answering as it says (no 5xx, documented statuses, JSON shapes) over the real store."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation

from jobwire.api_models import MAX_BODY_BYTES
from jobwire.config import HttpConfig
from jobwire.metrics import Metrics
from jobwire.models import JobSpec
from jobwire.store.postgres import PostgresStore
from jobwire.web import HttpApi

pytestmark = pytest.mark.timeout(180)
TOKEN = "s3cret-token-for-openapi-0123"
# Every check but one: a schema-valid body may still be refused (400) for what JSON Schema
# cannot say: a handler outside this instance's allow-list (which the API never lists) or
# text PostgreSQL cannot store (NUL). Schema-invalid input must be refused all the same.
EXCLUDED = [positive_data_acceptance]
# aiohttp's default max_line_size and max_field_size.
AIOHTTP_LINE_LIMIT = 8190
READER = "read-token-for-openapi-01234"
T = TypeVar("T")


def make_api(store: PostgresStore, **http: Any) -> HttpApi:
    config = HttpConfig.model_validate(
        {"listen": "127.0.0.1:0", "admin_token": TOKEN, "read_token": READER, **http}
    )
    return HttpApi(
        config,
        store,
        Metrics(store, lambda: {}, lambda: {}),
        lambda: {"orders": {"state": "up", "last_error": None}},
        lambda: None,
        allowed_handlers=frozenset({"echo"}),
    )


class Served:
    """An HttpApi over the real store, served from an event loop in a thread of its own
    (schemathesis sends its requests synchronously)."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = self.run(PostgresStore.connect(database_url, "jobwire", max_size=4))
        self.server = TestServer(make_api(self.store).app())
        self.run(self.server.start_server())
        self.url = str(self.server.make_url("")).rstrip("/")

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.server.close())
        self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    api = Served(database_url)
    try:
        # A few jobs, so that generated ids sometimes name one (ids start at 1).
        specs = [JobSpec(handler="echo", payload={"i": i}) for i in range(3)]
        api.run(api.store.enqueue_many(specs))
        yield api
    finally:
        api.close()


async def test_the_document_lists_every_api_route(pg_store: PostgresStore) -> None:
    """A route added to the application without the table (and so without docs) fails here."""
    api = make_api(pg_store)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.app().router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"  # aiohttp adds HEAD beside each GET
    }
    documented = {(method, path) for path, item in api.document["paths"].items() for method in item}
    assert served == documented
    assert all(path.startswith("/api/v1/") for _, path in documented)


async def test_the_document_is_served_and_says_who_may_read(pg_store: PostgresStore) -> None:
    for public, security in ((False, [{"bearerAuth": []}]), (True, [])):
        server = TestServer(make_api(pg_store, public_reads=public).app())
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(server.make_url("/api/v1/openapi.json")) as response:
                    assert response.status == 200  # open: it describes the API, not the data
                    document = await response.json()
        finally:
            await server.close()
        assert document["openapi"].startswith("3.1")
        paths = document["paths"]
        assert paths["/api/v1/jobs"]["get"]["security"] == security
        assert paths["/api/v1/jobs"]["post"]["security"] == [{"bearerAuth": []}]
        assert {"401", "403"} <= set(paths["/api/v1/jobs"]["post"]["responses"])
        body = paths["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/EnqueueRequest"}
        enqueue = document["components"]["schemas"]["EnqueueRequest"]
        assert enqueue["required"] == ["handler"] and enqueue["additionalProperties"] is False
        assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def send(case: schemathesis.Case, url: str) -> None:
    """Send a generated request and check the answer against the document."""
    negative = case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY)
    if not negative and isinstance(case.body, dict) and "handler" in case.body:
        # A generated name is hardly ever on the allow-list (a 400): name one that is, so
        # that valid bodies reach the store; and one dedup key, so that duplicates are
        # answered too.
        case.body["handler"] = "echo"
        if isinstance(case.body.get("dedup_key"), str):
            case.body["dedup_key"] = "one-key"
    # The admin token, unless the headers are the invalid part (auth left out or mangled):
    # then they go as generated, and must be refused.
    invalid_auth = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    headers = None if invalid_auth else {"Authorization": f"Bearer {TOKEN}"}
    if _over_the_parsers_limit(case, url, headers):
        # aiohttp's HTTP parser answers a request line or header over 8,190 bytes with a
        # plain-text 400 before any handler (or the document) is involved: refused is all
        # that can be asked of it.
        assert case.call(base_url=url, headers=headers).status_code == 400
        return
    if negative and _body_over_the_limit(case):
        # A generated invalid body past the server's size limit is refused by its size
        # (413) before its content is looked at: refused is what is asked.
        assert case.call(base_url=url, headers=headers).status_code == 413
        return
    case.call_and_validate(base_url=url, headers=headers, excluded_checks=EXCLUDED)


def _body_over_the_limit(case: schemathesis.Case) -> bool:
    body = case.body
    if body is None:
        return False
    if isinstance(body, (bytes, str)):
        return len(body.encode() if isinstance(body, str) else body) > MAX_BODY_BYTES
    return len(json.dumps(body).encode()) > MAX_BODY_BYTES


def _over_the_parsers_limit(
    case: schemathesis.Case, url: str, headers: dict[str, str] | None
) -> bool:
    kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
    prepared = requests.Request(
        kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=kwargs.get("headers")
    ).prepare()
    line = len(f"{kwargs['method']} {prepared.path_url} HTTP/1.1".encode())
    fields = (len(f"{k}: {v}".encode()) for k, v in (prepared.headers or {}).items())
    return max([line, *fields]) > AIOHTTP_LINE_LIMIT


@pytest.mark.slow
def test_schemathesis_finds_the_server_as_documented(served: Served) -> None:
    """Generated requests, valid and invalid, to every operation: no 5xx, every status and
    JSON answer as the document says, auth enforced where it is declared."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    schema = schemathesis.openapi.from_url(f"{served.url}/api/v1/openapi.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Loaded from a URL, schemathesis leaves out the operation serving the document itself.
    assert {operation.label for operation in operations} == {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method in item
        if path != "/api/v1/openapi.json"
    }
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            conforms = given(case=operation.as_strategy(generation_mode=mode))(
                lambda case: send(case, served.url)
            )
            settings(
                max_examples=30,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )(conforms)()
