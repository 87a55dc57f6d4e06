"""arm64's rules, each from its kernel file: BRK immediates, slots, simulation, refusals.

arch/arm64/include/asm/brk-imm.h, arch/arm64/kernel/probes/{decode-insn.c,simulate-insn.c,
kprobes.c,uprobes.c}. The tests every arch shares (every instruction probed, fix-ups, the
KUnit cases, uretprobe depth …) run on arm64 too; these are the rules only arm64 has.
"""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from kuprobe import Kprobe, Kretprobe, ProbeError, Uprobe, UprobeConsumer
from kuprobe.insn import disassembler
from kuprobe.model import Machine, ModelError
from kuprobe.model.arch.arm64_insn import arm_kprobe_decode_insn, arm_probe_decode_insn
from kuprobe.regs import PtRegs

from .archfacts import ARM64_ARCHES

pytestmark = pytest.mark.parametrize("arch", ARM64_ARCHES)


def brk(imm: int) -> bytes:
    # the Arm ARM's BRK encoding, written out here independently of the model
    return struct.pack("<I", 0xD4200000 | imm << 5)


def insn_at(m: Machine, addr: int) -> int:
    return int.from_bytes(m.read(addr, 4), "little")


def test_each_probe_kind_has_its_brk_immediate(mkernel: Machine, muser: Machine,
                                               mfuncs: str) -> None:  # fmt: skip
    """brk-imm.h: kprobes BRK #0x004, uprobes #0x005, the step-done BRK #0x006 after a
    kprobe's slot, kretprobes #0x007 (the trampoline)."""
    add = mkernel.symbol_address("add")
    kp = Kprobe(symbol_name="add")
    mkernel.register_kprobe(kp)
    assert mkernel.read(add, 4) == brk(0x004)
    point = mkernel.kprobes.points[add] if mkernel.kprobes else None
    assert point is not None
    original = muser.read(add, 4)
    assert mkernel.read(point.slot, 8) == original + brk(0x006)  # {insn, BRK #6}
    mkernel.unregister_kprobe(kp)
    assert mkernel.read(add, 4) == original
    assert mkernel.read(mkernel.hooks.KRETPROBE_TRAMPOLINE, 4) == brk(0x007)
    up = Uprobe(mfuncs, symbol_name="add")
    muser.register_uprobe(up)
    assert muser.read(add, 4) == brk(0x005)
    muser.unregister_uprobe(up)


def test_misaligned_addresses_are_einval(mkernel: Machine, muser: Machine, mfuncs: str) -> None:
    """kprobes.c arch_prepare_kprobe() and uprobes.c arch_uprobe_analyze_insn(): an address
    that is not 4-byte aligned is -EINVAL (x86 says -EILSEQ for a mid-instruction offset)."""
    for off in (1, 2, 3, 6):
        with pytest.raises(ProbeError) as e:
            mkernel.register_kprobe(Kprobe(symbol_name="model_rec", offset=off))
        assert e.value.errno == errno.EINVAL
        with pytest.raises(ProbeError) as e:
            muser.register_uprobe(Uprobe(mfuncs, symbol_name="model_rec", offset=off))
        assert e.value.errno == errno.EINVAL
    addr = mkernel.symbol_address("model_rec") + 2
    with pytest.raises(ProbeError) as e:
        mkernel.register_kprobe(Kprobe(addr=addr))
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("semantics", ["today", "seed"])
def test_kprobe_step_out_of_line(mfuncs: str, semantics: str) -> None:
    """kprobes.c setup_singlestep(): today the slot {insn, BRK #KPROBES_BRK_SS_IMM} runs with
    DAIF masked and kprobe_breakpoint_ss_handler() resumes at addr + 4; the patch "arm64:
    Kprobes with single stepping support" steps the slot with the CPU's single-step (IRQs
    masked, PSTATE.D clear, PSTATE.SS set). Either way the post_handler sees addr + 4 and the
    pstate of before the hit."""
    k = Machine.load(mfuncs, space="kernel", semantics=semantics)
    add = k.symbol_address("add")
    seen: list[tuple[int, int]] = []
    pre_pstate: list[int] = []
    kp = Kprobe(symbol_name="add", pre_handler=lambda p, r: pre_pstate.append(
        int(r.pstate)) or 0,
        post_handler=lambda p, r, f: seen.append((int(r.pc), int(r.pstate))))  # fmt: skip
    k.register_kprobe(kp)
    assert k.call("add", 2, 3) == 5
    k.unregister_kprobe(kp)
    assert seen == [(add + 4, pre_pstate[0])]
    kinds = [e.kind for e in k.trace]
    i = kinds.index("singlestep")
    assert kinds[i + 1 : i + 4] == ["debug", "ssdone", "post"]
    slot = k.trace[i + 1].addr - 4
    assert k.trace[i].detail == f"slot {slot:#x}"


