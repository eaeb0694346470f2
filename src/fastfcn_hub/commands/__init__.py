"""Implementations of the `fastfcn-hub` subcommands (see `fastfcn_hub.cli.COMMANDS`)."""
