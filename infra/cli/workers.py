"""`onceflow worker ...`: run one role in the foreground (what `up` starts in the background)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import typer

from onceflow.infra.cli.common import KINDS, cli_settings, fail
from onceflow.settings import OnceflowSettings

__all__ = ["worker_app"]

worker_app = typer.Typer(help="Run one role in the foreground.", no_args_is_help=True)

#: what a member's name may be made of: it names a transactional id and a directory
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@worker_app.callback()
def members(
    member: Annotated[str | None, typer.Option(
        help="this process's name among its role's members (its transactional ids and "
             "state directory; a restart under the same name fences the last one); "
             "default: ONCEFLOW_MEMBER, else host and process id")] = None,
) -> None:
    """Run one role in the foreground, as a member of the role's consumer group: run it
    anywhere that reaches the brokers and it shares the role's partitions with the
    others."""
    import faulthandler
    import signal

    # `kill -USR1 <pid>` writes every thread's stack to the role's log: what a member
    # that stopped moving is waiting for.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if member is not None:
        if not _MEMBER_NAME.match(member):
            raise fail(f"--member {member!r}: use letters, digits, '.', '_' or '-' "
                       "(at most 64, starting with a letter or digit)")
        os.environ["ONCEFLOW_MEMBER"] = member


def _serve_metrics(settings: OnceflowSettings, ready_file: Path | None) -> None:
    """Serve the role's /metrics when asked (ONCEFLOW_METRICS_PORT), and say where beside
    its ready file (`onceflow up` prints it)."""
    if settings.metrics_port is None:
        return
    from onceflow.streams.metrics import serve_metrics

    port = serve_metrics(settings.metrics_port)
    if ready_file is not None:
        ready_file.with_name(f"{ready_file.name}.metrics").write_text(
            f"http://127.0.0.1:{port}/metrics\n")



@worker_app.command("scheduler")
def scheduler(
    ready_file: Annotated[Path | None, typer.Option(help="touched once the scheduler is ready")]
    = None,
    clock: Annotated[bool, typer.Option(help="also produce clock ticks")] = True,
) -> None:
    """The scheduler: admission, placement, claims, settlement, leases, retries."""
    from onceflow.billing import PriceBookError, cost_estimator
    from onceflow.streams.limits import LimitsFileError, ScopeLimits
    from onceflow.streams.runtime.process import tune_for_streaming
    from onceflow.streams.scheduler.worker import run_scheduler

    settings = cli_settings(role=True)
    try:
        estimator = cost_estimator(settings.billing)
        ScopeLimits.from_settings(settings.limits)
    except (PriceBookError, LimitsFileError) as exc:
        raise fail(str(exc)) from None
    tune_for_streaming()
    _serve_metrics(settings, ready_file)
    run_scheduler(settings, estimator=estimator, ready_file=ready_file, with_clock=clock)


@worker_app.command("limiter")
def limiter(
    ready_file: Annotated[Path | None, typer.Option(help="touched once it runs")]
    = None,
) -> None:
    """A limiter member on its own (one also runs beside every scheduler): the group keeps
    one active member for the one `limits` partition and the rest stand by, fenced by
    transactions when they take over."""
    import signal
    import threading

    from onceflow.streams.limits import LimitsFileError, ScopeLimits
    from onceflow.streams.limits.worker import build_limiter
    from onceflow.streams.runtime.process import tune_for_streaming

    settings = cli_settings(role=True)
    try:
        ScopeLimits.from_settings(settings.limits)
    except LimitsFileError as exc:
        raise fail(str(exc)) from None
    tune_for_streaming()
    _serve_metrics(settings, ready_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    processor = build_limiter(settings)
    if ready_file is not None:
        # A standby has no partition to be ready with: it is ready once it runs.
        ready_file.touch()
    processor.run(stop)


@worker_app.command("billing")
def billing(
    ready_file: Annotated[Path | None, typer.Option(help="touched once billing is ready")]
    = None,
) -> None:
    """Billing: the ledger, the wallets and the anomaly checker."""
    from onceflow.billing import PriceBookError, load_price_book
    from onceflow.billing.worker import run_billing
    from onceflow.streams.runtime.process import tune_for_streaming

    settings = cli_settings(role=True)
    try:
        load_price_book(settings.billing)
    except PriceBookError as exc:
        raise fail(str(exc)) from None
    tune_for_streaming()
    _serve_metrics(settings, ready_file)
    run_billing(settings, ready_file=ready_file)


@worker_app.command("trust")
def trust(
    ready_file: Annotated[Path | None, typer.Option(help="touched once trust is ready")] = None,
) -> None:
    """Trust scoring: reliability, timeouts, health and decay per node; each node's breaker."""
    from onceflow.streams.runtime.process import tune_for_streaming
    from onceflow.streams.trust.worker import run_trust

    settings = cli_settings(role=True)
    tune_for_streaming()
    _serve_metrics(settings, ready_file)
    run_trust(settings, ready_file=ready_file)


