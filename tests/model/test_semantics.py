"""kuprobe.model.semantics: the table, the record of each kernel, and each row both ways.

Rows tested elsewhere, both ways: uprobe_filter and utask_bp_hit (test_uprobes.py),
arm64_kprobe_step (test_arm64.py), kprobe_fault_handler's seed side (test_kprobes.py).
"""

from __future__ import annotations

import errno
import re
from dataclasses import fields
from pathlib import Path

import pytest

from kuprobe import Kprobe, Kretprobe, ProbeError, Uprobe, UprobeConsumer
from kuprobe.errors import KuprobeValueError
from kuprobe.insn import disassembler
from kuprobe.model import Machine
from kuprobe.model.semantics import ROWS, SEED, TODAY, Semantics, for_kernel, markdown, with_
from kuprobe.regs import PtRegs, instruction_pointer

from .archfacts import X86_ARCHES

DOC = Path(__file__).resolve().parents[2] / "docs" / "semantics.md"
PAGE = 0x7000000


# --- the table -----------------------------------------------------------------------------

# Each row's behaviour per release, written out from the kernel history docs/semantics.md
# cites: a line for the first release of each change and one for the release before it.
# Columns: the Semantics fields, in order.
RULES = """
release        uprobe_skip_sstep uprobe_filter  utask_bp_hit kprobe_fault_handler kretprobe_handler_ip x86_kprobe_step kprobe_post_handler arm64_kprobe_step x86_sha512_vex
seed           nop_pattern       at_hit         yes          yes                  trampoline           trap_flag       before_resume       hardware_step     unknown
2.6.12         nop_pattern       at_hit         yes          yes                  trampoline           trap_flag       before_resume       hardware_step     unknown
2.6.24.7       nop_pattern       at_hit         yes          yes                  trampoline           trap_flag       before_resume       hardware_step     unknown
2.6.25         nop_pattern       at_hit         yes          yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
3.6.11         nop_pattern       at_hit         yes          yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
3.7.10         nop_pattern       at_hit         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
3.8.13         nop_pattern       at_hit         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
3.9            nop_pattern       per_mm         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
3.15.10        nop_pattern       per_mm         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
3.16           emulate_branches  per_mm         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
4.14.336       emulate_branches  per_mm         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
4.15.0         emulate_push      per_mm         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
5.9.16         emulate_push      per_mm         no           yes                  trampoline           trap_flag       after_resume        hardware_step     unknown
5.10.0         emulate_push      per_mm         no           yes                  trampoline           trap_flag       after_resume        brk_after_slot    unknown
5.12.19        emulate_push      per_mm         no           yes                  trampoline           trap_flag       after_resume        brk_after_slot    unknown
5.13           emulate_push      per_mm         no           yes                  trampoline           int3_after_slot after_resume        brk_after_slot    unknown
5.14.21        emulate_push      per_mm         no           no                   trampoline           int3_after_slot after_resume        brk_after_slot    unknown
5.15.0         emulate_push      per_mm         no           no                   trampoline           int3_after_slot after_resume        brk_after_slot    unknown
5.16           emulate_push      per_mm         no           no                   return_address       int3_after_slot after_resume        brk_after_slot    unknown
6.1.0          emulate_push      per_mm         no           no                   return_address       int3_after_slot after_resume        brk_after_slot    unknown
6.9.12         emulate_push      per_mm         no           no                   return_address       int3_after_slot after_resume        brk_after_slot    unknown
6.10           emulate_push      per_mm         no           no                   return_address       int3_after_slot after_resume        brk_after_slot    vex_only
6.11.11        emulate_push      per_mm         no           no                   return_address       int3_after_slot after_resume        brk_after_slot    vex_only
6.12.0         emulate_push      per_mm_recheck no           no                   return_address       int3_after_slot after_resume        brk_after_slot    vex_only
6.15.11        emulate_push      per_mm_recheck no           no                   return_address       int3_after_slot after_resume        brk_after_slot    vex_only
6.16.3         emulate_nops      per_mm_recheck no           no                   return_address       int3_after_slot after_resume        brk_after_slot    vex_only
6.18.0         emulate_nops      per_mm_recheck no           no                   return_address       int3_after_slot after_resume        brk_after_slot    vex_only
today          emulate_nops      per_mm_recheck no           no                   return_address       int3_after_slot after_resume        brk_after_slot    vex_only
"""  # noqa: E501
_HEADER, *_LINES = (line.split() for line in RULES.strip().splitlines())
FIELDS = tuple(_HEADER[1:])
RELEASES = {line[0]: dict(zip(FIELDS, line[1:], strict=True)) for line in _LINES}
# The rows that apply to one arch only; elsewhere a record keeps today's value
X86_ONLY = {"uprobe_skip_sstep", "x86_kprobe_step", "kprobe_post_handler", "x86_sha512_vex"}
ARM64_ONLY = {"arm64_kprobe_step"}


