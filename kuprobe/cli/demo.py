"""``kuprobe demo``: the bundled workload, probed live, in the dashboard.

Builds the bundled demo (kuprobe/targets/demo.c, a "service") for x86_64 and, where
``gcc -m32`` works, i386, starts one process of each and probes them: a function entry with
its arguments, a return with its latency, an instruction in the middle of a function, and the
same in the 32-bit process. Each probe is limited to its own process.
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuprobe.cli._common import positive
from kuprobe.cli.session import Session, Watch
from kuprobe.cli.spec import ProbeSpec, parse_spec
from kuprobe.cli.top import add_display_options, show
from kuprobe.targets import TargetError, bundled

_PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h

EXAMPLES = """\
examples:
  sudo kuprobe demo                     until q (or Ctrl-C)
  sudo kuprobe demo --duration 10       ten seconds, then a summary
  sudo kuprobe demo -d 10 > demo.log    no terminal: a summary every --interval seconds

what it probes (see `kuprobe top --help` for the spec syntax):
  u:x86_64/demo:demo_handle arg0        entry, with the first argument
  u:x86_64/demo:demo_handle+OFF         the first call instruction inside it
  ur:x86_64/demo:demo_hash retval       return, with the entry->return latency
  u:i386/demo:demo_handle arg0 arg1:x   a 32-bit process (cdecl: arguments on the stack)
  ur:i386/demo:rec                      return of a recursive function, 32-bit
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="probe the bundled demo workload in the live dashboard",
        description="Build and start the bundled demo workload, probe it live and show the "
        "dashboard. Needs root (BPF and uprobes).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", "-d", type=positive, metavar="S", help="stop after S seconds")
    add_display_options(parser)
    parser.set_defaults(func=run)
    return parser


@dataclass(frozen=True)
class DemoProbe:
    arch: str
    text: str  # a spec with "{path}" for the binary and "{mid}" for a mid-function offset

    def spec(self, path: Path, mid: int) -> ProbeSpec:
        return parse_spec(self.text.format(path=path, mid=f"{mid:#x}"))

    def name(self, mid: int) -> str:
        head, *_rest = self.text.split()
        return head.replace("{path}", f"{self.arch}/demo").format(mid=f"{mid:#x}")


PROBES = (
    DemoProbe("x86_64", "u:{path}:demo_handle arg0"),
    DemoProbe("x86_64", "u:{path}:demo_handle+{mid}"),
    DemoProbe("x86_64", "ur:{path}:demo_hash retval"),
    DemoProbe("i386", "u:{path}:demo_handle arg0 arg1:x"),
    DemoProbe("i386", "ur:{path}:rec"),
)


def build(arches: tuple[str, ...] = ("x86_64", "i386")) -> dict[str, Path]:
    """Build the demo for ``arches`` (kuprobe/targets, make-like); the ones that built."""
    built: dict[str, Path] = {}
    for arch in arches:
        try:
            built[arch] = bundled(arch, "demo")
        except TargetError as e:
            print(f"kuprobe demo: {e}", file=sys.stderr)
    return built


def first_call_offset(path: Path, function: str) -> int:
    """Offset of the first call instruction in ``function``: a mid-function probe site."""
    from kuprobe.elf import ElfImage
    from kuprobe.insn import disassembler

    with ElfImage(str(path)) as image:
        sym = image.symbol(function)
        code = image.read_vaddr(sym.value, sym.size)
        for addr, _size, mnemonic, _ops in disassembler(image.arch).disasm_lite(code, 0):
            if mnemonic == "call":
                return int(addr)
    raise SystemExit(f"kuprobe demo: no call instruction in {function} of {path}")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def workload(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One demo process for the life of the block (and no longer than kuprobe's)."""
    proc = subprocess.Popen([str(path)], stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    binaries = build()
    if "x86_64" not in binaries:
        raise SystemExit("kuprobe demo: the x86_64 demo did not build")
    if "i386" not in binaries:
        print(
            "kuprobe demo: no 32-bit demo (gcc -m32 missing?): skipping its probes", file=sys.stderr
        )
    mid = first_call_offset(binaries["x86_64"], "demo_handle")
    with ExitStack() as stack:
        procs = {arch: stack.enter_context(workload(p)) for arch, p in binaries.items()}
        watches = [
            Watch(p.spec(binaries[p.arch], mid), pid=procs[p.arch].pid, name=p.name(mid))
            for p in PROBES
            if p.arch in binaries
        ]
        return show(Session(watches), args, title="kuprobe demo")