@worker_app.command("autoscaler")
def autoscaler(
    ready_file: Annotated[Path | None, typer.Option(help="touched once it runs")] = None,
) -> None:
    """The capacity controller: scale requests and admission modes."""
    from onceflow.autoscaler.worker import run_autoscaler
    from onceflow.streams.runtime.process import tune_for_streaming

    settings = cli_settings(role=True)
    tune_for_streaming()
    _serve_metrics(settings, ready_file)
    run_autoscaler(settings, ready_file=ready_file)


@worker_app.command("fleet")
def fleet(
    concurrency: Annotated[int, typer.Option(help="units each new agent runs at once", min=1)]
    = 4,
    kinds: Annotated[str, typer.Option(help="kinds new agents run")] = "cpu,llm_pod,tool",
    region: Annotated[str | None, typer.Option(help="region of new agents")] = None,
    llm_provider: Annotated[str | None, typer.Option("--llm-provider")] = None,
    ready_file: Annotated[Path | None, typer.Option(help="touched once it follows")] = None,
) -> None:
    """The local fleet manager: starts and drains node agents to follow scale requests."""
    import signal
    import threading

    from onceflow.infra.fleet import FleetManager
    from onceflow.infra.stack import local_settings

    settings = local_settings(cli_settings(role=True))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    manager = FleetManager(settings, concurrency=concurrency,
                           kinds=tuple(k for k in kinds.split(",") if k), region=region,
                           llm_provider=llm_provider)
    if ready_file is not None:
        ready_file.touch()
    manager.run(stop)


@worker_app.command("views")
def views(
    port: Annotated[int, typer.Option(help="HTTP port of the ksql-style API", min=1,
                                      max=65535)] = 8088,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    ready_file: Annotated[Path | None, typer.Option(help="touched once serving, caught up")]
    = None,
) -> None:
    """The ledger views (DuckDB sink, view definitions, the ksqlDB-shaped HTTP API), the
    onceflow HTTP API (/v1, its spec at /openapi.json) and the dashboard (/dashboard/) in
    one service."""
    from fastapi import FastAPI

    from onceflow.billing.views.worker import run_views
    from onceflow.infra.api import add_api_routes
    from onceflow.infra.dashboard import Dashboard, add_dashboard_routes
    from onceflow.infra.readmodel import ReadModelFeed

    settings = cli_settings(role=True)
    _serve_metrics(settings, ready_file)
    feed = ReadModelFeed(settings).start()
    dashboard = Dashboard(settings, feed)

    def extend(app: FastAPI) -> None:
        add_api_routes(app, settings, settings.api_token, feed)
        add_dashboard_routes(app, dashboard.start(), settings.api_token)

    try:
        run_views(settings, host=host, port=port, ready_file=ready_file, extend=extend,
                  caught_up=feed.caught_up.is_set)
    finally:
        dashboard.close()
        feed.close()


@worker_app.command("agent")
def agent(
    node_id: Annotated[str, typer.Option("--node-id", help="this node's id, e.g. n1")],
    region: Annotated[str | None, typer.Option(help="region, e.g. eu-west")] = None,
    kinds: Annotated[str, typer.Option(help="comma-separated: cpu,llm_pod,tool")] = "cpu",
    concurrency: Annotated[int, typer.Option(help="units run at once", min=1)] = 4,
    llm_provider: Annotated[str | None, typer.Option("--llm-provider",
                                                     help="stub or openai")] = None,
    ready_file: Annotated[Path | None, typer.Option(help="touched once the agent is ready")]
    = None,
) -> None:
    """A node agent: claims what is scheduled on it, executes what it is granted."""
    import signal

    from onceflow.agents import NodeAgent, provider_from_settings

    settings = cli_settings(role=True)
    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in KINDS]
    if not wanted or unknown:
        raise fail(f"--kinds {kinds!r}: unknown kind(s) {unknown or '(none given)'}; "
                    f"use a comma-separated list of {', '.join(KINDS)}")
    provider = None
    if "llm_pod" in wanted:
        try:
            provider = provider_from_settings(settings.agent, llm_provider)
        except ValueError as exc:
            raise fail(str(exc)) from None
    _serve_metrics(settings, ready_file)
    node = NodeAgent(settings, node_id=node_id, region=region, kinds=wanted,
                     concurrency=concurrency, provider=provider,
                     on_ready=ready_file.touch if ready_file else None)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    signal.signal(signal.SIGUSR1, node.request_drain)  # the fleet's scale-down
    from onceflow.streams.runtime.process import tune_for_streaming

    tune_for_streaming()
    node.run()