def test_a_step_done_brk_off_the_slot_is_a_kernel_oops(mkernel: Machine) -> None:
    """kprobe_breakpoint_ss_handler(): a step-done BRK #6 anywhere but after the current
    kprobe's slot is "not ours" (DBG_HOOK_ERROR), and brk_handler() dies ("Oops - BRK"). Here
    a pre_handler calls a function whose first instruction is such a BRK."""
    stray = mkernel.symbol_address("model_load")
    mkernel.write(stray, brk(0x006))
    kp = Kprobe(symbol_name="add", pre_handler=lambda p, r: mkernel.call(stray, 0) and 0)
    mkernel.register_kprobe(kp)
    try:
        with pytest.raises(ModelError, match=f"debug trap at {stray:#x} with no kprobe stepping"):
            mkernel.call("add", 2, 3)
    finally:
        mkernel.unregister_kprobe(kp)


def test_kprobe_step_masks_daif_today_and_unmasks_debug_with_hardware_step(mfuncs: str) -> None:
    """kprobes_save_local_irqflag(): today regs->pstate |= DAIF_MASK; semantics="seed": I set, D
    clear (software-step exceptions enabled), and PSTATE.SS armed."""
    got = {}
    for semantics in ("today", "seed"):
        k = Machine.load(mfuncs, space="kernel", semantics=semantics)
        kp = Kprobe(symbol_name="add")
        k.register_kprobe(kp)
        point = k.kprobes.points[k.symbol_address("add")] if k.kprobes else None
        assert point is not None
        regs = k._regs()
        k.hooks.prepare_singlestep(k.kprobes.kcb if k.kprobes else None, regs, point.addr,
                                   point.slot, point.ainsn)  # fmt: skip
        got[semantics] = (int(regs.pstate) & 0x3C0, int(regs.pstate) >> 21 & 1,
                          int(regs.pc) == point.slot)  # fmt: skip
        k.unregister_kprobe(kp)
    assert got["today"] == (0x3C0, 0, True)
    assert got["seed"][0] & 0x280 == 0x080 and got["seed"][1:] == (1, True)


def test_uprobe_steps_in_the_xol_slot(muser: Machine, mfuncs: str) -> None:
    """uprobes.c arch_uprobe_pre_xol(): pc = xol slot, fault_code = UPROBE_INV_FAULT_CODE,
    single-step on; uprobe_single_step_handler() finds pc == xol_vaddr + 4;
    arch_uprobe_post_xol(): pc = vaddr + 4."""
    add = muser.symbol_address("add")
    up = Uprobe(mfuncs, symbol_name="add", consumer=UprobeConsumer(handler=lambda u, r: 0))
    muser.register_uprobe(up)
    assert muser.call("add", 2, 3) == 5
    muser.unregister_uprobe(up)
    pre = next(e for e in muser.trace if e.kind == "pre_xol")
    xol_vaddr = int(pre.detail.split("->")[1], 16)
    debug = next(e for e in muser.trace if e.kind == "debug")
    assert debug.addr == xol_vaddr + 4
    post = next(e for e in muser.trace if e.kind == "post_xol")
    assert post.detail == f"pc {xol_vaddr + 4:#x}->{add + 4:#x}"
    assert muser.read(xol_vaddr, 4) == muser.read(add, 4)  # the original insn in the slot


