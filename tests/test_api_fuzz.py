"""Property-based test of the served API against its own OpenAPI document.

A stand-in for schemathesis (not a dependency): Hypothesis walks every GET
operation of `/schema/openapi.json`, authenticated as an operator, with
parameters drawn from each parameter's schema (in and out of its bounds,
extreme integers and times, arbitrary text) against a real PostgreSQL and
NATS with real traffic in the ledger. Every answer must be below 500; every
4xx a problem body; every 2xx of the declared media type, and JSON bodies must
conform to the declared response schema.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import uvicorn
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    bearer,
    declared,
    performed,
    registered,
    wait_for_chain,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.adapters.access_store import AccessStore
from service.adapters.embedded import free_tcp_port
from service.adapters.nats_auth import NatsUsers
from service.api.access import AccessControl
from service.api.app import create_app
from service.api.nats_credentials import NatsCredentialsSetup
from service.api.server import server_options
from service.app.access import Authenticator
from service.domain.events import Event
from service.domain.rate_limit import Limit, RateLimiter
from service.roles import load_ledger_signer

PROBLEM_JSON = "application/problem+json"
UNLIMITED = Limit(rate_per_s=1e6, burst=1_000_000)
KNOWN = ["acme", "bot", "_ledger", "kept", "ghost", "acme/bot", "0", "1"]
EXISTING = {"org": ["acme", "acme", "_ledger"], "agent": ["bot"], "size": ["8", "1"]}
"""Path values the ledger holds (acme has 8 entries and a checkpoint at 8)."""
EXTREME_INTS = [-1, 0, 1, 2**31, 2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]
EXTREME_TIMES = [
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "8999-12-31T23:59:59.999999Z",
    "2025-01-01T00:00:00",
    "2025-01-01T00:00:00+14:00",
    "2025-02-30T00:00:00Z",
    "not a time",
    "",
]


@dataclass(frozen=True, slots=True)
class Served:
    base_url: str
    key: str
    document: dict[str, Any]


@pytest.fixture
async def served(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, tmp_path: Path
) -> AsyncIterator[Served]:
    """Traffic in the ledger, a checkpoint, and the API behind uvicorn without rate limits."""
    pub = await publisher(await org_key("acme"))
    # Recent, so that the posture and timeline as of now have evidence.
    start = datetime.now(UTC) - timedelta(hours=1)
    events: list[Event] = [
        registered("acme", "bot"),
        declared("acme", "bot", "kept", ["x.*"], ["r/*"]),
        *(
            performed("acme", "bot", "x.read" if n % 2 else "y.write", f"r/{n}", n)
            for n in range(5)
        ),
    ]
    for n, event in enumerate(events):
        await pub.publish(msgspec.structs.replace(event, occurred_at=start + timedelta(seconds=n)))
    await pub.publish_raw(f"{service.settings.subject_prefix}.ev.acme._", b"junk", {})
    await wait_for_chain(service.store, "acme", 8)
    assert (await service.http.post("/v1/chains/acme/checkpoints")).status_code == 201

    store = service.store
    signer = await load_ledger_signer(store, service.settings)
    access = AccessControl(
        Authenticator(AccessStore.of(store)),
        RateLimiter(UNLIMITED),
        RateLimiter(UNLIMITED),
        RateLimiter(UNLIMITED),
    )
    nats_users = NatsUsers(tmp_path / "nats-users")
    nats_users.ensure_service_user()
    nats_users.issue("acme", service.settings.subject_prefix, "fuzz", datetime.now(UTC))
    app = create_app(
        store,
        {"postgres": store.ping},
        signer=signer,
        access=access,
        nats_credentials=NatsCredentialsSetup(nats_users, service.settings.subject_prefix),
    )
    port = free_tcp_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, **server_options())  # type: ignore[arg-type]
    http_server = uvicorn.Server(config)
    task = asyncio.create_task(http_server.serve())
    await wait_until(lambda: http_server.started, 10, "uvicorn to listen")
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, headers=bearer(service.operator_key)) as http:
        document = (await http.get("/schema/openapi.json")).json()
    yield Served(base_url, service.operator_key, document)
    http_server.should_exit = True
    await asyncio.wait_for(task, 10)


# ---- parameters from their schemas -----------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)


def _variants(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a (possibly `oneOf`) schema, with shared keywords."""
    shared = {k: v for k, v in schema.items() if k not in ("oneOf", "anyOf")}
    found = [
        {**shared, **s}
        for s in schema.get("oneOf", schema.get("anyOf", [schema]))
        if s.get("type") != "null"
    ]
    return found or [shared]


def _values(schema: dict[str, Any], wild: bool) -> st.SearchStrategy[str]:
    """Values a parameter's schema allows (plus known names); `wild`: anything at all too."""
    valid: list[st.SearchStrategy[str]] = []
    odd: list[st.SearchStrategy[str]] = [_TEXT, st.sampled_from(KNOWN)]
    for variant in _variants(schema):
        kind = variant.get("type")
        if "enum" in variant:
            valid.append(st.sampled_from([str(e) for e in variant["enum"] if e is not None]))
        if kind == "integer":
            low, high = variant.get("minimum"), variant.get("maximum")
            low_i = int(low) if low is not None else -(2**63)
            high_i = int(high) if high is not None else 2**63
            valid.append(st.sampled_from(["0", "1", "8"]))  # sizes with checkpoints
            valid.append(st.integers(low_i, high_i).map(str))
            odd.append(st.sampled_from(EXTREME_INTS).map(str))
        elif variant.get("format") == "date-time":
            recent = st.datetimes(
                datetime(2024, 12, 1), datetime(2025, 2, 1), timezones=st.just(UTC)
            )
            valid.append(recent.map(lambda d: d.isoformat()))
            odd += [
                st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
                st.sampled_from(EXTREME_TIMES),
            ]
        elif kind == "string" and "pattern" in variant:
            pattern = variant["pattern"].replace("(?!\n)", "")
            valid.append(st.sampled_from([k for k in KNOWN if re.fullmatch(pattern, k)]))
            valid.append(st.from_regex(pattern, fullmatch=True))
        elif kind == "string":
            valid.append(st.sampled_from(KNOWN))
    return st.one_of(*valid, *odd) if wild or not valid else st.one_of(valid)


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, item["get"])
        for path, item in sorted(document["paths"].items())
        if "get" in item and not path.startswith("/schema")
    ]


