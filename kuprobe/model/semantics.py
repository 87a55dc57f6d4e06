"""Where the documented designs and the kernels differ: one table, one record per kernel.

The model grew from old patches (cited by subject: "Kprobes- robust fault handling for
i386", "uprobes/core: handle breakpoint and signal step exception", "arm64: Kprobes with
single stepping support"); the kernels we run (the guests' 6.1, this host's 6.18) do some
things differently. Each difference is a :class:`Row`: what it is, the seed's behaviour, and
each change since: the first release that has it, the commit that made it (its id and
subject) and the kernel function. A :class:`Semantics` record has one field per row; ``SEED``
has the seed's values, ``TODAY`` the newest, ``for_kernel("6.1")`` (or ``uname -r``) those of
that release.
``docs/semantics.md`` is generated from ``ROWS`` (``python -m kuprobe.model.semantics``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from kuprobe.errors import KuprobeValueError


@dataclass(frozen=True)
class Change:
    """The behaviour from kernel ``version`` on: ``value`` (the field's), said in words.

    ``commit``: the torvalds/linux commit that made the change, its 12-hex id (``source``
    names it by subject), ``version`` the first release tag that holds it; "" where history
    does not pin one (``source`` says why).
    """

    version: str
    value: str
    behaviour: str
    source: str
    commit: str


@dataclass(frozen=True)
class Row:
    """One difference: the :class:`Semantics` field, its seed value, its changes in order."""

    field: str
    what: str
    arches: tuple[str, ...]
    seed: str
    seed_behaviour: str
    seed_source: str
    changes: tuple[Change, ...]


ALL = ("x86_64", "i386", "arm64")
X86 = ("x86_64", "i386")

ROWS: tuple[Row, ...] = (
    Row(
        "uprobe_skip_sstep",
        "uprobe instructions run without a single-step (arch_uprobe_skip_sstep())",
        X86,
        "nop_pattern",
        "the NOP pattern `0x66* {0x90 | 0x0f 0x1f | 0x0f 0x19 | 0x87 0xc0}` is skipped "
        "(ip += its length); everything else is stepped",
        'the patch "uprobes/core: handle breakpoint and signal step exception"',
        (
            Change(
                "3.16",
                "emulate_branches",
                "`0x66* 0x90` is emulated as a jmp with offset 0; jmp rel8/rel32, call rel32 "
                "and jcc are emulated; other nops (`0f 1f`, `87 c0`) are stepped",
                'arch/x86/kernel/uprobes.c branch_setup_xol_ops() ("uprobes/x86: Emulate '
                "unconditional relative jmp's\", then \"uprobes/x86: Emulate nop's using "
                "ops->emulate()\", the relative call's and jcc's: one series, merged for "
                "v3.16)",
                commit="7ba6db2d688b",
            ),
            Change(
                "4.15",
                "emulate_push",
                "as before, and `push reg` is emulated",
                'arch/x86/kernel/uprobes.c push_setup_xol_ops() ("uprobes/x86: Emulate '
                'push insns for uprobe on x86")',
                commit="e7ed9d9bd037",
            ),
            Change(
                "6.16",
                "emulate_nops",
                "as before, and every nop of the kernel's x86_nops[] table (1 to 8 bytes, "
                "`0f 1f …` included) is emulated",
                'arch/x86/kernel/uprobes.c branch_setup_xol_ops() ("uprobes/x86: Add '
                'support to emulate NOP instructions")',
                commit="610f6e14c29d",
            ),
        ),
    ),
    Row(
        "uprobe_filter",
        "uprobe consumer filters and UPROBE_HANDLER_REMOVE (handler_chain(), filter_chain())",
        ALL,
        "at_hit",
        "each hit calls a consumer's handler only if its filter accepts the task; the "
        "breakpoint is in every process; a handler's return value means nothing",
        'the patch "uprobes/core: handle breakpoint and signal step exception" (handler_chain())',
        (
            Change(
                "3.9",
                "per_mm",
                "the filter decides which processes get the breakpoint (filter_chain() at "
                "register and mmap); every hit calls every consumer's handler; when all "
                "handlers return UPROBE_HANDLER_REMOVE the breakpoint leaves this process",
                "kernel/events/uprobes.c handler_chain(), filter_chain() (the consumer "
                'filtering rework: uprobe_consumer->filter(uc, ctx, mm) in "uprobes: '
                'Reintroduce uprobe_consumer->filter()", UPROBE_HANDLER_REMOVE in "uprobes: '
                'Teach handler_chain() to filter out the probed task")',
                commit="da1816b1caec",
            ),
            Change(
                "6.12",
                "per_mm_recheck",
                "as before, but UPROBE_HANDLER_REMOVE removes the breakpoint only if "
                "filter_chain() finds no consumer that still wants this process (a consumer "
                "with no filter always does)",
                'kernel/events/uprobes.c handler_chain(): "re-check that removal is still '
                'required, this time under lock" ("uprobes: travers uprobe\'s consumer '
                'list locklessly under SRCU protection")',
                commit="cc01bd044e6a",
            ),
        ),
    ),
    Row(
        "utask_bp_hit",
        "the UTASK_BP_HIT state of struct uprobe_task",
        ALL,
        "yes",
        "the breakpoint sets utask->state = UTASK_BP_HIT while the handlers run",
        'the patch "uprobes/core: handle breakpoint and signal step exception"',
        (
            Change(
                "3.7",
                "no",
                "no such state: the task is UTASK_RUNNING until the step (UTASK_SSTEP)",
                'include/linux/uprobes.h enum uprobe_task_state ("uprobes: Kill '
                'UTASK_BP_HIT state")',
                commit="1b08e907211c",
            ),
        ),
    ),
    Row(
        "kprobe_fault_handler",
        "kprobe fault_handler, and a fault in a pre/post handler",
        ALL,
        "yes",
        "the fault_handler runs first (nonzero: handled, retried); else nmissed++, "
        "status HIT_FAULT and the handler is abandoned",
        'the patch "Kprobes- robust fault handling for i386" (kprobe_fault_handler())',
        (
            Change(
                "5.14",
                "no",
                "struct kprobe has no fault_handler (register_kprobe() refuses one: "
                "EOPNOTSUPP, as kuprobe's live side); a fault in a handler is fixed up "
                "like any kernel fault, nmissed unchanged, and the handler goes on",
                '"kprobes: Remove kprobe::fault_handler" and "kprobes: Do not increment '
                'probe miss count in the fault handler" (2e38eb04c95e); '
                "arch/x86/kernel/kprobes/core.c kprobe_fault_handler()",
                commit="ec6aba3d2be1",
            ),
        ),
    ),
    Row(
        "kretprobe_handler_ip",
        "the instruction pointer a kretprobe handler sees",
        ALL,
        "trampoline",
        "regs->ip (arm64: pc) is the kretprobe trampoline's address",
        "arch/x86/kernel/kprobes/core.c trampoline_handler(): regs->ip = trampoline",
        (
            Change(
                "5.16",
                "return_address",
                "the real return address (instruction_pointer_set() before the handlers)",
                'kernel/kprobes.c __kretprobe_trampoline_handler() ("kprobes: Enable '
                'stacktrace from pt_regs in kretprobe handler", with "x86/kprobes: Fixup '
                'return address in generic trampoline handler")',
                commit="df91c5bccb0c",
            ),
        ),
    ),
    Row(
        "x86_kprobe_step",
        "how x86 kprobes step the probed instruction",
        X86,
        "trap_flag",
        "the copy in the slot runs with TF set; the debug trap (#DB) ends the step, "
        "resume_execution() fixes ip and call return addresses; branches are stepped too",
        'the patch "Kprobes- robust fault handling for i386" (prepare_singlestep())',
        (
            Change(
                "5.13",
                "int3_after_slot",
                "the slot is the instruction and an int3; that int3 ends the step "
                "(resume_singlestep()); IF modifiers, ret, call, jmp, jcc, loop and "
                "indirect call/jmp through a register are emulated, never stepped; far "
                "branches, iret, VMX and indirect branches through memory are refused "
                "(EOPNOTSUPP)",
                "arch/x86/kernel/kprobes/core.c prepare_emulation(), prepare_singlestep() "
                '("x86/kprobes: Use int3 instead of debug trap for single-step", with "x86/'
                'kprobes: Fix to identify indirect jmp and others using range case")',
                commit="6256e668b7af",
            ),
        ),
    ),
    Row(
        "kprobe_post_handler",
        "when the post_handler runs (KPROBE_HIT_SSDONE)",
        X86,
        "before_resume",
        "status HIT_SSDONE, post_handler with the registers as the step left them (ip in "
        "the slot), then resume_execution()",
        'the patch "Kprobes- robust fault handling for i386" (post_kprobe_handler())',
        (
            Change(
                "2.6.25",
                "after_resume",
                "resume_execution() first: the post_handler sees ip at the next "
                "instruction of the probed function",
                "arch/x86/kernel/kprobes.c post_kprobe_handler() as unified for i386 and "
                "x86_64 (today kprobe_post_process()); v2.6.24's kprobes_32.c and "
                "kprobes_64.c still call the post_handler first. The commit is not pinned "
                '(by its date, "x86: kprobes code for x86 unification", 2008-01-30)',
                commit="",
            ),
        ),
    ),
    Row(
        "arm64_kprobe_step",
        "how arm64 kprobes step the probed instruction",
        ("arm64",),
        "hardware_step",
        "the slot is the instruction; the CPU's software step (MDSCR_EL1.SS) ends it, a "
        "debug exception that cannot nest",
        '"arm64: Kprobes with single stepping support" (v4.10)',
        (
            Change(
                "5.10",
                "brk_after_slot",
                "the slot ends with BRK #KPROBES_BRK_SS_IMM, run with DAIF masked",
                "arch/arm64/kernel/probes/kprobes.c arch_prepare_ss_slot(), "
                'kprobe_breakpoint_ss_handler() ("arm64: kprobes: Use BRK instead of '
                'single-step when executing instructions out-of-line", a v5.10-rc fix)',
                commit="7ee31a3aa8f4",
            ),
        ),
    ),
    Row(
        "x86_sha512_vex",
        "the x86 instruction decoder's map (arch/x86/lib/x86-opcode-map.txt): the VEX-only "
        "SHA512 forms of 0f 38 cb-cd with an f2 prefix",
        X86,
        "unknown",
        "`f2 0f 38 cb`-`cd` decode as legacy instructions (their f2 attribute is the plain "
        "SHA one), so a uprobe or kprobe may take them",
        "arch/x86/lib/x86-opcode-map.txt as of v6.1 (measured: the x86_64 guest's kprobes "
        "accept them, tests/vm/test_crosscheck_kprobes.py)",
        (
            Change(
                "6.10",
                "vex_only",
                "the f2 forms are VEX-only (vsha512msg1, vsha512msg2, vsha512rnds2), so "
                "insn_get_opcode() refuses their legacy encodings (inat_must_vex()): a uprobe "
                "-ENOEXEC, a kprobe -EINVAL",
                'arch/x86/lib/x86-opcode-map.txt ("x86/insn: Add misc new Intel '
                'instructions": "(F2),(11B),(v)" at 0f 38 cb-cd; measured on this host\'s '
                "6.18 uprobes, kuprobe.crosscheck.acceptance)",
                commit="9dd3612895de",
            ),
        ),
    ),
)


@dataclass(frozen=True)
class Semantics:
    """One behaviour per row of ``ROWS`` (the field names are the rows')."""

    uprobe_skip_sstep: str
    uprobe_filter: str
    utask_bp_hit: str
    kprobe_fault_handler: str
    kretprobe_handler_ip: str
    x86_kprobe_step: str
    kprobe_post_handler: str
    arm64_kprobe_step: str
    x86_sha512_vex: str
    name: str = ""  # "seed", "today" or the kernel release it was made for

    def __str__(self) -> str:
        return self.name or repr(self)

    def for_arch(self, arch: str) -> Semantics:
        """These rules on ``arch``: a row that does not apply there has today's value (so
        generic code may read every row without naming an arch)."""
        other = {r.field: getattr(TODAY, r.field) for r in ROWS if arch not in r.arches}
        return replace(self, **other) if other else self


def _version(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if m is None:
        raise KuprobeValueError(f"not a kernel release: {text!r} (e.g. 6.1, or `uname -r`)")
    return tuple(int(g or 0) for g in m.groups())


SEED = Semantics(**{r.field: r.seed for r in ROWS}, name="seed")
TODAY = Semantics(**{r.field: r.changes[-1].value for r in ROWS}, name="today")


def for_kernel(release: str) -> Semantics:
    """The rules of kernel ``release`` (``uname -r``, or "6.1", "6.18.0"): each row's
    newest change at or before it, or the seed's behaviour before the first change."""
    v = _version(release)
    values = {}
    for r in ROWS:
        values[r.field] = r.seed
        for c in r.changes:
            if _version(c.version) <= v:
                values[r.field] = c.value
    return Semantics(**values, name=release)


def resolve(semantics: str | Semantics) -> Semantics:
    """``"today"``, ``"seed"``, a kernel release or a Semantics -> a Semantics."""
    if isinstance(semantics, Semantics):
        return semantics
    if semantics == "today":
        return TODAY
    if semantics == "seed":
        return SEED
    if isinstance(semantics, str) and re.match(r"\d+\.\d+", semantics):
        return for_kernel(semantics)
    raise KuprobeValueError(
        f"semantics must be 'today', 'seed', a kernel release or a Semantics, not {semantics!r}"
    )


def with_(base: Semantics, **changes: str) -> Semantics:
    """``base`` with some rows changed (a Semantics for a test of one row)."""
    return replace(base, **changes, name=f"{base.name}+{','.join(changes)}")


def _commit_link(commit: str) -> str:
    """A change's commit as docs/semantics.md shows it: a link to git.kernel.org."""
    if not commit:
        return "not pinned"
    return f"[`{commit}`](https://git.kernel.org/torvalds/c/{commit})"


def markdown() -> str:
    """docs/semantics.md: the table of ROWS."""
    assert [f.name for f in fields(Semantics)][:-1] == [r.field for r in ROWS]
    out = [
        "<!-- generated by `python -m kuprobe.model.semantics` from kuprobe/model/semantics.py;"
        " tests/model/test_semantics.py fails if it is stale -->",
        "# Seed semantics and today's kernels",
        "",
        "The model ([kuprobe/model](../kuprobe/model/__init__.py)) follows either the designs "
        'of the patches it grew from (`Machine(semantics="seed")`), today\'s kernels '
        '(`"today"`, the default), or the rules of one release '
        '(`semantics=for_kernel("6.1")`, `uname -r` or any release string). One row '
        "per difference; `field = value` is the `Semantics` record's. Each change names the "
        "torvalds/linux commit that made it; *changed in* is the first release whose tag "
        "holds that commit (a stable backport to an older series does not count).",
        "",
        "| what | arches | seed | changed in | commit | then | source |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ROWS:
        seed = f"`{r.field} = {r.seed}`: {r.seed_behaviour}. Source: {r.seed_source}"
        first = True
        for c in r.changes:
            cells = (
                r.what if first else "〃",
                ", ".join(r.arches) if first else "",
                seed if first else "",
                c.version,
                _commit_link(c.commit),
                f"`{c.value}`: {c.behaviour}",
                c.source,
            )
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
            first = False
    out += [
        "",
        'The default guests run 6.1 (`for_kernel("6.1")`): '
        + ", ".join(
            f"`{f.name} = {getattr(for_kernel('6.1.0'), f.name)}`"
            for f in fields(Semantics)
            if f.name != "name"
        )
        + ".",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
