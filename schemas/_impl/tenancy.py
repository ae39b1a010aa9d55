"""Who may act on whose work: one rule for the scheduler, the API and the views.

A control, a resolution, an approval or an answer carries the tenant that acts
(`tenant_id` of its envelope). It reaches only that tenant's units, sessions
and rows; to any other tenant's it answers as if they did not exist. The one
exception is the platform's operator, `SYSTEM_TENANT`: the local CLI and
whoever holds the stack's API token and names that tenant, who acts across
tenants (the tenants issue binds it to an admin key).
"""

from __future__ import annotations

from onceflow.schemas._impl.events import SYSTEM_TENANT

__all__ = ["PLATFORM_TENANT", "acts_for"]

#: the acting tenant of the platform's operator (every tenant's work, the whole queue)
PLATFORM_TENANT = SYSTEM_TENANT


def acts_for(acting_tenant: str, owner_tenant: str) -> bool:
    """Whether `acting_tenant` may see or steer work owned by `owner_tenant`."""
    return acting_tenant in (owner_tenant, PLATFORM_TENANT)
