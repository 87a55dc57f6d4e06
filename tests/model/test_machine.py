"""The emulator and Machine API (issue 3, items 1-2)."""

from __future__ import annotations

import errno

import pytest

from kuprobe import Kprobe, ProbeError, current
from kuprobe.errors import KuprobeValueError, OutsideHandlerError
from kuprobe.model import Machine, ModelError
from kuprobe.model.arch import get_arch
from kuprobe.regs import PtRegs

from .bare import count_insns


def test_arch_and_task_come_from_the_elf(user: Machine, arch: str) -> None:
    assert user.arch == arch
    assert user.space == "user"
    assert user.task.comm == "target-static"
    assert user.task.pid == user.task.tgid


@pytest.mark.parametrize(
    ("func", "args"),
    [("add", (2, 3)), ("add", (-7, 2)), ("fib", (12,)), ("loop_sum", (100,)), ("sw", (5,)),
     ("sw", (99,)), ("table_sum", (17,)), ("calls", (6,)), ("midpoint", (-3,))],
)  # fmt: skip
def test_call_matches_a_bare_emulator(
    user: Machine, funcs: str, arch: str, func: str, args: tuple[int, ...]
) -> None:
    expected, _ = count_insns(funcs, arch, func, *args)
    assert user.call(func, *args) == expected


def test_call_by_address(user: Machine) -> None:
    assert user.call(user.symbol_address("add"), 40, 2) == 42


def test_unknown_symbol_is_enoent(user: Machine) -> None:
    with pytest.raises(ProbeError) as e:
        user.symbol_address("no_such_function")
    assert e.value.errno == errno.ENOENT


def test_leaving_mapped_code_is_a_clear_error(kernel: Machine) -> None:
    with pytest.raises(ModelError, match="left mapped code"):
        kernel.call(0x5000)


def test_running_past_the_bound_is_a_clear_error(user: Machine) -> None:
    with pytest.raises(ModelError, match="bound of 1000 instructions"):
        user.call("loop_sum", 10**9, max_insns=1000)
    assert user.call("add", 1, 2) == 3  # the Machine goes on working


def test_handlers_may_call_functions_nested(kernel: Machine) -> None:
    """Handlers run outside the emulator loop: a handler can run code, as kernel ones do."""
    got = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        got.append(kernel.call("fib", 10))
        return 0

    kp = Kprobe(symbol_name="loop_sum", pre_handler=pre)
    kernel.register_kprobe(kp)
    assert kernel.call("loop_sum", 5) == kernel.call("loop_sum", 5)
    kernel.unregister_kprobe(kp)
    assert got == [55, 55]


def test_current_inside_a_handler_is_the_machines_task(kernel: Machine) -> None:
    seen = []
    kp = Kprobe(symbol_name="add", pre_handler=lambda p, r: seen.append(current()) or 0)
    kernel.register_kprobe(kp)
    kernel.call("add", 1, 1)
    kernel.unregister_kprobe(kp)
    assert seen == [kernel.task]
    with pytest.raises(OutsideHandlerError, match="only defined inside a probe handler"):
        current()


def test_copy_from_user_and_not_present_pages(user: Machine) -> None:
    user.map(0x5000000, 0x2000, present=False)
    assert not user.present(0x5000000)
    assert user.copy_from_user(0x5000FF0, 0x20) == bytes(0x20)  # faults in both pages
    assert user.present(0x5000000) and user.present(0x5001000)
    with pytest.raises(ProbeError) as e:
        user.copy_from_user(0x6000000, 4)
    assert e.value.errno == errno.EFAULT


def test_code_touching_a_not_present_page_faults_it_in(muser: Machine) -> None:
    muser.map(0x5000000, 0x1000, present=False)
    assert muser.call("model_store", 0x5000010, 77) == 77
    assert muser.call("model_load", 0x5000010) == 77
    assert any(e.kind == "fault" and e.addr == 0x5000010 for e in muser.trace)


