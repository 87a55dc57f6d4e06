"""Stacks at the hit (kuprobe/stacks.py): recorded by the BPF program for probes that ask,
symbolized with the ELF symbols of the process's mappings; `kuprobe trace --stack`."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest

from kuprobe import Uprobe, UprobeConsumer, current, register_uprobe, unregister_uprobe
from kuprobe.elf import ElfImage
from kuprobe.errors import ProbeError
from kuprobe.insn import boundaries
from kuprobe.regs import PtRegs
from kuprobe.stacks import stack_trace_save_user, symbolize_user

from .helpers import trace_until, wait_until

pytestmark = pytest.mark.live


def after_prologue(exe: Path, func: str) -> int:
    """The offset of the third instruction (push %rbp; mov %rsp,%rbp; here)."""
    with ElfImage(str(exe)) as elf:
        sym = elf.symbols[func]
        return [off for off, _ in boundaries(elf.arch, elf.read_vaddr(sym.value, sym.size))][2]


def frames_of(exe: Path, func: str, offset: int, *, stack: bool) -> tuple[Uprobe, list[object]]:
    demo = subprocess.Popen([str(exe), "60"])
    seen: list[object] = []

    def handler(_uc: UprobeConsumer, regs: PtRegs) -> int:
        try:
            addrs = stack_trace_save_user()
            seen.append([(f.symbol, f.offset) for f in symbolize_user(addrs, current().tgid)])
        except ProbeError as e:
            seen.append(e.errno)
        return 0

    up = Uprobe(
        str(exe),
        symbol_name=func,
        offset=offset,
        consumer=UprobeConsumer(handler=handler),
        pid=demo.pid,
        stack=stack,
    )
    try:
        register_uprobe(up)
        wait_until(lambda: len(seen) > 10, "over 10 hits handled")  # what the tests need
    finally:
        unregister_uprobe(up)  # handlers run while the process still lives
        demo.kill()
        demo.wait()
    return up, seen


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_user_stack_symbolized(live: Path, arch: str) -> None:
    exe = live / arch / "demo"
    off = after_prologue(exe, "demo_handle")  # its frame is linked: main shows as its caller
    up, seen = frames_of(exe, "demo_handle", off, stack=True)
    assert up.hits > 10 and up.handler_errors == 0 and len(seen) == up.hits
    for frames in seen:
        assert isinstance(frames, list)
        assert frames[0] == ("demo_handle", off)
        assert frames[1][0] == "main"


def test_no_stack_unless_asked(live: Path) -> None:
    up, seen = frames_of(live / "x86_64" / "demo", "demo_hash", 0, stack=False)
    assert up.hits > 10 and set(seen) == {errno.ENOENT}


def test_trace_stack(live: Path) -> None:
    exe = (live / "x86_64" / "demo").resolve()
    demo = subprocess.Popen([str(exe), "60"])

    def stacked(lines: list[str]) -> bool:  # an event, and the two frames after it
        return any("u:demo:demo_hash" in ln for ln in lines[:-2])

    try:
        out = trace_until("--stack", "--json", f"u:{exe}:demo_hash", "--pid", str(demo.pid),
                          probes=1, enough=lambda lines: len(lines) > 11,
                          what="over 10 events")  # fmt: skip
        text = trace_until("--stack", f"u:{exe}:demo_hash", "-p", str(demo.pid), probes=1,
                           enough=stacked, what="an event with its stack")  # fmt: skip
    finally:
        demo.kill()
        demo.wait()
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()[:-1]]
    assert len(events) > 10
    for e in events:
        assert e["stack"][0] == "demo_hash+0x0 (demo)"
        assert any(f.startswith("main+") for f in e["stack"])
    lines = text.stdout.splitlines()
    i = next(k for k, line in enumerate(lines) if "u:demo:demo_hash" in line)
    assert lines[i + 1].strip() == "demo_hash+0x0 (demo)"
    assert lines[i + 2].strip().startswith("main+")
