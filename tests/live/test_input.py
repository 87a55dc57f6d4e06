"""Bad input to a live uprobe reaches the user as a ProbeError with the kernel's errno, never
a traceback, a hang, or a probe inside an instruction."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pytest

from kuprobe import ProbeError, Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
from kuprobe.elf import ElfImage
from kuprobe.regs import PtRegs

from .helpers import Target, counting, file_offset_of

pytestmark = pytest.mark.live


def refused(up: Uprobe) -> ProbeError:
    with pytest.raises(ProbeError) as e:
        register_uprobe(up)
    assert not up.registered
    return e.value


def arm_and_disarm(up: Uprobe) -> None:
    register_uprobe(up)
    unregister_uprobe(up)


def test_symbol_of_size_zero_plus_offset_is_decoded(live: Path) -> None:
    """_init has st_size 0: its +1 is inside its first instruction (endbr64 or sub)."""
    exe = live / "x86_64" / "target"
    e = refused(Uprobe(str(exe), symbol_name="_init", offset=1))
    assert e.errno == errno.EILSEQ and "unsafe=True" in (e.hint or "")
    arm_and_disarm(Uprobe(str(exe), symbol_name="_init", offset=1, unsafe=True))


def test_raw_offset_in_stripped_file_is_decoded_from_eh_frame(live: Path) -> None:
    exe = live / "x86_64" / "target"
    stripped = live / "x86_64" / "target-stripped"
    with ElfImage(str(stripped)) as elf:
        assert "add" not in elf.symbols  # only .eh_frame tells where add starts
    off = file_offset_of(exe, "add")
    assert exe.read_bytes()[off : off + 16] == stripped.read_bytes()[off : off + 16]
    e = refused(Uprobe(str(stripped), offset=off + 1))
    assert e.errno == errno.EILSEQ
    calls: list[int] = []
    up = Uprobe(str(stripped), offset=off, consumer=UprobeConsumer(counting(calls)))
    t = Target(stripped, "add", 7, 1)
    register_uprobe(up)
    try:
        t.go()
    finally:
        unregister_uprobe(up)
    assert up.hits == 7 and len(calls) == 7


def test_truncated_and_corrupt_elf(live: Path, tmp_path: Path) -> None:
    exe = live / "x86_64" / "target"
    data = exe.read_bytes()
    short = tmp_path / "short"
    short.write_bytes(data[:3000])
    bad = tmp_path / "bad"
    b = bytearray(data)
    b[0x28:0x30] = (len(data) * 4).to_bytes(8, "little")  # e_shoff far past the end
    bad.write_bytes(bytes(b))
    for path in (short, bad):
        for up in (Uprobe(str(path), symbol_name="add"), Uprobe(str(path), offset=0x1000)):
            e = refused(up)
            assert e.errno in (errno.ENOEXEC, errno.ENOENT, errno.EINVAL), e


def test_long_path_fifo_bytes_path(live: Path, tmp_path: Path) -> None:
    e = refused(Uprobe("/tmp/" + "x" * 5000, symbol_name="add"))
    assert e.errno == errno.ENAMETOOLONG and len(str(e)) < 400
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def reg() -> None:
        try:
            register_uprobe(Uprobe(str(fifo), symbol_name="add"))
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=reg, daemon=True)
    th.start()
    th.join(10)
    if th.is_alive():  # unblock it: open the FIFO's other end
        with open(fifo, "wb"):
            pass
        pytest.fail("register_uprobe() blocked on a FIFO")
    assert isinstance(errors[0], ProbeError) and errors[0].errno == errno.EINVAL
    exe = live / "x86_64" / "target"
    copy = tmp_path / "target"
    shutil.copy(exe, copy)
    arm_and_disarm(Uprobe(os.fsencode(copy), symbol_name="add"))  # type: ignore[arg-type]


def test_handler_that_is_not_callable_is_refused(live: Path) -> None:
    exe = live / "x86_64" / "target"
    e = refused(Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(handler=42)))  # type: ignore[arg-type]
    assert e.errno == errno.EINVAL and "handler" in str(e)

    def ok(uc: UprobeConsumer, regs: PtRegs) -> int:
        return 0

    e = refused(
        Uprobe(str(exe), symbol_name="add", consumer=UprobeConsumer(ok, ret_handler="x"))  # type: ignore[arg-type]
    )
    assert "ret_handler" in str(e)
