"""The HTTP API, shaped like ksqlDB's: /ksql, /query-stream, /close-query, /info, /healthcheck.

Every statement runs for one tenant, the request's: the `X-Onceflow-Tenant`
header, or the `onceflow.tenant` property where a ksqlDB client cannot set a
header. A request naming no tenant, or a property naming another tenant than
the header, is refused (403) before anything runs; a tenant's queries see its
rows only, and only the platform's operator (`PLATFORM_TENANT`) reads across
tenants and defines or drops views. With `ONCEFLOW_API_TOKEN` set these routes
ask for the bearer token like /v1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from onceflow.billing.views._impl.service import Row, ViewService
from onceflow.billing.views._impl.statements import StatementError
from onceflow.schemas import PLATFORM_TENANT
from onceflow.streams.auth import require_token

__all__ = ["DELIMITED", "create_app", "encode_row"]

DELIMITED = "application/vnd.ksqlapi.delimited.v1"
VERSION = "onceflow-views-0.1 (ksqlDB API shape)"


def _value(v: Any) -> str:
    if isinstance(v, Decimal):
        return format(v, "f")  # an exact JSON number, as ksqlDB writes DECIMAL
    if isinstance(v, bool | int | float | str) or v is None:
        return json.dumps(v)
    return json.dumps(str(v))


def encode_row(row: Row) -> str:
    return "[" + ",".join(_value(v) for v in row) + "]"


def _error(status: int, code: int, message: str, statement: str = "") -> JSONResponse:
    return JSONResponse(status_code=status, content={
        "@type": "statement_error" if code == 40001 else "generic_error",
        "error_code": code, "message": message, "statementText": statement, "entities": []})


class TenantRefused(Exception):
    """A request whose tenant is missing or contradicts itself: nothing of it runs."""


#: the property a ksqlDB client names its tenant with (`streamsProperties` / `properties`)
TENANT_PROPERTY = "onceflow.tenant"


def request_scope(header: str | None, properties: object) -> str | None:
    """The tenant a request's statements run for: its rows only; None for the platform's
    operator, whose statements see every tenant's (and may define views)."""
    named = properties.get(TENANT_PROPERTY) if isinstance(properties, dict) else None
    if named is not None and not isinstance(named, str):
        raise TenantRefused(f"{TENANT_PROPERTY} must be a tenant id (a string), not "
                            f"{named!r}")
    if header and named and named != header:
        raise TenantRefused(f"the request is tenant {header!r}'s (X-Onceflow-Tenant) and its "
                            f"properties name tenant {named!r}: a query reads its own "
                            "tenant's rows only; drop the property or send it as that tenant")
    tenant = header or named
    if not tenant:
        raise TenantRefused("name the tenant this request is for: the X-Onceflow-Tenant "
                            f"header (or the {TENANT_PROPERTY} property); the platform's "
                            f"operator names {PLATFORM_TENANT!r} to read across tenants")
    return None if tenant == PLATFORM_TENANT else tenant


def create_app(service: ViewService, token: str | None = None) -> FastAPI:
    """The views service's app; with `token`, every statement route asks for it."""
    app = FastAPI(title="onceflow views", version="0.1")
    statements = APIRouter(dependencies=[require_token(token)])

    @app.exception_handler(TenantRefused)
    async def refused(_: Request, exc: TenantRefused) -> JSONResponse:
        return _error(403, 40301, str(exc))

    @app.exception_handler(StatementError)
    async def bad_statement(_: Request, exc: StatementError) -> JSONResponse:
        return _error(400, exc.error_code, str(exc), exc.statement)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client: the type and message, logged in full server-side.
        return _error(500, 50000, f"{type(exc).__name__}: {exc}")

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise StatementError("the request body must be JSON, e.g. {\"ksql\": \"SHOW "
                                 "TABLES;\"}") from None
        if not isinstance(body, dict):
            raise StatementError("the request body must be a JSON object")
        return body

    @statements.post("/ksql", response_model=None)
    async def ksql(request: Request,
                   x_onceflow_tenant: str | None = Header(default=None)) -> Response:
        body = await body_of(request)
        tenant = request_scope(x_onceflow_tenant, body.get("streamsProperties"))
        text = body.get("ksql")
        if not isinstance(text, str):
            raise StatementError("missing \"ksql\": send {\"ksql\": \"SHOW TABLES;\"}")
        entries = service.execute(text, tenant=tenant)
        # Amounts as exact decimal strings: JSON numbers would pass through floats here.
        return Response(json.dumps(entries, default=str), media_type="application/json")

    @statements.post("/query-stream", response_model=None)
    async def query_stream(request: Request,
                           accept: str | None = Header(default=None),
                           x_onceflow_tenant: str | None = Header(default=None)
                           ) -> Response:
        body = await body_of(request)
        properties = body.get("properties") or {}
        tenant = request_scope(x_onceflow_tenant, properties)
        sql = body.get("sql")
        if not isinstance(sql, str):
            raise StatementError("missing \"sql\": send {\"sql\": \"SELECT * FROM ledger;\"}")
        header, rows, push = service.open_query(sql, tenant=tenant, properties=properties)
        as_json = accept is not None and "application/json" in accept
        if push is None and as_json:
            payload = "[" + ",".join([json.dumps(header.as_json()),
                                      *(encode_row(r) for r in rows if r is not None)]) + "]"
            return Response(payload, media_type="application/json")

        def chunks() -> Iterator[str]:
            try:
                if as_json:
                    yield "[" + json.dumps(header.as_json())
                    for r in rows:
                        yield "" if r is None else "," + encode_row(r)
                    yield "]"
                else:
                    yield json.dumps(header.as_json()) + "\n"
                    for r in rows:
                        yield "" if r is None else encode_row(r) + "\n"
            finally:
                if push is not None:
                    service.close_query(push.query_id)

        return StreamingResponse(chunks(), media_type="application/json" if as_json
                                 else DELIMITED)

    @statements.post("/close-query", response_model=None)
    async def close_query(request: Request,
                          x_onceflow_tenant: str | None = Header(default=None)) -> Response:
        body = await body_of(request)
        tenant = request_scope(x_onceflow_tenant, body.get("properties"))
        query_id = body.get("queryId")
        # another tenant's push query is answered as one that does not run
        if not isinstance(query_id, str) or not service.close_query(query_id, tenant=tenant):
            return _error(400, 40001, f"no running push query {query_id!r}: SHOW QUERIES lists "
                                      "them")
        return JSONResponse({})

    app.include_router(statements)

    @app.get("/info")
    async def info() -> JSONResponse:
        return JSONResponse({"KsqlServerInfo": {
            "version": VERSION, "kafkaClusterId": "onceflow", "ksqlServiceId": "onceflow_views",
            "serverStatus": "RUNNING"}})

    @app.get("/healthcheck")
    async def healthcheck() -> JSONResponse:
        return JSONResponse({"isHealthy": True, "details": {
            "metastore": {"isHealthy": True}, "kafka": {"isHealthy": True}}})

    return app
