"""The `onceflow` command line tool."""

from infra.cli.app import app, main

__all__ = ["app", "main"]
