"""Bad input: each refused with the kernel's errno, nothing half-registered, nothing left."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kuprobe import (
    Kprobe,
    Kretprobe,
    ProbeError,
    Uprobe,
    UprobeConsumer,
    register_kprobe,
    register_kprobes,
    register_kretprobe,
    register_uprobe,
    unregister_uprobe,
)
from kuprobe.insn import boundaries
from kuprobe.live.tracefs import TRACEFS_CANDIDATES

from .helpers import Target, run, without_kprobes

pytestmark = pytest.mark.live


def _refused(probe: object, code: int, register: object = register_uprobe) -> ProbeError:
    with pytest.raises(ProbeError) as e:
        register(probe)  # type: ignore[operator]
    assert e.value.errno == code, str(e.value)
    assert not getattr(probe, "registered", False)
    assert str(e.value)  # a message a person can act on
    return e.value


def test_missing_file(live: Path) -> None:
    err = _refused(Uprobe("/nonexistent/prog", symbol_name="main"), errno.ENOENT)
    assert "/nonexistent/prog" in str(err)


def test_missing_symbol(live: Path) -> None:
    err = _refused(Uprobe(str(live / "x86_64/target"), symbol_name="no_such_fn"), errno.ENOENT)
    assert "no_such_fn" in str(err)


def test_offset_inside_an_instruction(live: Path) -> None:
    exe = live / "x86_64" / "target"
    from kuprobe.elf import ElfImage

    with ElfImage(str(exe)) as elf:
        sym = elf.symbols["loop_sum"]
        code = elf.read_vaddr(sym.value, sym.size)
    off = next(o for o, s in boundaries("x86_64", code) if s > 1)
    _refused(Uprobe(str(exe), symbol_name="loop_sum", offset=off + 1), errno.EILSEQ)
    # a file offset inside the same instruction is refused the same way
    from .helpers import file_offset_of

    base = file_offset_of(exe, "loop_sum")
    _refused(Uprobe(str(exe), offset=base + off + 1), errno.EILSEQ)


def test_offset_past_the_symbol(live: Path) -> None:
    exe = live / "x86_64" / "target"
    from kuprobe.elf import ElfImage

    with ElfImage(str(exe)) as elf:
        size = elf.symbols["add"].size
    _refused(Uprobe(str(exe), symbol_name="add", offset=size), errno.EINVAL)


def test_not_an_elf(live: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    _refused(Uprobe(str(script), offset=0), errno.ENOEXEC)


def test_offset_outside_code(live: Path) -> None:
    _refused(Uprobe(str(live / "x86_64/target"), offset=0), errno.EINVAL)  # the ELF header


def test_no_symbol_and_no_offset(live: Path) -> None:
    _refused(Uprobe(str(live / "x86_64/target")), errno.EINVAL)


def test_no_such_pid(live: Path) -> None:
    _refused(Uprobe(str(live / "x86_64/target"), symbol_name="add", pid=2**22 + 7), errno.ESRCH)


def test_registered_twice(live: Path) -> None:
    up = Uprobe(str(live / "x86_64/target"), symbol_name="add")
    register_uprobe(up)
    try:
        with pytest.raises(ProbeError) as e:
            register_uprobe(up)
        assert e.value.errno == errno.EINVAL
        assert up.registered  # the first registration stands
    finally:
        unregister_uprobe(up)
    assert not up.registered
    with pytest.raises(ProbeError) as e:
        unregister_uprobe(up)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "kp",
    [Kprobe(), Kprobe(symbol_name="do_sys_openat2", addr=0xFFFFFFFF81000000)],
    ids=["neither", "both"],
)
def test_kprobe_symbol_xor_addr(kp: Kprobe) -> None:
    _refused(kp, errno.EINVAL, register_kprobe)


def test_kretprobe_data_size_too_big() -> None:
    rp = Kretprobe(symbol_name="do_sys_openat2", data_size=4097)
    _refused(rp, errno.E2BIG, register_kretprobe)


def test_kretprobe_off_the_function_entry() -> None:
    """kernel/kprobes.c: register_kretprobe() wants the function's entry (the model agrees)."""
    _refused(Kretprobe(symbol_name="do_sys_openat2", offset=4), errno.EINVAL, register_kretprobe)


def test_kprobe_symbol_injection() -> None:
    _refused(Kprobe(symbol_name="f(){}; evil"), errno.EINVAL, register_kprobe)


def test_batch_is_all_or_nothing_on_validation() -> None:
    good, bad = Kprobe(symbol_name="do_sys_openat2"), Kprobe()
    with pytest.raises(ProbeError) as e:
        register_kprobes([good, bad])
    assert e.value.errno == errno.EINVAL
    assert not good.registered and not bad.registered


