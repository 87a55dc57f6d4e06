"""Each BCC compile runs on a thread of its own with a private view of the file system
(kuprobe/live/bcc.py): BCC's chdir(2) into the headers tree does not move the caller's
working directory, BCC's /proc/kallsyms question is answered without reading the real file,
the program compiled is the same instructions, and the process's mounts are untouched."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from kuprobe.live import bcc
from kuprobe.live.codegen import PROGRAM, render_pool
from kuprobe.live.events import host_ip_index, host_nregs, host_sp_index

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[2]


def pool_source() -> tuple[str, list[str]]:
    src = render_pool(
        nslots=16,
        ringbuf_pages=1,
        nregs=host_nregs(),
        sp_index=host_sp_index(),
        ip_index=host_ip_index(),
    )
    return src.text, list(src.cflags)


def insns_without_map_fds(raw: bytes) -> bytes:
    """The program's instructions with the map fds of ld_imm64 (BPF_PSEUDO_MAP_FD/VALUE)
    zeroed: two modules of one process hold different fds for the same maps."""
    out = bytearray(raw)
    for i in range(0, len(out), 8):
        code, regs = out[i], out[i + 1]
        if code == 0x18 and (regs >> 4) in (1, 2):  # BPF_LD | BPF_DW | BPF_IMM
            struct.pack_into("<i", out, i + 4, 0)
    return bytes(out)


def test_compile_leaves_the_callers_cwd(live: Path) -> None:
    """Before: while the compile ran on its thread, os.getcwd() of every other thread was
    the headers tree (BCC's ClangLoader::parse chdirs there)."""
    text, cflags = pool_source()
    seen: set[str] = set()
    done = threading.Event()
    modules: list[object] = []

    def compile_() -> None:
        try:
            modules.append(bcc.compile_module(text, cflags))
        finally:
            done.set()

    here = os.getcwd()
    t = threading.Thread(target=compile_)
    t.start()
    while not done.wait(0.001):
        seen.add(os.getcwd())
    t.join()
    assert modules, "the compile failed"
    modules[0].cleanup()  # type: ignore[attr-defined]
    assert seen == {here}


# BCC's own names for the probe reads: what BCC's kallsyms question decides (with no
# bpf_probe_read_kernel in kallsyms, BCC #defines these to bpf_probe_read, another helper).
BY_BCC_NAMES = """
int by_bcc_names(struct pt_regs *ctx) {
    char buf[8];
    bpf_probe_read_kernel(buf, sizeof(buf), ctx);
    bpf_probe_read_user(buf, sizeof(buf), (void *)buf[0]);
    return buf[1];
}
"""


@pytest.mark.parametrize(
    ("text", "func"), [(None, PROGRAM), (BY_BCC_NAMES, "by_bcc_names")], ids=["pool", "bcc-names"]
)
def test_private_view_compiles_the_same_program(live: Path, text: str | None, func: str) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    ns = os.readlink("/proc/self/ns/mnt")
    pool_text, cflags = pool_source()
    text = text or pool_text
    ours = bcc.compile_module(text, cflags)
    assert bcc.last_view == "private"
    # The same source compiled the plain way, on this thread: BCC reads the real kallsyms.
    plain = bcc.import_bcc()(text=text.encode(), cflags=cflags)
    try:
        a = insns_without_map_fds(bytes(ours.dump_func(func.encode())))
        b = insns_without_map_fds(bytes(plain.dump_func(func.encode())))
        assert len(a) > 8 * 4 and a == b
    finally:
        ours.cleanup()
        plain.cleanup()
    assert os.readlink("/proc/self/ns/mnt") == ns
    assert Path("/proc/self/mountinfo").read_text() == mounts
    with open("/proc/kallsyms") as f:
        assert sum(1 for _ in f) > 1000  # the real one, here


def test_without_cap_sys_admin_the_compile_reads_kallsyms(live: Path) -> None:
    """No CAP_SYS_ADMIN (really dropped, by setpriv): no mount namespace, so BCC reads the
    real /proc/kallsyms; the thread still has its own working directory and the compile
    works (CAP_BPF and CAP_PERFMON suffice for it); ``kuprobe doctor``'s row says which."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from kuprobe.live import bcc
        from kuprobe.live.codegen import render_pool
        from kuprobe.live.events import host_ip_index, host_nregs, host_sp_index
        src = render_pool(nslots=16, ringbuf_pages=1, nregs=host_nregs(),
                          sp_index=host_sp_index(), ip_index=host_ip_index())
        m = bcc.compile_module(src.text, list(src.cflags))
        print(bcc.last_view)
        from kuprobe.live.checks import checks
        print([c.ok for c in checks() if c.name == "BCC compile view"])
        """
    )
    out = subprocess.run(
        ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["own-cwd", "[False]"]  # and `kuprobe doctor` says so


def test_doctor_shows_the_private_view(live: Path) -> None:
    from kuprobe.live.checks import checks

    (row,) = [c for c in checks() if c.name == "BCC compile view"]
    assert row.ok and row.detail.startswith("private"), row
