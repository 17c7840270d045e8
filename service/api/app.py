"""The Litestar application: routes, health, metrics, OpenAPI, error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute

from service import metrics
from service.adapters.access_store import AccessStore
from service.adapters.postgres import LedgerStore
from service.api.access import AccessControl, caller, enforce_access
from service.api.bodies import Readiness
from service.api.controllers import (
    AgentController,
    ChainController,
    LedgerController,
    PostureListController,
    QuarantineController,
)
from service.api.nats_credentials import NatsCredentialsController, NatsCredentialsSetup
from service.api.openapi import document_problems
from service.api.problems import EXCEPTION_HANDLERS
from service.app.ledger_key import LedgerSigner
from service.domain.access import rule_for
from service.errors import ConfigError

HealthCheck = Callable[[], Awaitable[None]]
CHECK_TIMEOUT_S = 2.0


@get("/healthz", tags=["operations"], summary="Liveness: the process serves HTTP")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["operations"],
    summary="Readiness: every dependency answers",
    description="The status for anyone; each check's result for operators only.",
)
async def readyz(request: Request[object, object, State], state: State) -> Response[Readiness]:
    checks: dict[str, HealthCheck] = state["health_checks"]
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            results[name] = "ok"
        except Exception as e:
            results[name] = f"failing: {e}" if str(e) else f"failing: {type(e).__name__}"
    ok = all(v == "ok" for v in results.values())
    who = caller(request)
    # Failing checks name hosts, ports and errors: internal detail, for operators only.
    detail = results if who is not None and who.is_operator else None
    return Response(
        Readiness("ready" if ok else "not ready", detail), status_code=200 if ok else 503
    )


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type=MediaType.TEXT)
async def prometheus_metrics() -> Response[bytes]:
    # Litestar appends "; charset=utf-8" to text/* media types itself; naming it here too
    # sent the parameter twice, which strict parsers (Go's mime, Prometheus 3) refuse.
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(
    store: LedgerStore,
    health_checks: dict[str, HealthCheck],
    query_api: bool = True,
    signer: LedgerSigner | None = None,
    access: AccessControl | None = None,
    nats_credentials: NatsCredentialsSetup | None = None,
) -> Litestar:
    """The HTTP app of one process: health, readiness and metrics always; the `/v1`
    query API for the `api` role (ingest and scheduler processes serve only the
    operations endpoints, so each exposes its own metrics). Every route is behind
    the one access guard (`service.api.access`). Without `nats_credentials` the
    NATS credential routes answer 409 naming what to configure."""
    operations = [healthz, readyz, prometheus_metrics]
    queries = (
        [
            AgentController,
            PostureListController,
            ChainController,
            LedgerController,
            QuarantineController,
            NatsCredentialsController,
        ]
        if query_api
        else []
    )
    if access is None:
        access = AccessControl.over(AccessStore.of(store))
    app = Litestar(
        route_handlers=[*operations, *queries],
        state=State(
            {
                "store": store,
                "health_checks": health_checks,
                "signer": signer,
                "access": access,
                "nats_credentials": nats_credentials,
            }
        ),
        guards=[enforce_access],
        exception_handlers=EXCEPTION_HANDLERS,
        # Logging is configured once by the entry point (service.logs), not by Litestar.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="trustledger",
            version="1",
            description=(
                "Behavioral trust ledger for AI agents: posture, commitments, chains."
                " Authenticate with `Authorization: Bearer <API key>`; docs/api.md lists"
                " which role may call which route."
            ),
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="http", scheme="bearer", description="a trustledger API key"
                    )
                }
            ),
            security=[{"apiKey": []}],
        ),
    )
    _check_every_route_has_a_rule(app)
    document_problems(app)
    return app


def _check_every_route_has_a_rule(app: Litestar) -> None:
    """A route the visibility matrix does not know would be refused to everyone;
    refuse to start instead, so the gap is found by the first test, not a user."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method in route.methods - {"OPTIONS", "HEAD"}:
            if rule_for(method, route.path_format) is None:
                raise ConfigError(f"{method} {route.path_format} has no rule in the access matrix")
