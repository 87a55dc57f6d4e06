"""kuprobe/live/events.py against kuprobe/bpf_programs/kuprobe_event.h, field by field.

The C side is compiled by gcc here (offsetof/sizeof of the real header), so a field added,
moved or resized on one side only fails this test.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from kuprobe.arch import X86_64
from kuprobe.live import events
from kuprobe.live.codegen import BPF_DIR

PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "kuprobe_event.h"
#define F(name) printf(#name " %zu %zu\n", offsetof(struct kuprobe_event, name), \
                       sizeof(((struct kuprobe_event *)0)->name));
int main(void) {
    F(slot) F(flags) F(ts) F(func_ip) F(pid_tgid) F(comm) F(regs) F(stack)
    printf("size %zu 0\n", sizeof(struct kuprobe_event));
#define C(name) printf("cap_" #name " %zu %zu\n", offsetof(struct kuprobe_captured, name), \
                       sizeof(((struct kuprobe_captured *)0)->name));
    C(addr) C(len) C(data) C(user_stack) C(kernel_stack)
    printf("captured %zu %zu\n", sizeof(struct kuprobe_captured),
           offsetof(struct kuprobe_event_captured, cap));
    printf("capcfg %zu %zu %zu\n", sizeof(struct kuprobe_capture_cfg),
           sizeof(struct kuprobe_slot_captures), offsetof(struct kuprobe_capture_cfg, offset));
    printf("capconsts %d %d %d %d %d %d %d %d %d %d %d %d %d %d\n", KUPROBE_CFG_CAPTURE,
           KUPROBE_EV_CAPTURED, KUPROBE_CAPTURES, KUPROBE_CAPTURE_BYTES, KUPROBE_CAP_NONE,
           KUPROBE_CAP_STR, KUPROBE_CAP_BUF, KUPROBE_CAP_USER, KUPROBE_CAP_KERNEL,
           KUPROBE_CAP_AUTO, KUPROBE_SRC_REG, KUPROBE_SRC_STACK64, KUPROBE_SRC_STACK32,
           KUPROBE_CFG_STACK);
    printf("cfg %zu %zu\n", sizeof(struct kuprobe_slot_cfg), sizeof(struct kuprobe_counts));
    printf("funcconsts %d %d %zu\n", KUPROBE_CFG_FUNC, KUPROBE_CFG_NO_FUNC_IP,
           offsetof(struct kuprobe_slot_cfg, func_id));
    printf("consts %d %d %d %d %d %d %d %d\n", KUPROBE_CFG_STREAM, KUPROBE_CFG_RET,
           KUPROBE_CFG_KERNEL, KUPROBE_CFG_REMOVABLE, KUPROBE_CFG_OFF, KUPROBE_EV_RET,
           KUPROBE_EV_NOSTACK, KUPROBE_STACK_BYTES);
    return 0;
}
"""


def _c_layout(tmp_path: Path) -> dict[str, tuple[int, ...]]:
    src = tmp_path / "layout.c"
    src.write_text(PROBE)
    exe = tmp_path / "layout"
    subprocess.run(
        ["gcc", f"-I{BPF_DIR}", f"-DKUPROBE_NREGS={len(X86_64.regs.fields)}", "-o", exe, src],
        check=True,
    )
    out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        name, *nums = line.split()
        rows[name] = tuple(int(n) for n in nums)
    return rows


def test_event_fields_match_header(tmp_path: Path) -> None:
    c = _c_layout(tmp_path)
    offset = 0
    for name, fmt in events.EVENT_FIELDS:
        size = struct.calcsize("<" + fmt)
        assert c[name] == (offset, size), f"{name}: C {c[name]} vs Python {(offset, size)}"
        offset += size
    assert c["size"][0] == events.EVENT_SIZE == offset


def test_captured_event_matches_header(tmp_path: Path) -> None:
    """The captured event (memory read at the hit) is the event, then kuprobe_captured."""
    c = _c_layout(tmp_path)
    offset = 0
    for name, fmt in events.CAPTURED_FIELDS:
        size = struct.calcsize("<" + fmt)
        assert c[f"cap_{name}"] == (offset, size), name
        offset += size
    assert c["captured"] == (events.CAPTURED.size, events.EVENT_SIZE)
    assert events.EVENT_SIZE + c["captured"][0] == events.CAPTURED_EVENT_SIZE
    assert c["capcfg"] == (24, 24 * events.KUPROBE_CAPTURES, 8)
    assert c["capconsts"] == (
        events.KUPROBE_CFG_CAPTURE,
        events.KUPROBE_EV_CAPTURED,
        events.KUPROBE_CAPTURES,
        events.KUPROBE_CAPTURE_BYTES,
        events.KUPROBE_CAP_NONE,
        events.KUPROBE_CAP_STR,
        events.KUPROBE_CAP_BUF,
        events.KUPROBE_CAP_USER,
        events.KUPROBE_CAP_KERNEL,
        events.KUPROBE_CAP_AUTO,
        events.KUPROBE_SRC_REG,
        events.KUPROBE_SRC_STACK64,
        events.KUPROBE_SRC_STACK32,
        events.KUPROBE_CFG_STACK,
    )


def test_constants_match_header(tmp_path: Path) -> None:
    c = _c_layout(tmp_path)
    assert c["consts"] == (
        events.KUPROBE_CFG_STREAM,
        events.KUPROBE_CFG_RET,
        events.KUPROBE_CFG_KERNEL,
        events.KUPROBE_CFG_REMOVABLE,
        events.KUPROBE_CFG_OFF,
        events.KUPROBE_EV_RET,
        events.KUPROBE_EV_NOSTACK,
        events.KUPROBE_STACK_BYTES,
    )
    assert c["cfg"] == (16, 16)
    # pool.py's kuprobe_cfg Leaf(flags, tgid, func_id) comes from BCC, which reads the C
    assert c["funcconsts"] == (events.KUPROBE_CFG_FUNC, events.KUPROBE_CFG_NO_FUNC_IP, 8)


def test_i386_view_of_a_64bit_frame() -> None:
    vals = list(range(1, len(X86_64.regs.fields) + 1))
    vals[X86_64.regs.fields.index("ax")] = 0xFFFFFFFF_FFFFFFFE
    raw = bytearray(events.EVENT_SIZE)
    struct.pack_into(f"<{len(vals)}Q", raw, events.REGS_OFFSET, *vals)
    struct.pack_into("<16I", raw, events.STACK_OFFSET, *range(100, 116))
    r = events.regs_factory("i386")(bytes(raw), 0, 5)
    assert r.ax == 0xFFFFFFFE  # truncated to 32 bits
    assert r.bx == X86_64.regs.fields.index("bx") + 1
    assert r.ip == X86_64.regs.fields.index("ip") + 1
    assert r.ds == r.es == r.fs == r.gs == 0  # not in the 64-bit frame
    assert r.stack[:3] == (100, 101, 102)
    assert r.ts == 5
