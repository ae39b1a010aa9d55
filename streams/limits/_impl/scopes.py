"""Which scopes a unit counts against, and each scope's limit: one rule for both sides.

The scheduler asks for the unit's limited scopes (a unit with none never waits
for the limiter); the limiter counts them. A scope is a name: `global`,
`tenant:<tenant>`, `session:<tenant>/<session>`, `provider:<provider>`,
`model:<model>`, `tool:<tool>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from onceflow.streams.limits.settings import LimitsSettings

__all__ = ["ConcurrencyLimits", "LimitsFileError"]


class LimitsFileError(ValueError):
    """A limits file that cannot be used; the message names the file and the entry."""


def _from_file(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LimitsFileError(f"limits file {path} does not exist "
                              "(ONCEFLOW_LIMITS__LIMITS_FILE)") from None
    except ValueError as exc:
        raise LimitsFileError(f"limits file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LimitsFileError(f"limits file {path}: expected an object of scope -> limit, "
                              'e.g. {"provider:openai": 3}')
    out = {}
    for scope, limit in sorted(data.items()):
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise LimitsFileError(f"limits file {path}: {scope!r} must be a whole number >= 1, "
                                  f"not {limit!r}")
        out[scope] = limit
    return out


@dataclass(frozen=True)
class ConcurrencyLimits:
    per_kind: dict[str, int] = field(default_factory=dict)
    per_scope: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, cfg: LimitsSettings) -> ConcurrencyLimits:
        kinds = {"global": cfg.global_concurrency, "tenant": cfg.tenant_concurrency,
                 "session": cfg.session_concurrency, "provider": cfg.provider_concurrency,
                 "model": cfg.model_concurrency, "tool": cfg.tool_concurrency}
        scopes = dict(cfg.scopes)
        if cfg.limits_file is not None:
            scopes.update(_from_file(cfg.limits_file))
        return cls({k: v for k, v in kinds.items() if v is not None}, scopes,
                   dict(cfg.tenant_weights))

    def weight_of(self, tenant: str) -> float:
        """A tenant's share in weighted fair queuing (1.0 unless configured)."""
        return self.weights.get(tenant, 1.0) or 1.0

    @property
    def any(self) -> bool:
        return bool(self.per_kind or self.per_scope)

    def limit_of(self, scope: str) -> int | None:
        if scope in self.per_scope:
            return self.per_scope[scope]
        return self.per_kind.get(scope.split(":", 1)[0])

    def scopes_for(self, *, tenant: str, session: str, kind: str, provider: str,
                   model: str | None, tool: str | None) -> list[str]:
        """The unit's scopes that have a limit, in a fixed order."""
        if not self.any:
            return []
        candidates = ["global", f"tenant:{tenant}", f"session:{tenant}/{session}"]
        if kind == "llm_pod":
            candidates += [f"provider:{provider}", f"model:{model or ''}"]
        if kind == "tool":
            candidates.append(f"tool:{tool or 'effects.append'}")
        return [s for s in candidates if self.limit_of(s) is not None]
