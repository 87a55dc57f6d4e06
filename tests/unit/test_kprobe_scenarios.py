"""The kprobe kind of scenario (tests/scenarios/k-*.toml) as data, and the module image the
model runs, without a kernel that has kprobes (the scenarios themselves run in the x86_64
guest: tests/vm/test_crosscheck_kprobes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kuprobe import Kprobe, PtRegs, regs_get_kernel_argument
from kuprobe.crosscheck import SCENARIOS
from kuprobe.crosscheck._kmod import ModuleImage
from kuprobe.crosscheck.spec import NEEDS_KPROBES, ScenarioError, parse
from kuprobe.model import Machine

GOOD: dict[str, Any] = {
    "description": "d",
    "probe": [{"kind": "kprobe", "symbol": "kk_add", "args": 2, "name": "add"}],
    "call": [{"func": "kk_add", "args": [1, 2]}, {"disable": "add"}],
}


def test_a_kprobe_scenario_needs_kprobes_and_runs_in_the_vm() -> None:
    spec = parse("k", GOOD)
    assert (spec.needs, spec.side, spec.arches, spec.program) == (
        NEEDS_KPROBES, "vm", ("x86_64",), "kuprobe_kmod"
    )  # fmt: skip
    assert [c.label for c in spec.calls] == ["kk_add(1, 2)", "disable_kprobe(add)"]
    user = parse("u", {**GOOD, "probe": [{"symbol": "add"}], "call": GOOD["call"][:1]})
    assert (user.needs, user.side) == ("", "host")


def test_the_corpus_has_kprobe_scenarios() -> None:
    kernel = [s for s in SCENARIOS.values() if s.needs == NEEDS_KPROBES]
    assert len(kernel) >= 12
    assert all(s.arches == ("x86_64",) for s in kernel)


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ({"kind": "kprobe", "symbol": "kk_add", "pid": "other"}, "'pid' is for uprobes"),
        ({"kind": "kprobe", "symbol": "kk_add", "ret": True}, "ret: a kretprobe"),
        ({"kind": "kretprobe", "symbol": "kk_add", "offset": 5}, "goes on a function's entry"),
        ({"kind": "uprobe", "symbol": "add", "maxactive": 2}, "'maxactive' is for kprobe kinds"),
        ({"kind": "kprobe", "symbol": "kk_add", "one_at_a_time": True}, "goes with every_insn"),
        ({"kind": "kprobes", "symbol": "kk_add"}, "kind is one of"),
        ({"kind": "kretprobe", "symbol": "kk_add", "data_size": 4}, "at least 8 bytes"),
    ],
)
def test_a_bad_kprobe_is_refused(probe: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse("bad", {**GOOD, "probe": [probe], "call": GOOD["call"][:1]})


def test_mixing_kinds_or_arches_is_refused() -> None:
    mixed = [*GOOD["probe"], {"symbol": "add", "name": "user add"}]
    with pytest.raises(ScenarioError, match="do not mix"):
        parse("bad", {**GOOD, "probe": mixed})
    with pytest.raises(ScenarioError, match="run the test module"):
        parse("bad", {**GOOD, "arches": ["i386"]})
    with pytest.raises(ScenarioError, match="names no kprobe"):
        parse("bad", {**GOOD, "call": [{"enable": "nothing"}]})


def test_the_model_runs_code_at_a_module_address(tmp_path: Path) -> None:
    """A module's text at its kernel address (0xffffffffc0…): the ELF the guest writes,
    read back, run and probed by the model (arguments per the kernel ABI)."""
    base = 0xFFFFFFFFC0201000
    code = bytes.fromhex("0f1f440000488d0437c3cccccccc")  # nop5; lea (%rdi,%rsi); ret
    image = ModuleImage(
        pages={base: (code.ljust(0x1000, b"\xcc"), 5)}, symbols={"kk_add": (base, 10)}
    )
    elf = tmp_path / "kmod.elf"
    image.write_elf(elf)
    again = ModuleImage.from_elf(elf)
    assert again.function("kk_add") == (base, code[:10])
    m = Machine.load(elf, space="kernel", strict=True, semantics="today")
    seen: list[tuple[int, int]] = []

    def pre(_p: Kprobe, regs: PtRegs) -> int:
        seen.append((regs_get_kernel_argument(regs, 0), regs_get_kernel_argument(regs, 1)))
        return 0

    kp = Kprobe(symbol_name="kk_add", offset=5, pre_handler=pre)
    m.register_kprobe(kp)
    assert m.call("kk_add", 3, 4) == 7
    m.unregister_kprobe(kp)
    assert seen == [(3, 4)] and kp.hits == 1
