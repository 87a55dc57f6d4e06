"""The BPF source kuprobe compiles: the C is never edited, and no way to paste text into C."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kuprobe import ProbeError, Uprobe, register_uprobe
from kuprobe.errors import KuprobeTypeError, KuprobeValueError
from kuprobe.live.codegen import BPF_DIR, render_pool
from kuprobe.validate import check_symbol_name


def test_integers_in_flags_are_the_only_parameters() -> None:
    src = render_pool(nslots=3, ringbuf_pages=8, nregs=21, sp_index=19, ip_index=16)
    assert src.text == (BPF_DIR / "probe_pool.bpf.c").read_text()  # the C is not edited
    assert src.cflags[1:] == (
        "-DKUPROBE_NSLOTS=3",
        "-DKUPROBE_RINGBUF_PAGES=8",
        "-DKUPROBE_NREGS=21",
        "-DKUPROBE_REG_SP=19",
        "-DKUPROBE_REG_IP=16",
    )


# x86_64's struct pt_regs: 21 words, sp word 19, ip word 16
GOOD = {"nslots": 2, "ringbuf_pages": 4, "nregs": 21, "sp_index": 19, "ip_index": 16}


@pytest.mark.parametrize(
    "kwargs",
    [
        {**GOOD, "nslots": "1); evil("},
        {**GOOD, "ringbuf_pages": "4 }"},
        {**GOOD, "nregs": 21.0},
        {**GOOD, "nslots": True},
        {**GOOD, "ip_index": "16]; evil"},
    ],
)
def test_parameters_must_be_ints(kwargs: dict[str, object]) -> None:
    with pytest.raises(KuprobeTypeError):
        render_pool(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {**GOOD, "nslots": 0},
        {**GOOD, "nslots": 70000},
        {**GOOD, "ringbuf_pages": 3},  # not a power of two
        {**GOOD, "ringbuf_pages": -4},
        {**GOOD, "sp_index": 21},  # past pt_regs
        {**GOOD, "ip_index": 21},
    ],
)
def test_parameters_are_range_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(KuprobeValueError):
        render_pool(**kwargs)


@pytest.mark.parametrize(
    "name", ["f(){}; evil", "a b", "sym\n", "x;", "", "-p", "a/b", "x" * 600, 'q"']
)
def test_symbol_injection_refused(name: str) -> None:
    with pytest.raises(ProbeError) as e:
        check_symbol_name(name)
    assert e.value.errno == errno.EINVAL


def test_register_refuses_injected_symbol_before_touching_the_kernel(targets: Path) -> None:
    up = Uprobe(str(targets / "x86_64" / "target"), symbol_name="f(){}; evil")
    with pytest.raises(ProbeError) as e:
        register_uprobe(up)
    assert e.value.errno == errno.EINVAL
    assert not up.registered


@pytest.mark.parametrize("name", ["add", "_start", "sym.1", "memcpy@GLIBC_2.14", "$x"])
def test_symbol_names_accepted(name: str) -> None:
    assert check_symbol_name(name) == name