def test_branches_are_simulated_not_stepped(mkernel: Machine, muser: Machine,
                                            mfuncs: str) -> None:  # fmt: skip
    """decode-insn.c arm_probe_decode_insn(): b.cond, cbz/cbnz, tbz/tbnz, adr/adrp, b/bl,
    br/blr/ret are INSN_GOOD_NO_SLOT: simulated at the probed address (kprobes.c
    arch_simulate_insn(), then post_kprobe_handler() at once; uprobes.c
    arch_uprobe_skip_sstep()). No slot runs, no step trap comes."""
    sym = mkernel.image.symbol("model_branches")
    code = mkernel.read(sym.value, sym.size)
    names = {"cbz", "cbnz", "tbz", "tbnz", "adr", "br", "ret"}
    simulated = [i for i in disassembler("arm64").disasm(code, sym.value) if i.mnemonic in names]
    assert {i.mnemonic for i in simulated} == names
    expected = 43  # 6 odd n in 1..11: 18; n & 2 clear for 1, 4, 5, 8, 9: 25
    posts: list[int] = []
    for insn in simulated:
        posts.clear()
        kp = Kprobe(addr=insn.address, post_handler=lambda p, r, f: posts.append(int(r.pc)))
        mkernel.register_kprobe(kp)
        mkernel.trace.clear()
        assert mkernel.call("model_branches", 11) == expected
        mkernel.unregister_kprobe(kp)
        kinds = [e.kind for e in mkernel.trace]
        assert "simulate" in kinds and "singlestep" not in kinds and "debug" not in kinds
        assert len(posts) == kp.hits > 0
        up = Uprobe(mfuncs, offset=muser.image.vaddr_to_offset(insn.address),
                    consumer=UprobeConsumer())  # fmt: skip
        muser.register_uprobe(up)
        muser.trace.clear()
        assert muser.call("model_branches", 11) == expected
        muser.unregister_uprobe(up)
        assert "skip_sstep" in [e.kind for e in muser.trace]
        assert up.hits == kp.hits


def test_literal_loads_simulated_by_kprobes_refused_by_uprobes(mkernel: Machine, muser: Machine,
                                                               mfuncs: str) -> None:  # fmt: skip
    """decode-insn.c arm_kprobe_decode_insn(): ldr/ldrsw (literal) are simulated for kprobes
    (simulate_ldr_literal(), simulate_ldrsw_literal()); arm_probe_decode_insn(), which uprobes
    use, refuses them (aarch64_insn_uses_literal()): arch_uprobe_analyze_insn() -EINVAL."""
    expected = muser.call("model_literal", 1)
    assert expected == 0x1122334455667788 - 5 + 0xFFFFFFFB + 1
    for off in (0, 4, 8):  # ldr x, ldrsw x, ldr w (literal)
        kp = Kprobe(symbol_name="model_literal", offset=off)
        mkernel.register_kprobe(kp)
        assert mkernel.call("model_literal", 1) == expected
        mkernel.unregister_kprobe(kp)
        assert kp.hits == 1
        with pytest.raises(ProbeError) as e:
            muser.register_uprobe(Uprobe(mfuncs, symbol_name="model_literal", offset=off))
        assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("label", ["model_refused_mrs_daif", "model_refused_msr",
                                   "model_refused_svc", "model_refused_brk",
                                   "model_refused_eret"])  # fmt: skip
def test_refused_instructions(mkernel: Machine, muser: Machine, mfuncs: str, label: str) -> None:
    """decode-insn.c aarch64_insn_is_steppable(): exception-generating insns, eret, msr and
    mrs of DAIF cannot run out of line and are not simulated: -EINVAL for both kinds."""
    with pytest.raises(ProbeError) as e:
        mkernel.register_kprobe(Kprobe(symbol_name=label))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ProbeError) as e:
        muser.register_uprobe(Uprobe(mfuncs, symbol_name=label))
    assert e.value.errno == errno.EINVAL


def test_mrs_of_another_register_is_stepped(mkernel: Machine) -> None:
    """aarch64_insn_is_steppable(): mrs is refused only when it reads DAIF; `mrs x9, nzcv` is
    stepped out of line (not simulated) and reads the flags the trapped task had."""
    # model_refused_mrs_ok: `mrs x9, nzcv; ret` (x0, the argument, is returned untouched)
    nv = 0x90000000  # PSTATE.N and PSTATE.V (the Arm ARM's NZCV: N bit 31 … V bit 28)
    seen: list[int] = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        regs.pstate = (int(regs.pstate) & ~0xF0000000) | nv
        return 0

    kp = Kprobe(symbol_name="model_refused_mrs_ok", pre_handler=pre,
                post_handler=lambda p, r, f: seen.append(int(r.x9)))  # fmt: skip
    mkernel.register_kprobe(kp)
    mkernel.trace.clear()
    assert mkernel.call("model_refused_mrs_ok", 7) == 7
    mkernel.unregister_kprobe(kp)
    assert (kp.hits, kp.nmissed, seen) == (1, 0, [nv])
    kinds = [e.kind for e in mkernel.trace]
    assert "singlestep" in kinds and "simulate" not in kinds


