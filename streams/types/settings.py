"""The base of every role's settings group, kept apart from the roles that define them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["SettingsGroup"]


class SettingsGroup(BaseModel):
    """A group of settings (one role's), nested under `StreamsSettings` by name.

    Each field is documented by the string below it (pydantic's attribute
    docstrings), which is what `docs/configuration.md` is generated from.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)
