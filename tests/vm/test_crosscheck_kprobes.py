"""The kprobe scenarios (tests/scenarios/k-*.toml) in the x86_64 guest: the model running the
test module's code (kuprobe/targets/kmod, read back from the running kernel) against the live
kernel's kprobes and kretprobes on that same module, fact by fact."""

from __future__ import annotations

import errno
from concurrent.futures import ThreadPoolExecutor

import pytest

from kuprobe.crosscheck import SCENARIOS, ObservedEvent
from kuprobe.crosscheck._kmod import call
from kuprobe.crosscheck._kprobes import kmod_target, kprobe_acceptance
from kuprobe.crosscheck.spec import NEEDS_KPROBES

pytestmark = [
    pytest.mark.vm,
    pytest.mark.arches("x86_64"),
    pytest.mark.usefixtures("no_leftovers"),
]

KPROBE_SCENARIOS = [name for name, s in SCENARIOS.items() if s.needs == NEEDS_KPROBES]


def test_the_kprobe_corpus() -> None:
    assert len(KPROBE_SCENARIOS) >= 12
    assert all(SCENARIOS[n].arches == ("x86_64",) for n in KPROBE_SCENARIOS)


def test_the_module_runs_its_functions() -> None:
    """Loaded (insmod) and called through /proc/kuprobe_kmod; its code read back as it runs
    (the fentry call patched to a NOP, returns to ret + int3 padding)."""
    target = kmod_target()
    assert call("kk_add", 3, -5) == -2
    assert call("kk_rec", 10) == 55
    assert call("kk_jt", 4, 5) == 5 ^ 0x55
    _addr, code = target.image.function("kk_add")
    assert code[:5] == bytes.fromhex("0f1f440000")  # ftrace_module_init(): the nop5
    with pytest.raises(OSError) as e:
        call("kk_nothing")
    assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("name", KPROBE_SCENARIOS)
def test_kprobe_scenario_agrees(name: str) -> None:
    result = SCENARIOS[name].run("x86_64")
    assert result.differences == []
    assert result.model == result.live
    assert any(f.endswith(" hits") for f in result.live)


def test_maxactive_counts_nmissed() -> None:
    """kk_rec(5): six activations in flight, maxactive 2: 4 missed on both sides; the two
    outermost returns seen, innermost first."""
    result = SCENARIOS["k-kretprobe-maxactive"].run("x86_64")
    assert result.live["kk_rec nmissed"] == 4
    events = result.live["handler events, in order"]
    assert isinstance(events, tuple)
    assert events[:2] == (
        ObservedEvent("kk_rec return", (10,)),
        ObservedEvent("kk_rec return", (15,)),
    )


def test_sleeping_tasks_miss_as_nested_calls_do() -> None:
    """maxactive with tasks asleep inside the function (kk_sleep: msleep()) on the live
    kernel, and the same count of activations in flight at once as recursion in the model
    (which runs no scheduler): the kernel's rule is one, instances in use
    (kernel/kprobes.c: pre_handler_kretprobe(): no free instance, nmissed++)."""
    from kuprobe import Kretprobe, register_kretprobe, unregister_kretprobe
    from kuprobe.model import Machine

    tasks, maxactive = 5, 2
    live = Kretprobe(symbol_name="kk_sleep", maxactive=maxactive)
    register_kretprobe(live)
    try:
        with ThreadPoolExecutor(tasks) as pool:  # all asleep at once: 2 s each
            assert list(pool.map(lambda _: call("kk_sleep", 2000), range(tasks))) == [2000] * 5
    finally:
        unregister_kretprobe(live)
    machine = Machine.load(kmod_target().elf, space="kernel", strict=True, semantics="today")
    model = Kretprobe(symbol_name="kk_rec", maxactive=maxactive)
    machine.register_kretprobe(model)
    assert machine.call("kk_rec", tasks - 1) == sum(range(tasks))  # tasks activations nested
    machine.unregister_kretprobe(model)
    assert (live.hits, live.nmissed) == (model.hits, model.nmissed) == (2, 3)


def test_kprobe_instruction_acceptance_over_the_opcode_map() -> None:
    """Every encoding of crosscheck.acceptance (one-, two- and three-byte maps, groups,
    special prefixes, VEX and EVEX) as its own function of the module (kk_insns.S, generated):
    register_kprobe() at kk_insn_N+5 on the live kernel (a tracefs kprobe event) against the
    model (kuprobe.model.arch.x86_kprobe.kprobe_refuses(), with the running kernel's rules),
    agreeing on every one. What the kernel refuses: far/indirect-through-memory call and jmp
    and iret (prepare_emulation(): -EOPNOTSUPP), mov ss and int3 (__copy_instruction():
    -EINVAL), encodings its decoder does not know (FMA4, the EVEX-only 66 forms of SHA:
    -EINVAL), and VEX/EVEX forms whose opcode byte is one of those (the kernel reads
    insn->opcode.bytes[0] whatever the encoding)."""
    verdicts = kprobe_acceptance()
    assert len(verdicts) > 1500
    differ = [v for v in verdicts if not v.agree]
    wrong = [f"{v.code.hex(' ')} ({v.text}): model {v.model}, kernel {v.live}" for v in differ]
    assert not wrong, "\n".join(wrong)
