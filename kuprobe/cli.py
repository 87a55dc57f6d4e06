"""The ``kuprobe`` command: one subcommand per module, each adding its own parser.

A subcommand's parser sets ``func(args) -> int``. Errors the user can fix end here: a bad
probe spec exits with status 2 (as a usage error does), a probe the kernel refuses with 1,
each with the message and its hint.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from kuprobe import trace
from kuprobe.commands import demo, model, top
from kuprobe.errors import ProbeError
from kuprobe.spec import SpecError

# Subcommands other sessions write: listed when their module exists (a module that exists
# but fails to import still fails loudly).
_OPTIONAL = ("kuprobe.doctor", "kuprobe.crosscheck.cli", "kuprobe.vm.cli")


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            return None
        raise


def _commands() -> tuple[ModuleType, ...]:
    found = [m for m in map(_optional, _OPTIONAL) if m is not None and hasattr(m, "add_parser")]
    return (demo, top, trace, model, *found)


# The kernel's names where the C library has two for one number.
_ERRNO_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EAGAIN: "EAGAIN"}

EPILOG = """\
start here:
  sudo kuprobe demo                       probes on a bundled workload, in a live dashboard
  sudo kuprobe doctor                     what this machine can probe, and what to fix

see `kuprobe COMMAND --help` for each command's examples."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kuprobe",
        description="Write Linux kprobes and uprobes from Python: live through BCC, "
        "and in a reference model of the kernel's trap semantics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _commands():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"kuprobe {args.command}"
    try:
        return int(args.func(args))
    except SpecError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except ProbeError as e:
        code = _ERRNO_NAMES.get(e.errno or 0) or errno.errorcode.get(e.errno or 0, str(e.errno))
        print(f"{prog}: error: {e.strerror} [{code}]", file=sys.stderr)
        if e.hint:
            print(f"{prog}: hint: {e.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
