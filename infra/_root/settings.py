"""Every onceflow setting, composed above the roles (pydantic-settings, prefix `ONCEFLOW_`).

Each part lives with what it configures: the Kafka client settings with the
Kafka layer (`streams/kafka/settings.py`), what every process shares in
`streams/settings.py` with the groups of the roles in `streams/` (scheduler,
limits, trust), and each role above with its role (`billing/settings.py`,
`agents/settings.py`, `autoscaler/settings.py`, each a class adding its group
to the shared ones). `OnceflowSettings` is all of them at once: what the CLI,
the local stack and the tests configure a deployment with. It is assembled
here, where nothing below imports it, and this module generates the reference
(`docs/configuration.md`) from the field docs: `python -m onceflow.settings`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from onceflow.agents.settings import AgentRoleSettings, AgentSettings
from onceflow.autoscaler.settings import AutoscalerRoleSettings, AutoscalerSettings
from onceflow.billing.settings import BillingRoleSettings, BillingSettings, ModelPrice
from onceflow.streams.kafka.settings import BrokerProfile, KafkaSettings, SecurityProtocol
from onceflow.streams.settings import (
    STACK_FILE,
    LimitsSettings,
    LogFormat,
    SchedulerSettings,
    StreamsSettings,
    TrustSettings,
)
from onceflow.streams.settings import load_settings as _load

__all__ = [
    "STACK_FILE",
    "AgentSettings",
    "AutoscalerSettings",
    "BillingSettings",
    "BrokerProfile",
    "KafkaSettings",
    "LimitsSettings",
    "LogFormat",
    "ModelPrice",
    "OnceflowSettings",
    "SchedulerSettings",
    "SecurityProtocol",
    "StreamsSettings",
    "TrustSettings",
    "configuration_reference",
    "load_settings",
]


class OnceflowSettings(BillingRoleSettings, AgentRoleSettings, AutoscalerRoleSettings):
    """Everything a onceflow process is configured with: Kafka, topics, payloads, the
    processes' shell, and one group per role."""


def load_settings(**overrides: Any) -> OnceflowSettings:
    """Every setting from the environment (`streams.settings.load_settings`)."""
    return _load(OnceflowSettings, **overrides)


_GROUP_ORDER = ("scheduler", "agent", "billing", "trust", "autoscaler", "limits")
def _shown_default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "(unset)"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, default=str) + "`"
    return f"`{value}`"


def _defined_in(model: type[BaseModel]) -> str:
    """The repository path of the module that defines a settings class."""
    module = __spec__.name if model.__module__ == "__main__" and __spec__ else model.__module__
    parts = module.split(".")[1:]  # without the `onceflow.` import name
    if len(parts) == 1 and parts[0] not in _GROUP_ORDER:
        parts = ["infra", "_root", *parts]  # the package root's own modules
    return "/".join(parts) + ".py"


def configuration_reference() -> str:
    """Every `ONCEFLOW_*` variable with its default and meaning, as Markdown: what
    `docs/configuration.md` holds (a test keeps the two equal)."""
    kafka_fields = set(KafkaSettings.model_fields)
    sections: list[tuple[str, str, str, type[BaseModel], list[str]]] = [
        ("Kafka", "", (KafkaSettings.__doc__ or "").split("\n")[0], KafkaSettings,
         [n for n in OnceflowSettings.model_fields if n in kafka_fields]),
        ("General", "", "", StreamsSettings,
         [n for n, f in OnceflowSettings.model_fields.items() if n not in kafka_fields
          and not _is_group(f.annotation)]),
    ]
    groups = sorted(((n, f) for n, f in OnceflowSettings.model_fields.items()
                     if _is_group(f.annotation)),
                    key=lambda nf: _GROUP_ORDER.index(nf[0]) if nf[0] in _GROUP_ORDER else 99)
    for name, field in groups:
        ann = field.annotation
        if _is_group(ann):
            assert isinstance(ann, type)
            sections.append((f"ONCEFLOW_{name.upper()}__*", f"{name.upper()}__",
                             (ann.__doc__ or "").split("\n")[0], ann, list(ann.model_fields)))
    out = [
        "# Configuration",
        "",
        "Every setting is an environment variable with the prefix `ONCEFLOW_`; a group's",
        "settings take the group's name and a double underscore (`ONCEFLOW_SCHEDULER__...`).",
        "Lists and maps are JSON. Each group is defined beside what it configures (the module",
        "named under its heading); this page is generated from them by",
        "`python -m onceflow.settings > docs/configuration.md`; do not edit by hand.",
    ]
    for title, prefix, doc, model, names in sections:
        out += ["", f"## {title}", "", f"Defined in `{_defined_in(model)}`.", ""]
        if doc:
            out += [doc, ""]
        out += ["| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            field = model.model_fields[name]
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            out.append(f"| `ONCEFLOW_{prefix}{name.upper()}` | {_shown_default(field)} | "
                       f"{meaning} |")
    return "\n".join(out) + "\n"


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


if __name__ == "__main__":
    print(configuration_reference(), end="")
