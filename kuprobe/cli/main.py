"""The ``kuprobe`` command's parser and its error handling.

Every subcommand is a module with ``add_parser(sub)``, whose parser sets ``func(args) -> int``;
they are listed in ``COMMANDS``, in the order ``--help`` shows them. Errors the user can fix
end here: a bad probe spec exits with status 2 (as a usage error does), a probe the kernel
refuses with 1 (the message and its hint), any other kuprobe error with 1.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from kuprobe.cli import crosscheck, demo, doctor, model, top, trace, vm
from kuprobe.cli.spec import SpecError
from kuprobe.errors import KuprobeError, ProbeError

COMMANDS = (demo, top, trace, model, doctor, crosscheck, vm)

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
    for module in COMMANDS:
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
    except KuprobeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
