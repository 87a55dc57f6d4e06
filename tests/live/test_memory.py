"""Memory at the hit (kuprobe/uaccess.py, Capture): read by the BPF program when the probe
fires, handed to handlers' copy_from_user() and friends; the model answers the same calls
from its emulated memory. Targets: tests/targets/strings.c, 64- and 32-bit."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest

from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
from kuprobe.errors import OutsideHandlerError, ProbeError
from kuprobe.probes import Capture
from kuprobe.regs import PtRegs, regs_return_value, user_argument
from kuprobe.uaccess import copy_from_user, strncpy_from_user

from .helpers import KUPROBE, Waiting, trace_while

pytestmark = pytest.mark.live
ARCHES = ["x86_64", "i386"]
NAMES = ["alpha", "beta", "gamma"]


def take_handler(seen: list[object]) -> UprobeConsumer:
    """take(i, s): the string at s, 4 bytes of it at s+2, and what an unread place says.
    The same handler runs live and in the model."""

    def handler(_uc: UprobeConsumer, regs: PtRegs) -> int:
        i, s = user_argument(regs, 0), user_argument(regs, 1)
        try:
            seen.append((i, strncpy_from_user(s, 64), copy_from_user(s + 2, 4)))
        except ProbeError as e:
            seen.append((i, e.errno, str(e)))
        return 0

    return UprobeConsumer(handler=handler)


def name_handler(seen: list[object]) -> UprobeConsumer:
    def ret(_uc: UprobeConsumer, _func: int, regs: PtRegs) -> int:
        seen.append(strncpy_from_user(regs_return_value(regs), 16))
        return 0

    return UprobeConsumer(ret_handler=ret)


@pytest.mark.parametrize("arch", ARCHES)
def test_strings_and_buffers_read_at_the_hit(live: Path, arch: str) -> None:
    exe = live / arch / "strings"
    t = Waiting(exe, 100)
    seen: list[object] = []
    names: list[object] = []
    take = Uprobe(
        str(exe),
        symbol_name="take",
        consumer=take_handler(seen),
        pid=t.pid,
        capture=(Capture("arg1", size=32),),  # i386: a cdecl stack word
    )
    name = Uprobe(
        str(exe),
        symbol_name="name_of",
        consumer=name_handler(names),
        pid=t.pid,
        capture=(Capture("retval", size=16),),
    )
    try:
        register_uprobe(take)
        register_uprobe(name)
        assert t.go().strip() == "strings 100"
    finally:
        t.kill()
        unregister_uprobe(take)
        unregister_uprobe(name)
    assert take.handler_errors == 0 and name.handler_errors == 0
    mask = (1 << (64 if arch == "x86_64" else 32)) - 1
    assert seen[:100] == [(i, f"item-{i}".encode(), f"item-{i}".encode()[2:6]) for i in range(100)]
    last = seen[100]
    assert isinstance(last, tuple) and len(last) == 3
    assert (last[0] & mask, last[1]) == (mask, errno.EFAULT)  # take(-1, 16): nothing mapped
    assert "failed at the hit" in last[2] and "0x10" in last[2]
    assert names == [NAMES[k % 3].encode() for k in range(100)]


def test_a_read_of_what_was_not_captured_is_an_error(live: Path) -> None:
    exe = live / "x86_64" / "strings"
    t = Waiting(exe, 3)
    errors: list[str] = []

    def handler(_uc: UprobeConsumer, regs: PtRegs) -> int:
        s = user_argument(regs, 1)
        for read in (lambda: copy_from_user(s + 64, 8), lambda: copy_from_user(s, 64)):
            try:
                read()
            except ProbeError as e:
                errors.append(f"{e.errno} {e}")
        return 0

    captured = Uprobe(
        str(exe),
        symbol_name="take",
        consumer=UprobeConsumer(handler=handler),
        pid=t.pid,
        capture=(Capture("arg1", kind="buf", size=16),),
    )
    bare_errors: list[str] = []

    def bare_handler(_uc: UprobeConsumer, regs: PtRegs) -> int:
        try:
            copy_from_user(user_argument(regs, 1), 1)
        except ProbeError as e:
            bare_errors.append(str(e))
        return 0

    bare = Uprobe(
        str(exe), symbol_name="take", consumer=UprobeConsumer(handler=bare_handler), pid=t.pid
    )
    try:
        register_uprobe(captured)
        register_uprobe(bare)
        t.go()
    finally:
        t.kill()
        unregister_uprobe(captured)
        unregister_uprobe(bare)
    assert len(errors) == 8  # 4 calls, two reads each beyond the 16 captured bytes
    assert all(e.startswith(f"{errno.EFAULT} ") and "not captured" in e for e in errors[:6])
    assert len(bare_errors) == 4 and all("captured no memory" in e for e in bare_errors)
    with pytest.raises(OutsideHandlerError):
        copy_from_user(0x1000, 1)  # outside a handler


def test_the_model_answers_the_same_calls(targets: Path) -> None:
    from kuprobe.model import Machine

    exe = targets / "x86_64" / "strings-static"
    m = Machine.load(str(exe), strict=True)
    seen: list[object] = []
    names: list[object] = []
    take = Uprobe(str(exe), symbol_name="take", consumer=take_handler(seen))
    name = Uprobe(str(exe), symbol_name="name_of", consumer=name_handler(names))
    m.register_uprobe(take)
    m.register_uprobe(name)
    beta = m.call("name_of", 1)
    m.call("take", 7, beta)
    m.call("take", -1, 16)
    assert names == [b"beta"]
    assert seen[0] == (7, b"beta", b"ta\0g")  # the model reads on: "beta\0gamma"
    assert seen[1][1] == errno.EFAULT  # type: ignore[index]


def test_trace_prints_strings_buffers_and_faults(live: Path) -> None:
    exe = (live / "x86_64" / "strings").resolve()
    t = Waiting(exe, 5)
    ran, out = trace_while(
        t,
        "--json",
        f"u:{exe}:take arg0 arg1:str arg1+2:buf4",
        f"ur:{exe}:name_of retval:str",
        probes=2,
    )
    assert ran.strip() == "strings 5"
    objs = [json.loads(line) for line in out.splitlines()[:-1]]
    takes = [o["values"] for o in objs if o["probe"] == "u:strings:take"]
    assert takes[:5] == [
        {"arg0": i, "arg1:str": f"item-{i}", "arg1+2:buf4": f"item-{i}".encode()[2:6].hex()}
        for i in range(5)
    ]
    assert takes[5]["arg0"] == -1
    assert takes[5]["arg1:str"] == {"fault": "unreadable at the hit: 0x10"}
    rets = [o["values"]["retval:str"] for o in objs if o["probe"] == "ur:strings:name_of"]
    assert rets == [NAMES[i % 3] for i in range(5)]
    text = subprocess.run(
        [str(KUPROBE), "trace", "k:do_sys_openat2 arg1:str", "--help"],
        capture_output=True,
        text=True,
    ).stdout
    assert "arg1:str" in text and "retval:str" in text
