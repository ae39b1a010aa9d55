"""The `onceflow` command line tool."""

from onceflow.infra.cli.app import app, main

__all__ = ["app", "main"]
