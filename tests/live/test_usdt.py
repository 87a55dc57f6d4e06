"""USDT probes (kuprobe/usdt.py) on tests/targets/usdt.c, built with <sys/sdt.h>: live on
x86_64 and i386 processes, and in the model (a USDT site is a uprobe)."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest

from kuprobe import (
    Uprobe,
    UprobeConsumer,
    Usdt,
    UsdtSite,
    register_uprobe,
    register_usdt,
    unregister_uprobe,
    unregister_usdt,
)
from kuprobe.errors import ProbeError
from kuprobe.regs import PtRegs, set_stack
from kuprobe.task import current
from kuprobe.usdt import parse_arg, split_args

from .helpers import KUPROBE, Waiting, trace_while

pytestmark = pytest.mark.live
ARCHES = ["x86_64", "i386"]


def expected(i: int) -> list[int]:
    """kuprobe:round's arguments in round_of(i): i, -3i, (short)(i-5), (signed char)-i, 7i."""
    return [i, -3 * i, i - 5, (-i + 128) % 256 - 128, 7 * i]


def rounds_of(out: str) -> tuple[int, int]:
    """What a ``usdt wait N`` run printed: its rounds, and how many ran the guarded code."""
    _, n, guarded = out.split()
    return int(n), int(guarded)


@pytest.mark.parametrize("arch", ARCHES)
def test_usdt_arguments_decoded_at_every_hit(live: Path, arch: str) -> None:
    exe = live / arch / "usdt"
    t = Waiting(exe, 200)
    seen: list[list[int]] = []

    def handler(site: UsdtSite, regs: PtRegs) -> int:
        assert current().tgid == t.pid
        seen.append([site.arg(regs, n) for n in range(len(site.args))])
        return 0

    u = Usdt(str(exe), "kuprobe", "round", handler=handler, pid=t.pid)
    assert len(u.sites) >= 1 and len(u.sites[0].args) == 5
    try:
        register_usdt(u)
        assert rounds_of(t.go())[0] == 200
    finally:
        t.kill()
        unregister_usdt(u)
    assert u.hits == 200
    assert seen == [expected(i) for i in range(200)]


@pytest.mark.parametrize("arch", ARCHES)
def test_semaphore_guarded_site_fires_only_while_traced(live: Path, arch: str) -> None:
    exe = live / arch / "usdt"
    t = Waiting(exe, 50)
    try:
        # untraced: the semaphore is 0, the guarded code is skipped
        assert rounds_of(t.go()) == (50, 0)
    finally:
        t.kill()
    u = Usdt(str(exe), "kuprobe", "guarded", handler=lambda site, regs: 0)
    assert u.sites[0].ref_ctr_offset != 0
    register_usdt(u)
    t = Waiting(exe, 50)
    try:
        assert rounds_of(t.go()) == (50, 50)  # the kernel raised the semaphore: every round ran it
    finally:
        t.kill()
        unregister_usdt(u)
    assert u.hits == 50
    t = Waiting(exe, 50)
    try:
        assert rounds_of(t.go()) == (50, 0)  # and lowered it again
    finally:
        t.kill()


def test_unknown_probe_lists_what_the_file_has(live: Path) -> None:
    with pytest.raises(ProbeError) as e:
        Usdt(str(live / "x86_64" / "usdt"), "kuprobe", "nosuch")
    assert e.value.errno == errno.ENOENT
    assert "kuprobe:round" in (e.value.hint or "") and "kuprobe:guarded" in (e.value.hint or "")


