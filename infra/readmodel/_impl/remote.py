"""The read model over HTTP: how the CLI and the Python client read (the views service keeps
the model; `/v1` serves it).

A person's command or a program asks the running service rather than folding
topics itself, so a read costs the same on a log of a day as of a minute.
"""

from __future__ import annotations

from typing import Any

import httpx

from onceflow.infra.readmodel._impl.feed import ReadModelLagging
from onceflow.schemas import PLATFORM_TENANT
from onceflow.settings import OnceflowSettings

__all__ = ["ReadApi", "ReadApiError", "ReadApiUnavailable", "resolve_views_url"]


class ReadApiError(RuntimeError):
    """The service refused a read, saying why (its `detail`)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class ReadApiUnavailable(ReadApiError):
    """No read model answers: none is known, or the one known does not answer."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, detail)


def resolve_views_url(settings: OnceflowSettings, given: str | None = None) -> str:
    """Where the views service is: as given, ONCEFLOW_VIEWS_URL (`views_url`), else what
    `onceflow up` recorded for the local stack."""
    from onceflow.infra.stack import read_stack

    url = given or settings.views_url
    if not url:
        stack = read_stack(settings)
        url = stack.views_url if stack is not None else None
    if not url:
        raise ReadApiUnavailable(
            "no views service known (it keeps the read model every read asks): run "
            "`onceflow up` (it starts one), or set ONCEFLOW_VIEWS_URL to a running "
            "`onceflow worker views`")
    return url.rstrip("/")


class ReadApi:
    """GETs of `/v1` for one caller (`tenant`: the platform operator's by default)."""

    def __init__(self, settings: OnceflowSettings, url: str | None = None,
                 tenant: str = PLATFORM_TENANT) -> None:
        from onceflow.streams.auth import bearer_headers

        self.url = resolve_views_url(settings, url)
        self.headers = {"X-Onceflow-Tenant": tenant, **bearer_headers(settings.api_token)}
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=120)

    def get(self, path: str, params: dict[str, Any] | None = None, *,
            missing_ok: bool = False) -> Any:
        """The JSON a read answers (None for a 404 when `missing_ok`)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.get(f"/v1{path}", params=query)
        except httpx.TransportError as exc:
            raise ReadApiUnavailable(
                f"the views service at {self.url} does not answer ({exc}): is it running? "
                "(`onceflow up` starts one; `onceflow status` says what runs)") from None
        if resp.status_code == 200:
            return resp.json()
        detail = _detail(resp)
        if resp.status_code == 404 and missing_ok:
            return None
        if resp.status_code == 504:
            raise ReadModelLagging(detail)
        raise ReadApiError(resp.status_code, detail)

    def close(self) -> None:
        self._http.close()


def _detail(resp: httpx.Response) -> str:
    try:
        found = resp.json().get("detail", resp.text)
    except ValueError:
        found = resp.text
    return found if isinstance(found, str) else str(found)
