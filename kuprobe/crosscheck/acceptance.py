"""Which x86 instructions may carry a uprobe: the live kernel's verdict against the model's.

The model's is ``arch_uprobe_analyze_insn()``'s.

``instructions(arch)`` lists the probed encodings (about 1,800 per arch): every one-byte
opcode, every opcode of the 0f, 0f 38 and 0f 3a maps bare and with 66/f2/f3, group opcodes
with each modrm reg, the prefixes the kernel treats specially (lock, the segment overrides,
0x66 on branches), ``mov ss``/``pop ss``, and every opcode of VEX maps 1-3 and EVEX maps 1-2;
each as capstone decodes it (what it cannot decode is left out). ``build()``
assembles each as its own symbol (``insn_N``) of one program that waits on stdin, so the kernel
analyses each probed instruction when a uprobe limited to that process is registered.
``measure(arch)`` registers one uprobe per instruction on each side and returns the verdicts.

``python -m kuprobe.crosscheck.acceptance [ARCH…]`` (root) prints the agreement and each
difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kuprobe.errors import ProbeError
from kuprobe.insn import disassembler
from kuprobe.probes import Uprobe
from kuprobe.targets import TargetError

FILL = bytes(15)  # operand bytes after an opcode: modrm 00 (a register-indirect operand), 0s


@dataclass(frozen=True)
class Verdict:
    """One instruction's bytes, what capstone calls it, and each side's errno (0: accepted)."""

    code: bytes
    text: str
    model: int
    live: int

    @property
    def agree(self) -> bool:
        return (self.model == 0) == (self.live == 0)


def _decoded(arch: str, code: bytes) -> tuple[bytes, str] | None:
    """The first instruction of ``code`` (its bytes, its text), or None if capstone cannot."""
    for insn in disassembler(arch).disasm(code, 0x1000, 1):
        return bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip()
    return None


def instructions(arch: str) -> list[tuple[bytes, str]]:
    """The encodings probed on ``arch`` (x86_64 or i386), each decodable by capstone."""
    is64 = arch == "x86_64"
    cands: list[bytes] = []
    prefixes = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}
    for op in range(256):
        if op == 0x0F or op in prefixes or (is64 and 0x40 <= op <= 0x4F):
            continue
        if op in (0xC4, 0xC5, 0x62) and is64:
            continue  # VEX/EVEX in 64-bit mode: below
        cands.append(bytes([op]))
    # the two- and three-byte maps, bare and with each mandatory prefix (SSE forms)
    for op in range(256):
        for p in (b"", b"\x66", b"\xf2", b"\xf3"):
            cands += [p + bytes([0x0F, op]), p + bytes([0x0F, 0x38, op])]
            cands += [p + bytes([0x0F, 0x3A, op])]
    # group opcodes with each modrm reg, register and memory forms
    for op in (0x80, 0x8F, 0xC6, 0xC7, 0xD9, 0xDF, 0xF6, 0xF7, 0xFE, 0xFF):
        cands += [bytes([op, mod | reg << 3]) for reg in range(8) for mod in (0x00, 0xC0)]
    # prefixes on a plain `add %eax, (%eax)` (01 00): the kernel refuses es/cs/ss/ds and lock
    cands += [bytes([p, 0x01, 0x00]) for p in sorted(prefixes)]
    cands += [bytes([0x66, 0x2E, 0x0F, 0x1F, 0x84, 0, 0, 0, 0, 0])]  # the cs nopw padding
    cands += [bytes([0x8E, 0xD0]), bytes([0x8E, 0xD8])]  # mov %eax, %ss / %ds
    # 0x66 on branches (branch_setup_xol_ops()), and the same branches without it
    for br in (b"\xeb\x00", b"\xe9\x00\x00", b"\xe8\x00\x00", b"\x74\x00", b"\x0f\x84\x00\x00"):
        cands += [b"\x66" + br, b"\xf3" + br]
    if is64:
        cands += [bytes([0x48, 0x01, 0x00]), bytes([0x41, 0x50]), bytes([0x48, 0x8E, 0xD0])]
    # VEX (c5: 2 bytes, c4: 3 bytes) and EVEX (62) forms: the kernel tests the opcode byte that
    # follows the prefix against the one-byte table
    vex = [
        "c5f858c0",  # vaddps
        "c5f877",  # vzeroupper
        "c5f9efc0",  # vpxor (opcode ef)
        "c5fd6fc0",  # vmovdqa (6f)
        "c5fe7fc0",  # vmovdqu store form (7f)
        "c5f9d6c0",  # vmovq (d6)
        "c5f9e7c0",  # vmovntdq (e7)
        "c5f9fac0",  # vpsubd (fa)
        "c5f9f4c0",  # vpmuludq (f4)
        "c5f96cc0",  # vpunpcklqdq (6c)
        "c5f962c0",  # vpunpckldq (62)
        "c5f9d4c0",  # vpaddq (d4)
        "c5f917c0",  # vmovhps (17)
        "c4e27d00c0",  # vpshufb (0f38 00)
        "c4e2f8f2c0",  # andn (0f38 f2)
        "c4e2f9f7c0",  # shlx (0f38 f7)
        "c4e37d0fc001",  # vpalignr (0f3a 0f)
        "c4e27d78c0",  # vpbroadcastb (0f38 78)
        "c4e2798cc0",  # vpmaskmovd (0f38 8c)
        "c4e27df1c0",  # (0f38 f1)
        "62f17c4858c0",  # EVEX vaddps zmm
        "62f1fd486fc0",  # EVEX vmovdqa64 (6f)
        "62f27d487cc0",  # EVEX vpbroadcastd (0f38 7c)
    ]
    cands += [bytes.fromhex(v) for v in vex]
    # every opcode of VEX maps 1-3 (each pp for map 1) and of EVEX maps 1-2
    for op in range(256):
        cands += [bytes([0xC5, pp, op, 0xC0]) for pp in (0xF8, 0xF9, 0xFA, 0xFB)]
        cands += [bytes([0xC4, 0xE2, 0x79, op, 0xC0]), bytes([0xC4, 0xE2, 0x7D, op, 0xC0])]
        cands += [bytes([0xC4, 0xE3, 0x79, op, 0xC0, 0x01])]
        cands += [
            bytes([0x62, 0xF1, 0x7C, 0x48, op, 0xC0]),
            bytes([0x62, 0xF2, 0x7D, 0x48, op, 0xC0]),
        ]
    out: list[tuple[bytes, str]] = []
    seen: set[bytes] = set()
    for c in cands:
        d = _decoded(arch, c + FILL)
        if d is not None and d[0] not in seen:
            seen.add(d[0])
            out.append(d)
    return out


WAIT_MAIN = """
#include <stdio.h>
int main(void) { char l[8]; printf("ready\\n"); fflush(stdout); return !fgets(l, 8, stdin); }
"""


def build(arch: str, insns: list[tuple[bytes, str]], folder: Path) -> Path:
    """A program with each instruction as symbol ``insn_N`` (never executed) and a main that
    prints ``ready`` and waits for a line on stdin."""
    lines = ['\t.section .text.insns, "ax"']
    for i, (code, text) in enumerate(insns):
        lines += [
            f"\t.globl insn_{i}",
            f"\t.type insn_{i}, @function",
            f"insn_{i}:  # {text}",
            "\t.byte " + ", ".join(f"{b:#04x}" for b in code),
            f"\t.size insn_{i}, {len(code)}",
        ]
    (folder / "insns.s").write_text("\n".join(lines) + "\n")
    (folder / "main.c").write_text(WAIT_MAIN)
    exe = folder / f"insns-{arch}"
    cc = ["gcc", *(["-m32"] if arch == "i386" else []), "-O1", "-fPIE", "-pie"]
    subprocess.run(
        [*cc, "-o", str(exe), str(folder / "main.c"), str(folder / "insns.s")],
        check=True,
        capture_output=True,
    )
    return exe


def _verdict(register: object, up: Uprobe) -> int:
    try:
        register(up)  # type: ignore[operator]
    except ProbeError as e:
        return e.errno or -1
    return 0


# Live probes are unregistered this many at a time (unregister_uprobes()): their grace
# periods run side by side, where one at a time costs a grace period per instruction
# (~45 ms each, 80 s per arch here). Each instruction is its own symbol, so a probe's verdict
# does not depend on the others still armed; a batch stays within one pool's slots.
UNREGISTER_BATCH = 256


def measure(arch: str) -> list[Verdict]:
    """Each instruction of ``instructions(arch)``: the model's and the live kernel's verdict."""
    from kuprobe.live.api import backend as live_backend
    from kuprobe.model import Machine

    insns = instructions(arch)
    backend = live_backend()
    with tempfile.TemporaryDirectory(prefix="kuprobe-insns-") as tmp:
        exe = build(arch, insns, Path(tmp))
        machine = Machine.load(str(exe), semantics=os.uname().release)  # this kernel's rules
        proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise TargetError(f"{exe} did not start")
            out = []
            armed: list[Uprobe] = []  # live probes not yet unregistered
            try:
                for i, (code, text) in enumerate(insns):
                    m = Uprobe(str(exe), symbol_name=f"insn_{i}")
                    verdict_m = _verdict(machine.register_uprobe, m)
                    if not verdict_m:
                        machine.unregister_uprobe(m)
                    k = Uprobe(str(exe), symbol_name=f"insn_{i}", pid=proc.pid)
                    verdict_k = _verdict(backend.register_uprobe, k)
                    if not verdict_k:
                        armed.append(k)
                    if len(armed) == UNREGISTER_BATCH:
                        backend.unregister_uprobes(armed)
                        armed.clear()
                    out.append(Verdict(code, text, verdict_m, verdict_k))
            finally:
                backend.unregister_uprobes(armed)
            return out
        finally:
            proc.kill()
            proc.communicate()


def main(argv: list[str]) -> int:
    import errno

    total = agree = 0
    for arch in argv or ["x86_64", "i386"]:
        verdicts = measure(arch)
        good = [v for v in verdicts if v.agree]
        total += len(verdicts)
        agree += len(good)
        print(f"{arch}: the model agrees with the kernel on {len(good)} of {len(verdicts)}")
        for v in verdicts:
            if not v.agree:
                say = {0: "accepts"}
                m = say.get(v.model, f"refuses ({errno.errorcode.get(v.model, v.model)})")
                k = say.get(v.live, f"refuses ({errno.errorcode.get(v.live, v.live)})")
                print(f"  {v.code.hex(' '):<32} {v.text:<40} model {m}, kernel {k}")
    print(f"total: {agree} of {total} agree")
    return 0 if agree == total else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