def _rules(s: Semantics) -> dict[str, str]:
    return {f: getattr(s, f) for f in FIELDS}


def _release(text: str) -> tuple[int, ...]:
    """ "5.13" -> (5, 13); "2.6.24.7" -> (2, 6, 24, 7)."""
    return tuple(int(part) for part in text.split("."))


def test_seed_and_today_are_the_first_and_newest_rules() -> None:
    assert [f.name for f in fields(Semantics) if f.name != "name"] == list(FIELDS)
    assert [r.field for r in ROWS] == list(FIELDS)
    assert (_rules(SEED), SEED.name) == (RELEASES["seed"], "seed")
    assert (_rules(TODAY), TODAY.name) == (RELEASES["today"], "today")
    for r in ROWS:
        assert r.changes and all(c.source and c.behaviour for c in r.changes), r.field


# The changes whose commit history does not pin (field, release): each says why in its source
UNPINNED = {("kprobe_post_handler", "2.6.25")}


def test_every_change_names_its_commit_and_release() -> None:
    """Each change: the 12-hex id of its torvalds/linux commit and a release, X.Y (2.6.Z
    before 3.0), later than the row's change before it."""
    for r in ROWS:
        last: tuple[int, ...] = ()
        for c in r.changes:
            assert re.fullmatch(r"2\.6\.\d+|[3-9]\.\d+|[1-9]\d+\.\d+", c.version), (r.field, c)
            assert _release(c.version) > last, (r.field, c.version)
            last = _release(c.version)
            if (r.field, c.version) in UNPINNED:
                assert c.commit == "" and "not pinned" in c.source, (r.field, c.version)
            else:
                assert re.fullmatch(r"[0-9a-f]{12}", c.commit), (r.field, c.version, c.commit)
                assert c.commit in DOC.read_text(), (r.field, c.commit)


def test_the_table_has_each_change_and_the_release_before_it() -> None:
    """A change between two lines of the table would pass unseen (issue 19)."""
    lines = [_release(name) for name in RELEASES if name not in ("seed", "today")]
    for r in ROWS:
        for c in r.changes:
            first = _release(c.version)
            before = (*first[:-1], first[-1] - 1)
            for release in (first, before):
                assert any(line[: len(release)] == release for line in lines), (r.field, release)


@pytest.mark.parametrize("release", sorted(set(RELEASES) - {"seed", "today"}))
def test_for_kernel_gives_the_rules_of_that_release(release: str) -> None:
    got = for_kernel(release)
    assert (_rules(got), got.name) == (RELEASES[release], release)


@pytest.mark.parametrize("flavour", ["amd64", "arm64", "686-pae", "cloud-amd64"])
def test_a_debian_release_has_the_rules_of_its_upstream_version(flavour: str) -> None:
    """``uname -r`` of a Debian kernel: the ABI number and flavour change nothing (the
    examples are built from parts: no test names an ABI Debian's archive will retire)."""
    for upstream in ("5.10.0", "6.1.0", "6.12.0", "6.18.0"):
        for abi in (1, 30, 57, 999):
            got = for_kernel(f"{upstream}-{abi}-{flavour}")
            assert _rules(got) == RELEASES[upstream], (upstream, abi)


