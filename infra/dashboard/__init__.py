"""The live web dashboard: one page, served by the views service beside the API, fed by a
server-sent stream of snapshots of the running system.

Import from here; `infra.dashboard._impl` is private.
"""

from onceflow.infra.dashboard._impl.model import Dashboard
from onceflow.infra.dashboard._impl.routes import add_dashboard_routes

__all__ = ["Dashboard", "add_dashboard_routes"]
