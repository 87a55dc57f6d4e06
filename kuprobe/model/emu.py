"""The emulator shim over Unicorn: memory, registers, running code, traps and faults.

This is the only module that imports unicorn. It knows nothing about probes: the Machine
gives it two callbacks, one for a CPU exception (``int3``, the single-step trap …) and one
for an access to memory that is not mapped, and both run synchronously inside the emulation,
so they may change registers, map memory, or run more code (nested :meth:`Emu.run`), as a
kernel trap handler may.

An arch names its Unicorn arch, mode and registers as data (``uc_arch = "X86"``,
``uc_regs = {"ax": "RAX", …}``); the constants are looked up here, so a new arch needs no
change to this file.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import unicorn as _unicorn
from unicorn import arm64_const, x86_const

from kuprobe.errors import KuprobeError

# Unicorn's bindings are only partly typed: use them as Any, checked by the tests.
unicorn: Any = _unicorn
try:  # the C library itself: one batch call per trap instead of ~20 Python-level reads
    from unicorn.unicorn_py3.unicorn import uclib as _uclib

    _UCLIB: Any = _uclib
except ImportError:  # another binding layout: the (slower) public API still works
    _UCLIB = None

PAGE_SIZE = 0x1000
# Reads up to this size (an instruction, the stack words of a hit) go through one buffer
_SCRATCH_BYTES = 256
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
PROT_ALL = PROT_READ | PROT_WRITE | PROT_EXEC

# Unicorn's register constants per Unicorn arch (the arch file gives the names).
_CONST_MODULES: dict[str, Any] = {"X86": x86_const, "ARM64": arm64_const}
_REG_PREFIX = {"X86": "UC_X86_REG_", "ARM64": "UC_ARM64_REG_"}
_PERMS = {
    PROT_READ: unicorn.UC_PROT_READ,
    PROT_WRITE: unicorn.UC_PROT_WRITE,
    PROT_EXEC: unicorn.UC_PROT_EXEC,
}
# The kinds of access the unmapped-memory callback reports.
_ACCESS = {
    unicorn.UC_MEM_READ_UNMAPPED: "read",
    unicorn.UC_MEM_WRITE_UNMAPPED: "write",
    unicorn.UC_MEM_FETCH_UNMAPPED: "fetch",
    unicorn.UC_MEM_READ_PROT: "read",
    unicorn.UC_MEM_WRITE_PROT: "write",
    unicorn.UC_MEM_FETCH_PROT: "fetch",
}

InterruptCallback = Callable[[int], None]
# (access "read"|"write"|"fetch", address, size) -> True: retry the access (memory was mapped)
UnmappedCallback = Callable[[str, int, int], bool]


class EmuError(KuprobeError):
    """The emulated CPU stopped on something nobody handled (bad fetch, bad access …)."""

    def __init__(self, message: str, *, pc: int = 0) -> None:
        super().__init__(message)
        self.pc = pc


# Unicorn runs x86-64 code with paging off: a virtual address is used as a physical one. Since
# Unicorn 2.1 it is cut to the CPU's 52 physical-address bits (2.0 keeps all 64): a kernel
# address (0xffff…) is then mapped, read and written at its low 52 bits, while code runs at
# (and pushes, and computes) the canonical one; the unmapped-access callback hears the cut
# address and gets the canonical one back. Which one this Unicorn does is tried once.
_X86_64_PHYS_BITS = 52
_x86_64_phys_mask: int | None = None


def _x86_64_kernel_phys_mask() -> int:
    """-1 if this Unicorn fetches a kernel address mapped as it is, else the 52-bit mask."""
    global _x86_64_phys_mask
    if _x86_64_phys_mask is None:
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        probe = 0xFFFFFFFFC0000000
        uc.mem_map(probe, PAGE_SIZE)
        uc.mem_write(probe, b"\x90")  # nop
        try:
            uc.emu_start(probe, probe + 1)
            _x86_64_phys_mask = -1
        except unicorn.UcError:
            _x86_64_phys_mask = (1 << _X86_64_PHYS_BITS) - 1
    return _x86_64_phys_mask


def page_floor(addr: int) -> int:
    return addr & ~(PAGE_SIZE - 1)


def page_ceil(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Emu:
    """One emulated CPU and its memory."""

    def __init__(self, mode: tuple[str, str], uc_arch: str, regs: Mapping[str, str | None]) -> None:
        """``mode``: the names of (UC_ARCH_*, UC_MODE_*), from kuprobe.arch's record;
        ``uc_arch``: which of Unicorn's register-constant modules names ``regs`` (pt_regs
        field -> Unicorn register name)."""
        uc_mode = (getattr(unicorn, mode[0]), getattr(unicorn, mode[1]))
        self.uc: Any = unicorn.Uc(*uc_mode)
        x86_64 = uc_mode == (unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        self._phys_mask = _x86_64_kernel_phys_mask() if x86_64 else -1
        consts = _CONST_MODULES[uc_arch]
        prefix = _REG_PREFIX[uc_arch]
        # pt_regs field -> unicorn register id (None: a field the CPU has no register for)
        self.reg_ids: dict[str, int | None] = {
            name: (getattr(consts, prefix + uc) if uc else None) for name, uc in regs.items()
        }
        self._batch_names = [n for n, r in self.reg_ids.items() if r is not None]
        self._batch_ids = [r for r in self.reg_ids.values() if r is not None]
        n = len(self._batch_ids)
        self._c_ids = (ctypes.c_int * n)(*self._batch_ids)
        # Zeroed once: Unicorn writes each register at its own width, always the same one in
        # the same slot, so the bytes above a narrow register (i386's) stay 0 from here on
        self._c_vals = (ctypes.c_uint64 * n)()
        self._c_ptrs = (ctypes.c_void_p * n)(
            *(ctypes.addressof(self._c_vals) + 8 * i for i in range(n))
        )
        self._c_n = ctypes.c_int(n)
        self._c_val = ctypes.c_uint64()  # one register's value, written by write_regs()
        self._c_val_ref = ctypes.byref(self._c_val)
        self._unpack = struct.Struct(f"<{n}Q").unpack_from
        self._scratch = ctypes.create_string_buffer(_SCRATCH_BYTES)
        self._on_interrupt: InterruptCallback | None = None
        self._on_unmapped: UnmappedCallback | None = None
        self._pending: BaseException | None = None
        self.uc.hook_add(unicorn.UC_HOOK_INTR, self._intr_hook)
        self.uc.hook_add(
            unicorn.UC_HOOK_MEM_UNMAPPED | unicorn.UC_HOOK_MEM_PROT, self._unmapped_hook
        )

    # --- callbacks ----------------------------------------------------------------------

    def set_callbacks(self, on_interrupt: InterruptCallback, on_unmapped: UnmappedCallback) -> None:
        self._on_interrupt = on_interrupt
        self._on_unmapped = on_unmapped

    def _intr_hook(self, uc: Any, intno: int, _user: Any) -> None:
        try:
            assert self._on_interrupt is not None
            self._on_interrupt(intno)
        except BaseException as e:  # re-raised by run(): unicorn would swallow it
            self._pending = e
            uc.emu_stop()

    def _unmapped_hook(
        self, uc: Any, access: int, addr: int, size: int, _value: int, _user: Any
    ) -> bool:
        try:
            assert self._on_unmapped is not None
            return self._on_unmapped(_ACCESS.get(access, "read"), self._canonical(addr), size)
        except BaseException as e:
            self._pending = e
            uc.emu_stop()
            return False

    # --- running ------------------------------------------------------------------------

    def run(self, begin: int, until: int, count: int = 0) -> None:
        """Run from ``begin`` until the pc reaches ``until`` (or ``count`` instructions).

        An exception raised by a callback stops the CPU and is raised here; an access nobody
        mapped raises :class:`EmuError`.
        """
        try:
            self.uc.emu_start(begin, until, count=count)
        except unicorn.UcError as e:
            pending, self._pending = self._pending, None
            if pending is not None:
                raise pending from None
            raise EmuError(str(e), pc=self.pc) from e
        pending, self._pending = self._pending, None
        if pending is not None:
            raise pending

    def stop(self) -> None:
        self.uc.emu_stop()

    # --- registers ----------------------------------------------------------------------

    @property
    def pc(self) -> int:
        return int(self.uc.reg_read(self._pc_id))

    def set_pc_reg(self, name: str) -> None:
        rid = self.reg_ids[name]
        assert rid is not None
        self._pc_id = rid

    def read_regs(self) -> dict[str, int]:
        """Every register the arch names, by its pt_regs field name."""
        if _UCLIB is None:
            vals = self._reg_read_batch()
            return dict(zip(self._batch_names, vals, strict=True))
        if _UCLIB.uc_reg_read_batch(self.uc._uch, self._c_ids, self._c_ptrs, self._c_n):
            raise EmuError("reading the registers failed", pc=0)
        return dict(zip(self._batch_names, self._unpack(self._c_vals), strict=True))

    def read_regs_list(self) -> tuple[int, ...]:
        """Every register with an id, in the order the arch named them (fast path)."""
        if _UCLIB is None:
            return self._reg_read_batch()
        if _UCLIB.uc_reg_read_batch(self.uc._uch, self._c_ids, self._c_ptrs, self._c_n):
            raise EmuError("reading the registers failed", pc=0)
        return self._unpack(self._c_vals)

    def _reg_read_batch(self) -> tuple[int, ...]:
        """The public API's batch read; one by one where it has none (Unicorn 2.0: Debian 12's
        python3-unicorn, what the guests run)."""
        batch = getattr(self.uc, "reg_read_batch", None)
        if batch is not None:
            return tuple(batch(self._batch_ids))
        return tuple(int(self.uc.reg_read(r)) for r in self._batch_ids)

    @property
    def reg_names(self) -> list[str]:
        """The names read_regs_list() returns, in its order."""
        return list(self._batch_names)

    def read_reg(self, name: str) -> int:
        rid = self.reg_ids[name]
        return 0 if rid is None else int(self.uc.reg_read(rid))

    def write_reg(self, name: str, value: int) -> None:
        rid = self.reg_ids[name]
        if rid is not None:
            self.uc.reg_write(rid, value)

    def write_regs(self, values: Mapping[str, int]) -> None:
        for name, v in values.items():
            rid = self.reg_ids[name]
            if rid is None:
                continue
            if _UCLIB is None:
                self.uc.reg_write(rid, v)
                continue
            self._c_val.value = v
            if _UCLIB.uc_reg_write(self.uc._uch, rid, self._c_val_ref):
                raise EmuError(f"writing register {name} failed", pc=0)

    def context_save(self) -> Any:
        return self.uc.context_save()

    def context_restore(self, ctx: Any) -> None:
        self.uc.context_restore(ctx)

    # --- memory -------------------------------------------------------------------------

    def _canonical(self, addr: int) -> int:
        """The virtual address of a physical one Unicorn reports (see _X86_64_PHYS_BITS)."""
        if self._phys_mask != -1 and addr >> (_X86_64_PHYS_BITS - 1) & 1:
            return addr | ~self._phys_mask & (1 << 64) - 1
        return addr

    def map(self, addr: int, size: int, prot: int = PROT_ALL) -> None:
        perms = 0
        for bit, uc_bit in _PERMS.items():
            if prot & bit:
                perms |= uc_bit
        self.uc.mem_map(addr & self._phys_mask, size, perms)

    def read(self, addr: int, size: int) -> bytes:
        if _UCLIB is not None and size <= _SCRATCH_BYTES:  # a trap's reads: no new buffer
            buf = self._scratch
            if not _UCLIB.uc_mem_read(self.uc._uch, addr & self._phys_mask, buf, size):
                return buf.raw[:size]
        try:
            return bytes(self.uc.mem_read(addr & self._phys_mask, size))
        except unicorn.UcError as e:
            raise EmuError(f"cannot read {size} bytes at {addr:#x}: {e}", pc=addr) from e

    def write(self, addr: int, data: bytes) -> None:
        try:
            self.uc.mem_write(addr & self._phys_mask, bytes(data))
            # code written from outside: drop translations of it (text_poke_sync())
            self.uc.ctl_remove_cache(addr, addr + len(data))
            if addr & self._phys_mask != addr:
                phys = addr & self._phys_mask
                self.uc.ctl_remove_cache(phys, phys + len(data))
        except unicorn.UcError as e:
            raise EmuError(f"cannot write {len(data)} bytes at {addr:#x}: {e}", pc=addr) from e

    def read_words(self, addr: int, count: int, word: int) -> Sequence[int]:
        raw = self.read(addr, count * word)
        return struct.unpack_from(f"<{count}{'Q' if word == 8 else 'I'}", raw)