def test_for_kernel_refuses_what_is_not_a_release() -> None:
    with pytest.raises(KuprobeValueError, match="kernel release"):
        for_kernel("linux")


def test_machines_take_strings_releases_and_records(funcs: str, arch: str) -> None:
    assert Machine.load(funcs).semantics == TODAY.for_arch(arch)
    assert Machine.load(funcs, semantics="today").semantics == TODAY.for_arch(arch)
    assert Machine.load(funcs, semantics="seed").semantics == SEED.for_arch(arch)
    m = Machine.load(funcs, semantics="6.1.0")
    assert m.semantics == for_kernel("6.1.0").for_arch(arch)
    rec = with_(TODAY, utask_bp_hit="yes")
    assert Machine(Machine.load(funcs).image, semantics=rec).semantics.utask_bp_hit == "yes"
    with pytest.raises(KuprobeValueError, match="semantics must be"):
        Machine.load(funcs, semantics="yesterday")


def test_a_row_for_other_arches_keeps_todays_value(funcs: str, arch: str) -> None:
    other = ARM64_ONLY if arch in X86_ARCHES else X86_ONLY
    seed, today = RELEASES["seed"], RELEASES["today"]
    want = {f: today[f] if f in other else seed[f] for f in FIELDS}
    assert _rules(Machine.load(funcs, semantics="seed").semantics) == want


def test_the_doc_is_generated_from_the_table() -> None:
    """docs/semantics.md is `python -m kuprobe.model.semantics > docs/semantics.md`."""
    assert DOC.read_text() == markdown(), "stale: regenerate docs/semantics.md"


# --- x86_kprobe_step: TF then, int3 after the slot (and emulation) now ---------------------


def _first(m: Machine, func: str, mnemonic: str) -> int:
    sym = m.image.symbol(func)
    for insn in disassembler(m.arch).disasm(m.read(sym.value, sym.size), sym.value):
        if insn.mnemonic == mnemonic:
            return int(insn.address)
    raise AssertionError(f"{func} has no {mnemonic}")


@pytest.mark.parametrize("arch", X86_ARCHES)
@pytest.mark.parametrize("semantics", ["seed", "5.10.0", "today"])
def test_x86_kprobe_step_by_trap_flag_or_int3_after_the_slot(
    targets: Path, arch: str, semantics: str
) -> None:
    k = Machine.load(targets / arch / "target-static", space="kernel", semantics=semantics)
    addr = _first(k, "add", "mov" if arch == "i386" else "lea")  # i386's push is emulated
    flags: list[int] = []
    kp = Kprobe(addr=addr, post_handler=lambda p, r, f: flags.append(int(r.flags)))
    k.register_kprobe(kp)
    assert k.call("add", 2, 3) == 5
    k.unregister_kprobe(kp)
    kinds = [e.kind for e in k.trace]
    slot = k.trace[kinds.index("singlestep")].detail
    if semantics == "today":  # the int3 in the slot ends the step; no debug trap at all
        assert "ss_int3" in kinds and "debug" not in kinds
        ss = k.trace[kinds.index("ss_int3")]
        insn_len = len(next(disassembler(arch).disasm(k.read(addr, 16), addr, 1)).bytes)
        assert ss.addr == int(slot.split()[-1], 16) + insn_len  # the int3 right after it
    else:  # the trap flag: a debug trap after the instruction
        assert "debug" in kinds and "ss_int3" not in kinds
    # the seed's post_handler runs before resume_execution(): TF still set (kprobe_post_handler)
    assert flags and bool(flags[0] & 0x100) == (semantics == "seed")


