"""Which x86 instructions may carry a uprobe: this kernel's verdict (a live uprobe on each
instruction of a generated program, in a running process) against the model's
(arch_uprobe_analyze_insn(): kuprobe.model.arch.x86.uprobe_refuses()), on every one- and
two-byte opcode, three-byte maps, the prefixes the kernel treats specially and VEX/EVEX forms.
"""

from __future__ import annotations

import pytest

from kuprobe.crosscheck.acceptance import instructions, measure

pytestmark = pytest.mark.live


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_the_model_accepts_what_the_kernel_accepts(live: object, arch: str) -> None:
    verdicts = measure(arch)
    assert len(verdicts) == len(instructions(arch)) > 450
    wrong = [
        f"{v.code.hex(' ')} ({v.text}): model {v.model or 'accepts'}, kernel {v.live or 'accepts'}"
        for v in verdicts
        if not v.agree
    ]
    assert wrong == []
    # both verdicts are seen: the kernel refuses some (cli, lock …) and accepts most
    refused = sum(1 for v in verdicts if v.live)
    assert 20 < refused < len(verdicts) // 2
