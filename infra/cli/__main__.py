from onceflow.infra.cli.app import main

main()
