"""Memory at the hit on kprobes (where kprobes exist: `kuprobe vm test`): a user string and a
kernel struct read by the BPF program when do_sys_openat2 is entered."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
import subprocess
import sys

import pytest

from kuprobe import (
    Capture,
    Kprobe,
    PtRegs,
    copy_from_kernel_nofault,
    current,
    register_kprobe,
    regs_get_kernel_argument,
    strncpy_from_user,
    unregister_kprobe,
)
from kuprobe.stacks import stack_trace_save, symbolize_kernel

from .conftest import syscall_symbol

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("no_leftovers")]
OPEN = "do_sys_openat2"  # fs/open.c: (int dfd, const char __user *filename, struct open_how *)
libc = ctypes.CDLL(None, use_errno=True)


def test_user_string_and_kernel_struct_at_the_hit() -> None:
    me = os.getpid()
    path = f"/nonexistent/kuprobe-mem-{me}".encode()
    buf = ctypes.create_string_buffer(path)
    seen: list[tuple[bytes, int, int]] = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        if current().tgid == me and regs_get_kernel_argument(regs, 1) == ctypes.addressof(buf):
            name = strncpy_from_user(regs_get_kernel_argument(regs, 1), 256)
            flags, mode, _resolve = struct.unpack(
                "<QQQ", copy_from_kernel_nofault(regs_get_kernel_argument(regs, 2), 24)
            )
            seen.append((name, flags & os.O_CLOEXEC, mode))
        return 0

    kp = Kprobe(
        symbol_name=OPEN,
        pre_handler=pre,
        capture=(Capture("arg1"), Capture("arg2", kind="buf", size=24, space="kernel")),
    )
    register_kprobe(kp)
    try:
        for _ in range(5):
            assert libc.open(buf, os.O_RDONLY | os.O_CLOEXEC) == -1
    finally:
        unregister_kprobe(kp)
    assert seen == [(path, os.O_CLOEXEC, 0)] * 5
    assert kp.handler_errors == 0


def test_trace_spec_reads_the_file_name() -> None:
    me = os.getpid()
    path = f"/nonexistent/kuprobe-trace-{me}"
    trace = subprocess.Popen(
        [sys.executable, "-m", "kuprobe", "trace", "--json", f"k:{OPEN} arg1:str"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert trace.stderr is not None
    assert trace.stderr.readline().startswith("Tracing 1 probe(s)")
    for _ in range(3):
        with contextlib.suppress(FileNotFoundError):
            open(path).close()
    trace.send_signal(2)
    out, err = trace.communicate(timeout=60)
    assert trace.returncode == 0, err
    names = [json.loads(line)["values"].get("arg1:str") for line in out.splitlines()[:-1]]
    assert names.count(path) == 3


# A kernel function below the syscall wrapper on each guest: arch/x86/entry/common.c:
# do_syscall_64(); arch/arm64/kernel/entry-common.c: el0_svc() (invoke_syscall() and
# el0_svc_common() are inlined or renamed by the compiler).
SYSCALL_CALLER = {"x86_64": "do_syscall_64", "arm64": "el0_svc"}


def test_kernel_stack_symbolized(guest_arch: str) -> None:
    """A kprobe with stack=True: the kernel stack at the hit, named by kallsyms."""
    me = os.getpid()
    stacks: list[list[str | None]] = []

    def pre(p: Kprobe, regs: PtRegs) -> int:
        if current().tgid == me:
            stacks.append([f.symbol for f in symbolize_kernel(stack_trace_save())])
        return 0

    wrapper = syscall_symbol("getpgid")
    kp = Kprobe(symbol_name=wrapper, pre_handler=pre, stack=True)
    register_kprobe(kp)
    try:
        for _ in range(3):
            os.getpgid(0)
    finally:
        unregister_kprobe(kp)
    assert len(stacks) == 3
    for names in stacks:
        assert names[0] == wrapper
        assert SYSCALL_CALLER[guest_arch] in names