@pytest.mark.parametrize("arch", X86_ARCHES)
@pytest.mark.parametrize(("semantics", "stepped"), [("5.10.0", True), ("today", False)])
def test_x86_kprobes_emulate_a_call_today(
    targets: Path, arch: str, semantics: str, stepped: bool
) -> None:
    """prepare_emulation(): a call is emulated (kprobe_emulate_call()), never stepped."""
    k = Machine.load(targets / arch / "target-static", space="kernel", semantics=semantics)
    addr = _first(k, "calls", "call")
    ret: list[int] = []
    kp = Kprobe(addr=addr, post_handler=lambda p, r, f: ret.append(instruction_pointer(r)))
    k.register_kprobe(kp)
    assert k.call("calls", 5) == 101
    k.unregister_kprobe(kp)
    kinds = [e.kind for e in k.trace]
    assert ("singlestep" in kinds) == stepped and ("simulate" in kinds) == (not stepped)
    assert ret == [k.symbol_address("add")]  # both ways, the post_handler is at the callee


# --- kprobe_post_handler: HIT_SSDONE before or after resume_execution() --------------------


@pytest.mark.parametrize("arch", X86_ARCHES)
def test_the_seeds_post_handler_sees_the_slot(targets: Path, arch: str) -> None:
    path = targets / arch / "target-static"
    seen = {}
    for semantics in ("seed", "5.10.0"):
        k = Machine.load(path, space="kernel", semantics=semantics)
        addr = _first(k, "add", "mov" if arch == "i386" else "lea")
        ips: list[tuple[int, str]] = []
        kp = Kprobe(addr=addr, post_handler=lambda p, r, f: ips.append(  # noqa: B023
            (instruction_pointer(r), k.kprobe_status)))  # noqa: B023  # fmt: skip
        k.register_kprobe(kp)
        k.call("add", 2, 3)
        k.unregister_kprobe(kp)
        size = len(next(disassembler(arch).disasm(k.read(addr, 16), addr, 1)).bytes)
        seen[semantics] = (ips[0][0] - addr == size, ips[0][1])
    assert seen == {"seed": (False, "HIT_SSDONE"), "5.10.0": (True, "HIT_SSDONE")}


# --- kprobe_fault_handler: removed in 5.14 ----------------------------------------------


def test_todays_kprobes_refuse_a_fault_handler(funcs: str) -> None:
    k = Machine.load(funcs, space="kernel")
    kp = Kprobe(symbol_name="add", fault_handler=lambda p, r, t: 0)
    with pytest.raises(ProbeError) as e:
        k.register_kprobe(kp)
    assert e.value.errno == errno.EOPNOTSUPP and "5.14" in str(e.value)
    assert not kp.registered
    Machine.load(funcs, space="kernel", semantics="5.13.0").register_kprobe(kp)


@pytest.mark.parametrize(
    ("semantics", "finished", "nmissed"),
    [("seed", False, 1), ("5.13.0", False, 1), ("5.14.0", True, 0), ("today", True, 0)],
)
def test_a_fault_in_a_handler_today_is_fixed_up_and_the_handler_goes_on(
    funcs: str, semantics: str, finished: bool, nmissed: int
) -> None:
    """Seed: nmissed++, HIT_FAULT, the handler abandoned. v5.14 on (kprobe_fault_handler(),
    "kprobes: Do not increment probe miss count in the fault handler"): the fault is fixed up
    as any other, nmissed unchanged, the handler goes on."""
    k = Machine.load(funcs, space="kernel", semantics=semantics)
    k.map(PAGE, 0x1000, present=False)
    done: list[bytes] = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        done.append(k.copy_from_user(PAGE, 4))
        return 0

    kp = Kprobe(symbol_name="add", pre_handler=pre)
    k.register_kprobe(kp)
    assert k.call("add", 20, 22) == 42
    k.unregister_kprobe(kp)
    assert (kp.nmissed, bool(done)) == (nmissed, finished)
    assert ("HIT_FAULT" in [e.status for e in k.trace]) == (not finished)


