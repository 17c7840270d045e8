"""The served OpenAPI document tells the truth about errors and access.

Litestar documents a 400 with its own validation body; every error of this
API is a problem (`service.api.problems.Problem`, `application/problem+json`),
and which routes need a key, answer 401/403 or 429 follows from the access
matrix. This rewrites each operation's error responses once, when the app is
made, so generated clients and property-based testers see what is served.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Reference, Schema
from litestar.openapi.spec.enums import OpenAPIType

from service.api.problems import PROBLEM_JSON
from service.domain.access import rule_for

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "title", "status"],
    properties={
        "type": Schema(type=OpenAPIType.STRING),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
        "errors": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
    },
    description="An RFC 9457 problem (docs/api.md, Errors)",
)

_WHEN = {
    "400": "a parameter is invalid; `errors` names it",
    "401": "a key that is malformed, unknown, revoked or expired; no key where one is needed",
    "403": "the key's role or org may not call this route",
    "404": "no such org, agent, chain, checkpoint, NATS user or route",
    "409": "a limit is reached, or the deployment does not configure what the route needs",
    "429": "rate limit reached; see the Retry-After header",
    "500": "the ledger does not verify here (ledger-integrity), or a bug (internal)",
    "503": "the database is unavailable, or this process holds no ledger key",
}


def document_problems(app: Litestar) -> None:
    """Every operation: its error responses as problems; 401/403 where a key is needed."""
    schema = app.openapi_schema
    if schema.components.schemas is None:
        schema.components.schemas = {}
    schema.components.schemas["Problem"] = PROBLEM_SCHEMA
    problem = OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
    for path, item in (schema.paths or {}).items():
        for method in ("get", "post", "delete"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            rule = rule_for(method.upper(), path)
            # A bad key is refused on every route, public ones too.
            codes = ["400", "401", "404", "429", "500", "503"]
            if rule is None or rule.roles is not None:
                codes.append("403")
            if path.startswith("/v1/orgs/"):
                codes.append("409")
            responses = operation.responses or {}
            for code in sorted(codes):
                responses[code] = OpenAPIResponse(
                    description=_WHEN[code], content={PROBLEM_JSON: problem}
                )
            operation.responses = responses
