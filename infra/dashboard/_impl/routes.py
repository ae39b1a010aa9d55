"""The dashboard's routes: the page and its files (outside the OpenAPI spec: they are for a
browser), the snapshot as JSON, and a server-sent stream of snapshots.

The page is plain HTML, CSS and JavaScript shipped in the package: nothing is built at
install time, and no npm is involved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from onceflow.infra.api import require_token
from onceflow.infra.dashboard._impl.model import Dashboard

__all__ = ["add_dashboard_routes"]

STATIC = Path(__file__).resolve().parent.parent / "static"


def add_dashboard_routes(app: FastAPI, dashboard: Dashboard, token: str | None = None) -> None:
    """`/dashboard/` (the page), `/v1/dashboard` (a snapshot) and `/v1/dashboard/stream`."""
    page = APIRouter(include_in_schema=False)

    @page.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @page.get("/dashboard/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    reads = APIRouter(prefix="/v1/dashboard", tags=["dashboard"],
                      dependencies=[require_token(token)])

    @reads.get("")
    def snapshot() -> dict[str, Any]:
        """Everything the dashboard shows, across tenants: units by state (now and over
        time), nodes, capacity, limits, sessions with their DAGs, wallets, spend per tenant
        and model, and the inbox. Units, nodes, capacity and limits are what `onceflow
        status --format json` reports. A 503 says the log could not be read yet."""
        try:
            return dashboard.snapshot()
        except TimeoutError as exc:
            raise HTTPException(503, str(exc)) from None

    @reads.get("/stream", include_in_schema=False)
    def stream(max_events: Annotated[int, Query(ge=1)] = 1_000_000) -> StreamingResponse:
        return StreamingResponse(_snapshots(dashboard, max_events),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    app.include_router(page)
    app.include_router(reads)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")


def _snapshots(dashboard: Dashboard, max_events: int) -> Iterator[str]:
    version = -1
    for _ in range(max_events):
        try:
            snap = dashboard.snapshot(newer_than=version, timeout=5.0)
        except TimeoutError:
            yield ": waiting for the log\n\n"  # also finds a client that went away
            continue
        if snap["version"] == version:
            yield ": no change\n\n"
            continue
        version = snap["version"]
        yield f"id: {version}\nevent: snapshot\ndata: {json.dumps(snap, default=str)}\n\n"
