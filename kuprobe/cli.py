"""The ``kuprobe`` command: one subcommand per module, each adding its own parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kuprobe import doctor

# Each entry: a module with `add_parser(subparsers)`; its parser sets `func(args) -> int`.
_COMMANDS = (doctor,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kuprobe",
        description="Write Linux kprobes and uprobes from Python: live through BCC, "
        "and in a reference model of the kernel's trap semantics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