def test_argument_forms_of_each_arch() -> None:
    """The operand forms of x86_64, i386 and arm64 notes (tools/lib/bpf/usdt.c's)."""
    regs = PtRegs.of("x86_64")
    regs.di, regs.ax, regs.bp, regs.sp = 0xFFFF_FFFF_FFFF_FFFE, 0x1234, 0x1000 + 24, 0x1000
    set_stack(regs, (5, 0xFFFF_FFFF_FFFF_FFF9, 0, 0))
    assert parse_arg("-4@%edi", "x86_64").value(regs) == -2
    assert parse_arg("4@%edi", "x86_64").value(regs) == 0xFFFF_FFFE
    assert parse_arg("1@%ah", "x86_64").value(regs) == 0x12
    assert parse_arg("-8@-16(%rbp)", "x86_64").value(regs) == -7
    assert parse_arg("8@(%rsp)", "x86_64").value(regs) == 5
    assert parse_arg("4@$42", "x86_64").value(regs) == 42
    with pytest.raises(ProbeError) as e:
        parse_arg("8@-800(%rbp)", "x86_64").value(regs)
    assert e.value.errno == errno.EFAULT  # not among the captured stack words
    with pytest.raises(ProbeError) as e:
        parse_arg("8@counter(%rip)", "x86_64")
    assert e.value.errno == errno.EOPNOTSUPP
    r32 = PtRegs.of("i386")
    r32.bp, r32.sp, r32.cx = 0x2000 + 28, 0x2000, 0xFFFF_0003
    set_stack(r32, (0, 0, 0, 0, 0, 0, 0xFFFF_FFF0, 0))  # bp-28 is word 0; sp+24 is word 6
    assert parse_arg("-2@%cx", "i386").value(r32) == 3
    assert parse_arg("-4@24(%esp)", "i386").value(r32) == -16
    a64 = PtRegs.of("arm64")
    a64.x1, a64.sp = 0xFFFF_FFFF, 0x3000
    set_stack(a64, (0, 0, 0, 0, 0, 99, 0))
    assert parse_arg("-4@w1", "arm64").value(a64) == -1
    assert parse_arg("8@[sp, 40]", "arm64").value(a64) == 99
    assert parse_arg("-8@-3", "arm64").value(a64) == -3
    assert split_args("-8@x0 -2@x3 -8@[sp, 40]") == ["-8@x0", "-2@x3", "-8@[sp, 40]"]


def test_usdt_in_the_model(targets: Path) -> None:
    """A USDT site is a uprobe: the model runs it, its semaphore and its arguments too."""
    from kuprobe.model import Machine

    exe = targets / "x86_64" / "usdt-static"
    m = Machine.load(str(exe))
    seen: list[list[int]] = []
    rnd = Usdt(
        str(exe),
        "kuprobe",
        "round",
        handler=lambda s, regs: seen.append([s.arg(regs, n) for n in range(5)]) or 0,
    )
    guarded = Usdt(str(exe), "kuprobe", "guarded")
    assert m.call("round_of", 4) == 0
    rnd.register(m)
    guarded.register(m)
    assert m.call("round_of", 4) == 1  # the model raised the semaphore too
    rnd.unregister(m)
    guarded.unregister(m)
    assert m.call("round_of", 4) == 0
    assert seen == [expected(4)] and guarded.hits == 1


