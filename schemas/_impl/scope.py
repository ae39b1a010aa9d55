"""A scope: what a limit, a budget, a wallet, a pause or a provider's "later" applies to.

One value with one spelling, printed and parsed here only. On the wire (event
fields, topic keys, the CLI and the API) a scope is its text: `global`,
`tenant:<tenant>`, `session:<tenant>/<session>`, `provider:<provider>`,
`model:<model>`, `tool:<tool>`. A tenant id never holds `/` (the API refuses
one), so a session's text splits at its first `/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["Scope", "ScopeError", "ScopeKind"]

ScopeKind = Literal["global", "tenant", "session", "provider", "model", "tool"]
_KINDS: tuple[str, ...] = get_args(ScopeKind)


class ScopeError(ValueError):
    """Text that is not a scope; the message shows the spellings there are."""


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """A scope by kind: `tenant` for tenant and session scopes, `name` for the rest (the
    session id, provider, model or tool)."""

    kind: ScopeKind
    tenant: str = ""
    name: str = ""

    # -- building ----------------------------------------------------------------------

    @classmethod
    def everything(cls) -> Scope:
        return cls("global")

    @classmethod
    def of_tenant(cls, tenant: str) -> Scope:
        return cls("tenant", tenant)

    @classmethod
    def of_session(cls, tenant: str, session: str) -> Scope:
        return cls("session", tenant, session)

    @classmethod
    def of_provider(cls, provider: str) -> Scope:
        return cls("provider", name=provider)

    @classmethod
    def of_model(cls, model: str | None) -> Scope:
        return cls("model", name=model or "")

    @classmethod
    def of_tool(cls, tool: str | None) -> Scope:
        return cls("tool", name=tool or "effects.append")

    # -- text --------------------------------------------------------------------------

    def __str__(self) -> str:
        if self.kind == "global":
            return "global"
        if self.kind == "tenant":
            return f"tenant:{self.tenant}"
        if self.kind == "session":
            return f"session:{self.tenant}/{self.name}"
        return f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """The scope a text names; `ScopeError` saying how to spell one otherwise.

        Also reads `session:<tenant>:<session>`, how wallet ids of releases before 6
        spelt a session (a tenant id holds no `:` there).
        """
        if text == "global":
            return cls.everything()
        kind, sep, rest = text.partition(":")
        if not sep or kind not in _KINDS or kind == "global" or (
                not rest and kind not in ("tenant", "session")):
            raise ScopeError(
                f"{text!r} is not a scope: use global, tenant:<tenant>, "
                "session:<tenant>/<session>, provider:<provider>, model:<model> or tool:<tool>")
        if kind == "tenant":
            return cls.of_tenant(rest)
        if kind == "session":
            # every session scope this module prints parses back, a unit without a
            # session (`session:<tenant>/`) included
            tenant, slash, session = rest.partition("/")
            if not slash:
                tenant, colon, session = rest.partition(":")
                if not colon:
                    raise ScopeError(f"{text!r} is not a session scope: use "
                                     "session:<tenant>/<session>")
            return cls.of_session(tenant, session)
        return cls(kind, name=rest)  # type: ignore[arg-type]

    @property
    def session_key(self) -> str:
        """A session scope's `<tenant>/<session>`: how a session is named in messages."""
        return f"{self.tenant}/{self.name}"
