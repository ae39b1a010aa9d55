"""The HTTP API, served by the views service (`onceflow worker views`) beside /ksql and
/query-stream; the OpenAPI spec is at /openapi.json."""

from onceflow.infra.api._impl.app import add_api_routes, create_api, require_token

__all__ = ["add_api_routes", "create_api", "require_token"]
