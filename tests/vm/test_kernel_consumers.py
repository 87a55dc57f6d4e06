"""Kernel-side consumers (kuprobe/targets/kmod/kk_probes.c) in the x86_64 guest against the
model's (kuprobe/crosscheck/kconsumers.py), record by record: post_handler's flags and ip
after a stepped and an emulated instruction, kretprobe entry and return handlers, handlers
that fault on a bad user address, and nmissed when a handler calls a probed function."""

from __future__ import annotations

import errno

import pytest

from kuprobe.crosscheck.kconsumers import (
    KCONSUMER_SCENARIOS,
    Record,
    differences,
    run_live,
    run_model,
)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.arches("x86_64"),
    pytest.mark.usefixtures("no_leftovers"),
]


def _both(name: str) -> tuple[dict[str, object], dict[str, object]]:
    s = KCONSUMER_SCENARIOS[name]
    live = run_live(s)
    model = run_model(s)
    assert differences(model, live) == []
    assert model == live
    return model, live


def _records(obs: dict[str, object]) -> tuple[Record, ...]:
    records = obs["records, in order"]
    assert isinstance(records, tuple)
    return records


@pytest.mark.parametrize("name", sorted(KCONSUMER_SCENARIOS))
def test_kernel_consumers_agree(name: str) -> None:
    _model, live = _both(name)
    assert _records(live), "no handler ran"


def test_post_handler_sees_the_next_instruction_and_flags_0() -> None:
    """kprobe_post_process() (arch/x86/kernel/kprobes/core.c): post_handler(p, regs, 0)
    with ip past the stepped lea; the pre_handler sees ip = addr + 1 (the int3)."""
    _model, live = _both("pre-post-plain")
    pre, post = [r for r in _records(live) if r.probe == 1]
    assert pre.ip == "kk_args6+0x6" and post.flags == 0
    assert post.ip.startswith("kk_args6+") and post.ip != pre.ip


def test_post_handler_after_an_emulated_call_sees_its_target() -> None:
    """prepare_emulation() (v5.13 on): a call is emulated (int3_emulate_call()), and
    kprobe_post_process() runs the post_handler with ip at the callee."""
    _model, live = _both("post-emulated-vs-stepped")
    post = next(r for r in _records(live) if r.probe == 0 and r.kind == "post")
    assert post.ip == "kk_add+0x0"


def test_a_fault_in_a_handler_is_fixed_up_and_the_handler_goes_on() -> None:
    """6.1: no fault_handler (register refuses one: EOPNOTSUPP); a fault in a pre/post or
    kretprobe handler is fixed up by the exception table (get_user() -> -EFAULT), nmissed
    unchanged (kprobe_fault_handler() acts only while single-stepping)."""
    _model, live = _both("fault-in-handler")
    faults = [r for r in _records(live) if r.result]
    assert faults and all(r.result == -errno.EFAULT for r in faults)
    assert {r.kind for r in faults} == {"pre", "post", "entry", "ret"}
    assert [v for k, v in live.items() if k.endswith("refused (errno)")] == [errno.EOPNOTSUPP]
    assert all(v == 0 for k, v in live.items() if k.endswith("nmissed"))


def test_a_probe_hit_inside_a_handler_is_missed() -> None:
    """kernel/kprobes.c: a kprobe hit while another's handler runs goes through
    reenter_kprobe() (arch/x86) or kprobe_ftrace_handler()'s kprobe_running() branch:
    nmissed++, no handler."""
    _model, live = _both("reentry-nmissed")
    nmissed = {k.split(" (")[0]: v for k, v in live.items() if k.endswith("nmissed")}
    assert isinstance(nmissed["probe 1"], int)
    assert nmissed["probe 1"] >= 3  # kk_add from pre_handler, ret handler, ftrace pre
    records = _records(live)
    assert any(r.probe == 1 and r.args[:2] == (2, 3) for r in records)  # kk_caller's own call
