"""Which scopes a unit counts against, and each scope's limits: one rule for both sides.

The scheduler asks for the unit's limited scopes (a unit with none never waits
for the limiter); the limiter counts them. A scope is a name: `global`,
`tenant:<tenant>`, `session:<tenant>/<session>`, `provider:<provider>`,
`model:<model>`, `tool:<tool>`. A scope may limit units at once (concurrency),
requests per minute and tokens per minute, each set for the scope itself or
for its kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from onceflow.schemas import Scope, ScopeError, ScopeKind
from onceflow.streams.limits.settings import LimitsSettings

if TYPE_CHECKING:
    from onceflow.streams.settings import StreamsSettings

__all__ = ["LimitsFileError", "ScopeLimits", "budgets_held", "limiter_needed"]


class LimitsFileError(ValueError):
    """A limits file that cannot be used; the message names the file and the entry."""


_RATE_KEYS = ("concurrency", "requests_per_minute", "tokens_per_minute")


def _whole(path: Path, scope: str, limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise LimitsFileError(f"limits file {path}: {scope!r} must be a whole number >= 1, "
                              f"not {limit!r}")
    return limit


def _from_file(path: Path) -> dict[str, dict[str, int]]:
    """The file's limits by kind: concurrency, requests_per_minute, tokens_per_minute."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LimitsFileError(f"limits file {path} does not exist "
                              "(ONCEFLOW_LIMITS__LIMITS_FILE)") from None
    except ValueError as exc:
        raise LimitsFileError(f"limits file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LimitsFileError(f"limits file {path}: expected an object of scope -> limit, "
                              'e.g. {"provider:openai": 3} or {"provider:openai": '
                              '{"concurrency": 3, "tokens_per_minute": 90000}}')
    out: dict[str, dict[str, int]] = {k: {} for k in _RATE_KEYS}
    for scope, entry in sorted(data.items()):
        if scope not in get_args(ScopeKind):
            try:
                Scope.parse(scope)
            except ScopeError as exc:
                raise LimitsFileError(f"limits file {path}: {exc}, or a kind of scope "
                                      f"({', '.join(get_args(ScopeKind))})") from None
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - set(_RATE_KEYS))
            if unknown:
                raise LimitsFileError(f"limits file {path}: {scope!r} has unknown keys "
                                      f"{unknown}; use {', '.join(_RATE_KEYS)}")
            for key, limit in sorted(entry.items()):
                out[key][scope] = _whole(path, f"{scope}.{key}", limit)
        else:
            out["concurrency"][scope] = _whole(path, scope, entry)
    return out


def _of(table: dict[str, int], scope: str) -> int | None:
    """A scope's own limit, or its kind's (`provider` for `provider:openai`)."""
    limit = table.get(scope)
    return limit if limit is not None else table.get(Scope.parse(scope).kind)


@dataclass(frozen=True)
class ScopeLimits:
    """Every scope's limits: units at once, and requests and tokens per minute."""

    per_kind: dict[str, int] = field(default_factory=dict)
    per_scope: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    #: requests and tokens per minute, keyed by scope or by scope kind
    requests_per_minute: dict[str, int] = field(default_factory=dict)
    tokens_per_minute: dict[str, int] = field(default_factory=dict)
    #: the limited scopes of each unit shape asked about (a cache: they follow from the above)
    _scopes: dict[tuple[str, ...], list[str]] = field(default_factory=dict, compare=False,
                                                       repr=False)

    @classmethod
    def from_settings(cls, cfg: LimitsSettings) -> ScopeLimits:
        kinds = {"global": cfg.global_concurrency, "tenant": cfg.tenant_concurrency,
                 "session": cfg.session_concurrency, "provider": cfg.provider_concurrency,
                 "model": cfg.model_concurrency, "tool": cfg.tool_concurrency}
        scopes = dict(cfg.scopes)
        rpm = dict(cfg.requests_per_minute)
        tpm = dict(cfg.tokens_per_minute)
        if cfg.limits_file is not None:
            from_file = _from_file(cfg.limits_file)
            scopes.update(from_file["concurrency"])
            rpm.update(from_file["requests_per_minute"])
            tpm.update(from_file["tokens_per_minute"])
        return cls({k: v for k, v in kinds.items() if v is not None}, scopes,
                   dict(cfg.tenant_weights), rpm, tpm)

    def weight_of(self, tenant: str) -> float:
        """A tenant's share in weighted fair queuing (1.0 unless configured)."""
        return self.weights.get(tenant, 1.0) or 1.0

    @property
    def any(self) -> bool:
        return bool(self.per_kind or self.per_scope or self.requests_per_minute
                    or self.tokens_per_minute)

    def limit_of(self, scope: str) -> int | None:
        """A scope's concurrency limit (None: unlimited)."""
        limit = self.per_scope.get(scope)
        return limit if limit is not None else self.per_kind.get(Scope.parse(scope).kind)

    def rpm_of(self, scope: str) -> int | None:
        """A scope's requests per minute (None: unlimited)."""
        return _of(self.requests_per_minute, scope)

    def tpm_of(self, scope: str) -> int | None:
        """A scope's tokens per minute (None: unlimited)."""
        return _of(self.tokens_per_minute, scope)

    def limited(self, scope: str) -> bool:
        return (self.limit_of(scope) is not None or self.rpm_of(scope) is not None
                or self.tpm_of(scope) is not None)

    def scopes_for(self, *, tenant: str, session: str, kind: str, provider: str,
                   model: str | None, tool: str | None) -> list[str]:
        """The unit's scopes that have a limit, in a fixed order."""
        if not self.any:
            return []
        key = (tenant, session, kind, provider, model or "", tool or "")
        cached = self._scopes.get(key)
        if cached is not None:
            return list(cached)
        if len(self._scopes) > 4096:
            self._scopes.clear()
        candidates = [Scope.everything(), Scope.of_tenant(tenant),
                      Scope.of_session(tenant, session)]
        if kind == "llm_pod":
            candidates += [Scope.of_provider(provider), Scope.of_model(model)]
        if kind == "tool":
            candidates.append(Scope.of_tool(tool))
        scopes = self._scopes[key] = [str(s) for s in candidates if self.limited(str(s))]
        return list(scopes)


def budgets_held(settings: StreamsSettings) -> bool:
    """Whether units are held against budgets: some tenant has prepaid credit, or session
    budgets are on. The scheduler, the ledger and the limiter all ask this one rule."""
    return bool(settings.prepaid_credits) or settings.limits.session_budgets


def limiter_needed(settings: StreamsSettings) -> bool:
    """Whether units ask the limiter for slots and holds: a scope has a limit or a budget is
    held. (The limiter runs either way: it keeps every tenant's retry budget.)"""
    return ScopeLimits.from_settings(settings.limits).any or budgets_held(settings)
