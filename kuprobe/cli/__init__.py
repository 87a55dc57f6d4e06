"""The ``kuprobe`` command: the parser, its subcommands, specs, dashboard and terminal helpers.

The command imports the library (live, model, crosscheck, vm); the library never imports the
command."""

from kuprobe.cli.main import main

__all__ = ["main"]
