"""What every `onceflow` command shares: the consoles, errors that say what to fix,
settings read once (with logging configured once), the broker check, and the choices
taken from the schema types.

`app`, `ledger` and `workers` import from here and never from each other, so the CLI
has no import cycle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC
from typing import Any, Literal, get_args

import typer
from rich.console import Console

from onceflow.schemas import Priority, WorkKind
from onceflow.settings import OnceflowSettings, load_settings

__all__ = [
    "KINDS",
    "PRIORITIES",
    "OutputFormat",
    "cli_settings",
    "console",
    "err_console",
    "fail",
    "logged_time",
    "read_model",
    "reading",
    "ready_settings",
    "require_broker",
]

console = Console()
#: errors stay on one line however narrow the terminal (scripts grep them)
err_console = Console(stderr=True, soft_wrap=True)

OutputFormat = Literal["table", "json"]

#: the work kinds and priorities a unit may have, as its schema says
KINDS: tuple[str, ...] = get_args(WorkKind)
PRIORITIES: tuple[str, ...] = get_args(Priority)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as an error and return the exit to raise (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def cli_settings(*, role: bool = False, **overrides: Any) -> OnceflowSettings:
    """Settings from the environment, or an error that names each bad variable.

    Logging is configured here, once: a role (`onceflow worker ...`) logs at its
    configured level; any other command only warnings unless a level is asked for.
    """
    from pydantic import ValidationError

    from onceflow.streams.log import configure_logging

    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"ONCEFLOW_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise fail(f"invalid settings: {problems}") from None
    level = settings.log_level
    if not role and level == "INFO":
        level = "WARNING"
    configure_logging(settings.log_format, level)
    return settings


def require_broker(settings: OnceflowSettings) -> None:
    """Fail with what to do when no broker answers at the configured address."""
    from confluent_kafka.admin import AdminClient

    from onceflow.infra.broker import wait_for_port

    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    if (settings.broker_profile == "embedded"
            and not wait_for_port(host or "127.0.0.1", int(port), 2.0)):
        raise fail(
            f"no broker at {settings.bootstrap_servers}: run `onceflow up` first, or set "
            "ONCEFLOW_BOOTSTRAP_SERVERS to your Kafka cluster"
        )
    AdminClient(settings.admin_config())


def ready_settings() -> OnceflowSettings:
    """The local stack's settings (its state and content directories), broker checked."""
    from onceflow.infra.stack import local_settings

    settings = local_settings(cli_settings())
    require_broker(settings)
    return settings


def read_model(settings: OnceflowSettings, path: str, params: dict[str, Any] | None = None,
               *, missing_ok: bool = False) -> Any:
    """A read of the read model (`/v1` of the views service), or an error that says why it
    could not answer and what to do (exit 1)."""
    from onceflow.infra.readmodel import ReadApi, ReadApiError, ReadModelLagging

    try:
        api = ReadApi(settings)
    except ReadApiError as exc:
        raise fail(str(exc), 1) from None
    try:
        return api.get(path, params, missing_ok=missing_ok)
    except (ReadApiError, ReadModelLagging) as exc:
        raise fail(str(exc), 1) from None
    finally:
        api.close()


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """Whatever is read of the read model inside says why it could not be (exit 1)."""
    from onceflow.infra.readmodel import ReadApiError, ReadModelLagging

    try:
        yield
    except (ReadApiError, ReadModelLagging) as exc:
        raise fail(str(exc), 1) from None


def logged_time(value: str | None) -> int | None:
    """A `--at` time: milliseconds since the epoch, or an ISO 8601 time (UTC unless it
    says), e.g. 2026-12-07T18:00:00Z."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    from datetime import datetime

    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"--at {value!r} is not a time: give milliseconds since the epoch "
                   "(1796670000000) or an ISO 8601 time (2026-12-07T18:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)