def test_trace_usdt_spec_json(live: Path) -> None:
    exe = (live / "x86_64" / "usdt").resolve()
    t = Waiting(exe, 30)
    ran, out = trace_while(
        t,
        "--json",
        f"usdt:{exe}:kuprobe:round arg0 arg1 arg4",
        f"usdt:{exe}:kuprobe:guarded",
        probes=2,
    )
    assert rounds_of(ran) == (30, 30)
    objs = [json.loads(line) for line in out.splitlines()]
    rounds = [o["values"] for o in objs if o.get("probe") == "usdt:usdt:kuprobe:round"]
    assert rounds == [{"arg0": i, "arg1": -3 * i, "arg4": 7 * i} for i in range(30)]
    hits = {r["probe"]: r["hits"] for r in objs[-1]["summary"]}
    assert hits == {"usdt:usdt:kuprobe:round": 30, "usdt:usdt:kuprobe:guarded": 30}
    bad = subprocess.run(
        [str(KUPROBE), "trace", f"usdt:{exe}:kuprobe:round arg5"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "has 5 arguments, no arg5" in bad.stderr


def test_notes_of_each_arch_decode(targets: Path) -> None:
    """The same <sys/sdt.h> site compiled for x86_64, i386 and arm64: the notes' operands
    (registers of several widths, a frame slot) all decode."""
    from kuprobe.usdt import usdt_sites

    want = {
        "x86_64": [("di", False), ("ax", False), ("dx", False), ("cx", False), ("bp", True)],
        "i386": [("ax", False), ("di", False), ("cx", False), ("dx", False), ("bp", True)],
        "arm64": [("x0", False), ("x2", False), ("x3", False), ("x4", False), ("sp", True)],
    }
    for arch, regs in want.items():
        exe = targets / arch / ("usdt-static" if arch == "arm64" else "usdt")
        (site,) = usdt_sites(str(exe), "kuprobe", "round")
        got = [(a.reg, a.deref) for a in site.args]
        assert [a.size for a in site.args][2:4] == [2, 1], arch  # short, signed char
        assert all(a.signed for a in site.args), arch
        assert got == regs, (arch, site.note.args)  # as Debian 12's gcc 12 placed them
        assert site.ref_ctr_offset != 0


@pytest.mark.parametrize("arch", ARCHES)
def test_string_argument_read_at_the_site(live: Path, arch: str) -> None:
    """kuprobe:named's arg1 is a pointer in a register: a Capture at the note's arg1 reads
    the string there when the site fires."""
    from kuprobe import Capture, strncpy_from_user

    exe = live / arch / "usdt"
    t = Waiting(exe, 20)
    seen: list[tuple[int, bytes]] = []

    def handler(site: UsdtSite, regs: PtRegs) -> int:
        seen.append((site.arg(regs, 0), strncpy_from_user(site.arg(regs, 1), 32)))
        return 0

    u = Usdt(str(exe), "kuprobe", "named", handler=handler, pid=t.pid, capture=(Capture("arg1"),))
    try:
        register_usdt(u)
        assert rounds_of(t.go())[0] == 20
    finally:
        t.kill()
        unregister_usdt(u)
    assert seen == [(i, f"round-{i}".encode()) for i in range(20)]
    with pytest.raises(ProbeError) as e:  # a memory operand: not a pointer in a register
        Usdt(str(exe), "kuprobe", "round", capture=(Capture("arg4"),))
    assert e.value.errno == errno.EOPNOTSUPP


def test_trace_usdt_string(live: Path) -> None:
    exe = (live / "x86_64" / "usdt").resolve()
    t = Waiting(exe, 10)
    ran, out = trace_while(t, f"usdt:{exe}:kuprobe:named arg0 arg1:str", probes=1)
    assert rounds_of(ran)[0] == 10
    lines = [ln.split()[-2:] for ln in out.splitlines() if "usdt:usdt:kuprobe:named" in ln]
    assert lines == [[f"arg0={i}", f'arg1:str="round-{i}"'] for i in range(10)]


def test_python_import_probe_by_program_name(live: Path) -> None:
    """Debian's python3.11 has USDT probes: by the program's name and its pid, the sites,
    the semaphore and the module name (a string in a register) of each import."""
    from kuprobe import Capture, strncpy_from_user

    code = (
        "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
        "import json, decimal\nprint('done')"
    )
    py = subprocess.Popen(
        ["/usr/bin/python3.11", "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[bytes] = []

    def handler(site: UsdtSite, regs: PtRegs) -> int:
        seen.append(strncpy_from_user(site.arg(regs, 0), 64))
        return 0

    try:
        # once it runs its own code: before exec, /proc/PID/maps is still the forking parent's
        assert py.stdout is not None and py.stdout.readline().strip() == "ready"
        u = Usdt(
            "python3.11",
            "python",
            "import__find__load__start",
            handler=handler,
            pid=py.pid,
            capture=(Capture("arg0", size=64),),
        )
        assert u.file == f"/proc/{py.pid}/root/usr/bin/python3.11"  # its own file
        register_usdt(u)
        try:
            out, _ = py.communicate("go\n", timeout=30)
        finally:
            unregister_usdt(u)
    finally:
        py.kill()
        py.wait()
    assert out.strip() == "done"
    assert b"json" in seen and b"decimal" in seen
    assert sum(p.handler_errors for p in u.uprobes) == 0


def test_a_plain_uprobe_at_a_semaphore_site_is_refused_clearly(live: Path) -> None:
    """The kernel keeps one uprobe per (inode, offset) and refuses a second ref_ctr_offset for
    it (kernel/events/uprobes.c: alloc_uprobe()): a plain uprobe at a USDT site whose
    semaphore is in use gets EINVAL, said as such; the USDT probe keeps working, and once it
    is removed the plain uprobe registers."""
    exe = live / "x86_64" / "usdt"
    u = Usdt(str(exe), "kuprobe", "guarded", handler=lambda site, regs: 0)
    site = u.sites[0]
    plain = Uprobe(u.file, offset=site.offset, consumer=UprobeConsumer(handler=lambda uc, r: 0))
    register_usdt(u)
    try:
        with pytest.raises(ProbeError) as e:
            register_uprobe(plain)
        assert e.value.errno == errno.EINVAL
        assert "ref_ctr_offset" in str(e.value) and "remove the other probe" in (e.value.hint or "")
        assert not plain.registered
        t = Waiting(exe, 20)
        try:
            assert rounds_of(t.go()) == (20, 20)  # the USDT probe still raises its semaphore
        finally:
            t.kill()
    finally:
        unregister_usdt(u)
    assert u.hits == 20
    register_uprobe(plain)
    unregister_uprobe(plain)