WITHOUT_KPROBES = """
import errno
from kuprobe import Kprobe, Kretprobe, ProbeError, register_kprobe, register_kretprobe
for probe, register in ((Kprobe(symbol_name="do_sys_openat2"), register_kprobe),
                        (Kretprobe(symbol_name="do_sys_openat2"), register_kretprobe)):
    try:
        register(probe)
    except ProbeError as e:
        print(e.errno == errno.EOPNOTSUPP, probe.registered, e, sep=" | ")
    else:
        print("registered")
"""


def test_kernel_without_kprobes_says_so(live: Path) -> None:
    """On a kernel without kprobes (no kprobe PMU) register_k*probe() refuses with EOPNOTSUPP
    and points to the VM; where this kernel has them, their PMU is hidden (without_kprobes)."""
    out = without_kprobes([sys.executable, "-c", WITHOUT_KPROBES])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" | ")[:2] for line in lines] == [["True", "False"]] * 2
    assert all("has no kprobes" in line and "kuprobe vm" in line for line in lines), lines


def test_not_root(live: Path) -> None:
    """A real unprivileged process (uid nobody) is refused with EPERM."""
    code = textwrap.dedent(f"""
        import errno, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from kuprobe import ProbeError, Uprobe, register_uprobe
        try:
            register_uprobe(Uprobe({str(live / "x86_64/target")!r}, symbol_name="add"))
        except ProbeError as e:
            print(errno.errorcode[e.errno], e)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        user=65534,
        group=65534,
    )
    assert out.stdout.startswith("EPERM"), out.stdout + out.stderr
    assert "root" in out.stdout


ARMED_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from kuprobe import Uprobe, UprobeConsumer, register_uprobe
register_uprobe(Uprobe({exe!r}, symbol_name="add", consumer=UprobeConsumer(
    handler=lambda uc, regs: 0, ret_handler=lambda uc, f, regs: 0)))
print("armed", flush=True)
{tail}
"""


def _armed_child(exe: Path, tail: str) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-c", ARMED_SCRIPT.format(root=root, exe=str(exe), tail=tail)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "armed"
    return proc


def _int3_at_add(t: Target) -> bool:
    return t.read_mem(t.runtime_address("add"), 1) == b"\xcc"


@pytest.mark.parametrize("how", ["unregister", "exit", "SIGTERM", "SIGINT", "SIGKILL"])
def test_nothing_left_behind(live: Path, how: str) -> None:
    """After unregister, exit, a signal, or SIGKILL of the probing process, the probed
    process's code is its own again (an armed uprobe shows as int3 in its memory)."""
    exe = live / "x86_64" / "target"
    t = Target(exe, "add", 3)
    try:
        tail = {
            "unregister": "",
            "exit": "",
            "SIGTERM": "time.sleep(60)",
            "SIGINT": "time.sleep(60)",
            "SIGKILL": "time.sleep(60)",
        }[how]
        if how == "unregister":
            # Unregister only once the test has seen the breakpoint (no race with the check).
            tail = (
                "from kuprobe.live.api import backend\n"
                "input()\nbackend().shutdown()\nprint('done', flush=True)\ntime.sleep(60)"
            )
        proc = _armed_child(exe, tail if how != "exit" else "input()")
        assert _int3_at_add(t)
        if how == "unregister":
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "done"
            assert not _int3_at_add(t)
            proc.kill()
        elif how == "exit":
            proc.communicate("\n", timeout=30)
        else:
            proc.send_signal({"SIGTERM": 15, "SIGINT": 2, "SIGKILL": 9}[how])
        proc.wait(timeout=30)
        assert not _int3_at_add(t)
        assert t.go() == run(exe, "add", 3)
    finally:
        t.kill()
    for events in ("uprobe_events", "kprobe_events"):
        p = TRACEFS_CANDIDATES[0] / events
        if p.exists():
            assert "kuprobe" not in p.read_text()


def test_failed_register_leaves_no_slot_or_probe(live: Path) -> None:
    from kuprobe.live.api import backend

    before = backend().registered()
    up = Uprobe(
        str(live / "x86_64/target"),
        symbol_name="add",
        pid=os.getpid(),
        consumer=UprobeConsumer(handler=lambda uc, regs: 0),
    )
    register_uprobe(up)
    unregister_uprobe(up)
    _refused(Uprobe(str(live / "x86_64/target"), symbol_name="nope"), errno.ENOENT)
    assert backend().registered() == before
