"""`python -m onceflow`: the `onceflow` command."""

from onceflow.infra.cli import main

main()