# ---- conformance of answers ------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def conformance_errors(
    value: Any, schema: dict[str, Any], document: dict[str, Any], at: str = "$"
) -> list[str]:
    """Where `value` breaks `schema` (the subset of JSON Schema Litestar emits)."""
    schema = _resolve(schema, document)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            alternatives = [conformance_errors(value, s, document, at) for s in schema[key]]
            if all(alternatives):
                return [f"{at}: matches no alternative: {alternatives}"]
            return []
    errors: list[str] = []
    for part in schema.get("allOf", []):
        errors += conformance_errors(value, part, document, at)
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        is_bool = isinstance(value, bool)
        ok = any(isinstance(value, _TYPES[n]) and (n == "boolean" or not is_bool) for n in names)
        if not ok:
            return [*errors, f"{at}: {type(value).__name__} is not {names}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{at}: missing {k}" for k in schema.get("required", []) if k not in value]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += conformance_errors(value[name], sub, document, f"{at}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in schema.get("properties", {}):
                    errors += conformance_errors(item, extra, document, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            errors += conformance_errors(item, schema["items"], document, f"{at}[{n}]")
    return errors


def _check_answer(
    response: httpx.Response, operation: dict[str, Any], document: dict[str, Any]
) -> None:
    where = f"GET {response.request.url} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    content_type = response.headers.get("content-type", "")
    if response.status_code >= 400:
        assert content_type == PROBLEM_JSON, where
        body = response.json()
        assert body["status"] == response.status_code, where
        assert body["type"].startswith("https://trustledger.dev/problems/"), where
        assert body["title"], where
        return
    declared_types = operation["responses"][str(response.status_code)]["content"]
    media = next((m for m in declared_types if content_type.startswith(m)), None)
    assert media is not None, f"{where}: {content_type} is not one of {list(declared_types)}"
    if media == "application/json":
        errors = conformance_errors(response.json(), declared_types[media]["schema"], document)
        assert errors == [], where


def _walk(served: Served, examples: int) -> None:
    operations = _operations(served.document)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def one_request(data: st.DataObject) -> None:
        path, operation = data.draw(st.sampled_from(operations), label="operation")
        wild = data.draw(st.booleans(), label="wild")
        url, query = path, {}
        for parameter in operation.get("parameters", []):
            values = _values(parameter.get("schema", {}), wild)
            if parameter["in"] == "path":
                if not wild:  # mostly what exists, so the walk gets past the lookups
                    values = st.sampled_from(EXISTING[parameter["name"]]) | values
                value = data.draw(values, label=parameter["name"])
                url = url.replace("{" + parameter["name"] + "}", quote(value, safe="") or "_")
            elif parameter["in"] == "query" and data.draw(st.booleans()):
                query[parameter["name"]] = data.draw(values, label=parameter["name"])
        response = client.get(url, params=query)
        _check_answer(response, operation, served.document)
        answered[path].add(response.status_code)

    answered: dict[str, set[int]] = {path: set() for path, _ in operations}
    with httpx.Client(base_url=served.base_url, headers=bearer(served.key), timeout=30) as client:
        # First every route once with values the ledger holds, so that reaching past
        # validation does not hang on which routes the random walk happens to draw.
        for path, operation in operations:
            url = path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    name = parameter["name"]
                    url = url.replace("{" + name + "}", quote(EXISTING[name][0], safe=""))
            response = client.get(url)
            _check_answer(response, operation, served.document)
            answered[path].add(response.status_code)
        one_request()
    # The walk reached past validation: every route answered 200 at least once.
    assert [path for path, statuses in answered.items() if 200 not in statuses] == []


def test_conformance_errors_are_found_when_a_body_breaks_its_schema() -> None:
    """The checker itself: wrong types, missing members, bad enums and items are caught."""
    document = {
        "components": {
            "schemas": {
                "Page": {
                    "type": "object",
                    "required": ["items", "next"],
                    "properties": {
                        "items": {"type": "array", "items": {"type": "integer"}},
                        "next": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                        "band": {"type": "string", "enum": ["a", "b"]},
                    },
                }
            }
        }
    }
    page = {"$ref": "#/components/schemas/Page"}
    assert conformance_errors({"items": [1, 2], "next": None, "band": "a"}, page, document) == []
    for broken in (
        {"items": [1, "2"], "next": None},
        {"items": [1], "next": 3},
        {"items": [True], "next": None},
        {"items": []},
        {"items": [], "next": None, "band": "c"},
        [],
    ):
        assert conformance_errors(broken, page, document), broken


async def test_every_get_route_answers_within_its_contract_when_fuzzed(served: Served) -> None:
    """No 5xx; 4xx are problems; 2xx match the declared media type and JSON schema."""
    assert len(_operations(served.document)) >= 16
    await asyncio.to_thread(_walk, served, 600)