def test_a_bad_user_access_is_sigsegv(muser: Machine) -> None:
    from kuprobe.model import ProcessSignalled

    with pytest.raises(ProcessSignalled) as e:
        muser.call("model_load", 0x6000000)
    assert e.value.signo == 11
    assert muser.call("add", 1, 2) == 3


def test_a_user_call_leaving_mapped_code_is_a_clear_error(user: Machine) -> None:
    from kuprobe.model import ProcessSignalled

    with pytest.raises(ProcessSignalled, match="left mapped code at 0x5000"):
        user.call(0x5000)


def test_a_raising_handler_is_counted_and_the_run_goes_on(kernel: Machine) -> None:
    def pre(p: Kprobe, regs: PtRegs) -> int:
        raise ValueError("boom")

    kp = Kprobe(symbol_name="add", pre_handler=pre)
    kernel.register_kprobe(kp)
    assert kernel.call("add", 1, 2) == 3
    kernel.unregister_kprobe(kp)
    assert kp.handler_errors == 1
    assert isinstance(kernel.errors[0][1], ValueError)


def test_trace_lists_every_trap_in_order(kernel: Machine) -> None:
    kp = Kprobe(symbol_name="add", post_handler=lambda p, r, f: None)
    kernel.register_kprobe(kp)
    kernel.call("add", 1, 2)
    kernel.unregister_kprobe(kp)
    kinds = [e.kind for e in kernel.trace]
    # x86 (v5.13 on): the int3 after the slot ends the step; arm64 reports its step-done BRK
    # as the debug trap
    step_done = ["breakpoint", "ss_int3"] if kernel.arch != "arm64" else ["debug"]
    assert kinds == ["register", "breakpoint", "kprobe", "singlestep", *step_done, "ssdone",
                     "post", "unregister"]  # fmt: skip
    assert [e.seq for e in kernel.trace] == sorted(e.seq for e in kernel.trace)
    assert "HIT_ACTIVE" in str(kernel.trace[2])


def test_strict_machines_fail_the_call_with_the_handlers_exception(funcs: str) -> None:
    k = Machine.load(funcs, space="kernel", strict=True)

    def pre(p: Kprobe, regs: PtRegs) -> int:
        raise AssertionError("handler logic is wrong")

    kp = Kprobe(symbol_name="add", pre_handler=pre)
    k.register_kprobe(kp)
    with pytest.raises(AssertionError, match="handler logic"):
        k.call("add", 1, 2)
    assert k.kprobe_status == "NONE"
    k.unregister_kprobe(kp)
    assert k.call("add", 1, 2) == 3


def test_a_pie_runs_at_elf_et_dyn_base(targets: object, arch: str) -> None:
    """load_elf_binary(): an ET_DYN file is placed at ELF_ET_DYN_BASE; its self-contained
    functions run, and a uprobe (inode, offset) on it hits there."""
    from kuprobe import Uprobe, UprobeConsumer

    pie = f"{targets}/{arch}/target"
    m = Machine.load(pie)
    assert m.image.is_pie and m.load_bias == m.hooks.ELF_ET_DYN_BASE
    assert m.symbol_address("add") == m.load_bias + m.image.symbol("add").value
    static = Machine.load(f"{targets}/{arch}/target-static")
    up = Uprobe(pie, symbol_name="table_sum", consumer=UprobeConsumer(handler=lambda u, r: 0))
    m.register_uprobe(up)
    assert m.call("calls", 5) == static.call("calls", 5) == 101
    m.unregister_uprobe(up)
    assert up.hits == 1  # another file (another inode): the static Machine is not probed


def test_bad_arguments_are_kuprobe_value_errors(funcs: str) -> None:
    with pytest.raises(KuprobeValueError, match="space must be"):
        Machine.load(funcs, space="hypervisor")
    with pytest.raises(KuprobeValueError, match="kretprobe_trampoline must be"):
        Machine.load(funcs, space="kernel", kretprobe_trampoline="none")
    with pytest.raises(KuprobeValueError, match="the model has no mips arch"):
        get_arch("mips")