# --- kretprobe_handler_ip: the trampoline, then the real return address (v5.16) ------------


@pytest.mark.parametrize("semantics", ["seed", "5.15.0", "5.16.0", "6.1.0", "today"])
def test_kretprobe_handlers_see_the_return_address_since_5_16(funcs: str, semantics: str) -> None:
    k = Machine.load(funcs, space="kernel", semantics=semantics)
    ips: list[int] = []
    rp = Kretprobe(symbol_name="add", handler=lambda ri, r: ips.append(instruction_pointer(r)) or 0)
    k.register_kretprobe(rp)
    assert k.call("add", 1, 2) == 3
    k.unregister_kretprobe(rp)
    h = k.hooks
    want = h.CALL_RETURN if semantics in ("5.16.0", "6.1.0", "today") else h.KRETPROBE_TRAMPOLINE
    assert ips == [want]


# --- uprobe_skip_sstep (x86): the NOP pattern, emulated branches, push, x86_nops -----------

# tests/targets/funcs.c nop_entry() as gcc emits it for x86_64: 66 90 | 90 | 0f 1f 00 | lea | ret
NOP_ENTRY = (b"\x66\x90", b"\x90", b"\x0f\x1f\x00", b"\x48\x8d\x47\x01", b"\xc3")
# offset -> which kernels skip the step there (seed, 3.16, 4.15, 6.1, today)
SKIPPED = {
    0: (True, True, True, True, True),  # 66 90: the pattern; prefix* 0x90 emulated
    2: (True, True, True, True, True),
    3: (True, False, False, False, True),  # nopl: the pattern; x86_nops[3] only since 6.16
    6: (False,) * 5,  # lea: stepped
    10: (False,) * 5,  # ret: stepped (uprobes emulate no ret)
}
KERNELS = ("seed", "3.16.0", "4.15.0", "6.1.0", "today")


@pytest.mark.parametrize("offset", sorted(SKIPPED))
def test_uprobe_nops_skipped_or_stepped_per_kernel(targets: Path, offset: int) -> None:
    path = str(targets / "x86_64" / "target-static")
    assert Machine.load(path).image.read_vaddr(
        Machine.load(path).image.symbol("nop_entry").value, 11
    ) == b"".join(NOP_ENTRY)
    got = []
    for semantics in KERNELS:
        u = Machine.load(path, semantics=semantics)
        up = Uprobe(path, symbol_name="nop_entry", offset=offset, consumer=UprobeConsumer())
        u.register_uprobe(up)
        assert u.call("nop_entry", 41) == 42
        u.unregister_uprobe(up)
        assert up.hits == 1
        got.append("skip_sstep" in [e.kind for e in u.trace])
    assert tuple(got) == SKIPPED[offset]


@pytest.mark.parametrize("arch", X86_ARCHES)
@pytest.mark.parametrize(("mnemonic", "since"), [("push", "4.15.0"), ("call", "3.16.0")])
def test_uprobe_push_and_call_emulated_since(
    targets: Path, arch: str, mnemonic: str, since: str
) -> None:
    """push_emulate_op() (v4.15), branch_emulate_op() (v3.16): no step, same result."""
    path = str(targets / arch / "target-static")
    for semantics, skipped in (("seed", False), ("3.15.0", False), (since, True),
                               ("today", True)):  # fmt: skip
        u = Machine.load(path, semantics=semantics)
        addr = _first(u, "calls", mnemonic)
        up = Uprobe(path, offset=u.image.vaddr_to_offset(addr), consumer=UprobeConsumer())
        u.register_uprobe(up)
        assert u.call("calls", 5) == 101
        u.unregister_uprobe(up)
        assert up.hits == 1
        assert ("skip_sstep" in [e.kind for e in u.trace]) == skipped, (semantics, mnemonic)
