"""Parameterises the BPF C in ``kuprobe/bpf_programs/``: integers only, never a user string.

All Python adds is ``-D NAME=INTEGER`` compile flags, each checked here; symbols, paths and
pids reach the kernel through perf_event_open(2) and bpf(2), never through C.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kuprobe.errors import KuprobeTypeError, KuprobeValueError

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf_programs"  # package data
POOL_TEMPLATE = "probe_pool.bpf.c"
PROGRAM = "kuprobe_probe"  # the program every slot attaches
MAX_SLOTS = 1 << 16


def _bpf_dir() -> Path:
    env = os.environ.get("KUPROBE_BPF_DIR")
    return Path(env) if env else BPF_DIR


@dataclass(frozen=True)
class PoolSource:
    """A rendered pool module: its C text and the compile flags that parameterise it."""

    text: str
    cflags: tuple[str, ...]
    nslots: int


def _checked_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KuprobeTypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise KuprobeValueError(f"{name}={value} is outside {lo}..{hi}")
    return value


def render_pool(
    *, nslots: int, ringbuf_pages: int, nregs: int, sp_index: int, ip_index: int
) -> PoolSource:
    """The module for ``nslots`` slots and a ring buffer of ``ringbuf_pages`` pages; struct
    pt_regs is ``nregs`` words, the stack pointer word number ``sp_index``, the instruction
    pointer word number ``ip_index``."""
    nslots = _checked_int("nslots", nslots, 1, MAX_SLOTS)
    ringbuf_pages = _checked_int("ringbuf_pages", ringbuf_pages, 1, 1 << 16)
    if ringbuf_pages & (ringbuf_pages - 1):
        raise KuprobeValueError(f"ringbuf_pages={ringbuf_pages} must be a power of two")
    nregs = _checked_int("nregs", nregs, 1, 64)
    sp_index = _checked_int("sp_index", sp_index, 0, nregs - 1)
    ip_index = _checked_int("ip_index", ip_index, 0, nregs - 1)
    bpf_dir = _bpf_dir()
    text = (bpf_dir / POOL_TEMPLATE).read_text()
    cflags = (
        f"-I{bpf_dir}",
        f"-DKUPROBE_NSLOTS={nslots}",
        f"-DKUPROBE_RINGBUF_PAGES={ringbuf_pages}",
        f"-DKUPROBE_NREGS={nregs}",
        f"-DKUPROBE_REG_SP={sp_index}",
        f"-DKUPROBE_REG_IP={ip_index}",
    )
    return PoolSource(text=text, cflags=cflags, nslots=nslots)
