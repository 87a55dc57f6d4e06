"""``python -m kuprobe.vm SUBCOMMAND``: the same as ``kuprobe vm SUBCOMMAND``."""

from __future__ import annotations

import argparse
import sys

from kuprobe.vm import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuprobe")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["vm", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
