"""The ``kuprobe`` command: the parser, one module per subcommand, the spec language, the
dashboard and the terminal helpers. The command imports the library (live, model, crosscheck,
vm); the library never imports the command."""

from kuprobe.cli.main import main

__all__ = ["main"]