def test_no_kprobe_inside_an_exclusive_sequence(mkernel: Machine, muser: Machine,
                                                mfuncs: str) -> None:  # fmt: skip
    """decode-insn.c: ldxr/stxr themselves are refused (aarch64_insn_is_exclusive()), and a
    kprobe between them too (is_probed_address_atomic(): scanning back meets the ldxr before
    any stxr); after the stxr it is fine. Uprobes refuse only the exclusive insns."""
    verdicts = {}
    for off in (0, 4, 8, 12, 16):
        kp = Kprobe(symbol_name="model_atomic_inc", offset=off)
        try:
            mkernel.register_kprobe(kp)
        except ProbeError as e:
            assert e.errno == errno.EINVAL
            verdicts[off] = "refused"
        else:
            mkernel.unregister_kprobe(kp)
            verdicts[off] = "ok"
    # ldxr, add (inside), stxr, cbnz (after the stxr), ret
    assert verdicts == {0: "refused", 4: "refused", 8: "refused", 12: "ok", 16: "ok"}
    up = Uprobe(mfuncs, symbol_name="model_atomic_inc", offset=4)
    muser.register_uprobe(up)  # the add: uprobes do not scan for the sequence
    muser.unregister_uprobe(up)


def test_decoder_tables(arch: str) -> None:
    """decode-insn.c on raw encodings: steppable, simulated, refused."""
    nop, add = 0xD503201F, 0x91000400
    assert arm_probe_decode_insn(nop)[0] == "good"
    assert arm_probe_decode_insn(add)[0] == "good"
    assert arm_probe_decode_insn(0xD503203F)[0] == "rejected"  # yield: not a steppable hint
    assert arm_probe_decode_insn(0xD503233F)[0] == "good"  # paciasp
    assert arm_probe_decode_insn(0x14000001)[0] == "good_no_slot"  # b
    assert arm_probe_decode_insn(0x58000040)[0] == "rejected"  # ldr x0, literal
    assert arm_kprobe_decode_insn(0x58000040, b"")[0] == "good_no_slot"
    assert arm_probe_decode_insn(0xD4000001)[0] == "rejected"  # svc #0


def test_kretprobe_through_the_link_register(mkernel: Machine) -> None:
    """kprobes.c arch_prepare_kretprobe(): ri->ret_addr = x30, x30 = the trampoline; the
    trampoline's BRK #KRETPROBES_BRK_IMM hands regs to kretprobe_trampoline_handler() with
    x29 as the frame."""
    seen: list[tuple[int, int]] = []
    lrs: list[int] = []

    def entry(ri: object, regs: PtRegs) -> int:
        lrs.append(int(regs.x30))
        return 0

    rp = Kretprobe(symbol_name="add", entry_handler=entry,
                   handler=lambda ri, r: seen.append((ri.ret_addr, int(r.x0))) or 0)  # fmt: skip
    mkernel.register_kretprobe(rp)
    assert mkernel.call("calls", 5) == mkernel.call("calls", 5)
    mkernel.unregister_kretprobe(rp)
    assert [r for r, _ in seen] == lrs  # the real return address, from x30 at the entry
    assert all(a != mkernel.hooks.KRETPROBE_TRAMPOLINE for a in lrs)


def test_uretprobe_trampoline_is_the_first_xol_slot(muser: Machine, mfuncs: str) -> None:
    """kernel/events/uprobes.c xol_add_vma(): slot 0 holds the trampoline (UPROBE_SWBP_INSN);
    uprobes.c arch_uretprobe_hijack_return_addr() puts its address into x30."""
    lrs: list[int] = []
    up = Uprobe(mfuncs, symbol_name="add", consumer=UprobeConsumer(
        handler=lambda u, r: lrs.append(int(r.x30)) or 0,
        ret_handler=lambda u, f, r: lrs.append(int(r.pc)) or 0))  # fmt: skip
    muser.register_uprobe(up)
    assert muser.call("add", 40, 2) == 42
    muser.unregister_uprobe(up)
    xol = muser.uprobes.xol if muser.uprobes else None
    assert xol is not None
    assert muser.read(xol.vaddr, 4) == brk(0x005)
    assert lrs == [muser.hooks.CALL_RETURN, muser.hooks.CALL_RETURN]


def test_arm64_targets_exist(targets: Path, arch: str) -> None:
    """tests/targets/build.sh builds every target for arm64 (gcc-aarch64-linux-gnu)."""
    for stem in ("target", "model_funcs", "demo"):
        for suffix in ("", "-nopie", "-stripped", "-static"):
            assert (targets / "arm64" / f"{stem}{suffix}").is_file()
