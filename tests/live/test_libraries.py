"""Library names as uprobe targets (kuprobe/libraries.py: find_library), live on this host:
the linker's cache, the default directories, a process's own mappings, and a chroot's copy."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
from kuprobe.errors import ProbeError
from kuprobe.libraries import find_library, ld_so_cache
from kuprobe.resolve import resolve_uprobe

from .helpers import KUPROBE, start_trace

pytestmark = pytest.mark.live


# A process that calls getpid() N times (os.getpid() is libc's getpid) once told to.
GETPIDS = (
    "import os, sys; print(os.getpid(), flush=True); n = int(sys.stdin.readline())\n"
    "for _ in range(n): os.getpid()\nprint('done', flush=True)"
)


def host_libc() -> str:
    """The x86-64 C library as ``ldconfig -p`` lists it."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.strip().startswith("libc.so.6 ") and "x86-64" in line:
            return line.split("=>")[1].strip()
    raise AssertionError(out)


def same_file(a: str, b: str) -> bool:
    return os.path.samefile(a, b)


def test_names_as_the_dynamic_linker_finds_them() -> None:
    libc = host_libc()
    for name in ("c", "libc", "libc.so", "libc.so.6"):
        assert same_file(find_library(name), libc), name
    assert find_library("c", arch="i386") != find_library("c")  # this host keeps lib32 too
    assert resolve_uprobe("c", symbol_name="getpid", offset=0).arch == "x86_64"
    assert resolve_uprobe("c", symbol_name="getpid", offset=0).inode == (
        os.stat(libc).st_dev,
        os.stat(libc).st_ino,
    )
    cached = ld_so_cache()
    assert any(same_file(p, libc) for p in cached)
    # a program's name: the ELF file on PATH (bpftrace's uprobe:bash:…), not a library whose
    # name starts with it (libpython3.11.so.1.0), nor a shell-script shim
    assert same_file(find_library("bash"), "/usr/bin/bash")
    assert same_file(find_library("python3.11"), "/usr/bin/python3.11")


def test_missing_and_ambiguous_names_list_what_was_found(tmp_path: Path) -> None:
    with pytest.raises(ProbeError) as e:
        find_library("no_such_library_kuprobe")
    assert e.value.errno == errno.ENOENT and "no library" in str(e.value)
    # Two versions of one library in a default directory: the linker would not know either.
    for version in ("1", "2"):
        shutil.copy(host_libc(), tmp_path / f"libkuprobe.so.{version}")
    with pytest.raises(ProbeError) as e:
        find_library("kuprobe", cache=str(tmp_path / "none"), dirs=[str(tmp_path)])
    assert e.value.errno == errno.ENOENT
    assert "ambiguous" in str(e.value)
    assert "libkuprobe.so.1" in str(e.value) and "libkuprobe.so.2" in str(e.value)
    one = find_library("libkuprobe.so.2", cache=str(tmp_path / "none"), dirs=[str(tmp_path)])
    assert one == str(tmp_path / "libkuprobe.so.2")
    # Only another arch's copy: said so.
    shutil.copy(find_library("c", arch="i386"), tmp_path / "libthirtytwo.so.6")
    with pytest.raises(ProbeError, match="only for other arches"):
        find_library("thirtytwo", cache=str(tmp_path / "none"), dirs=[str(tmp_path)])


def getpid_process() -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", GETPIDS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    int(p.stdout.readline())
    return p


def test_uprobe_on_libc_by_name_counts_every_call(live: Path) -> None:
    proc = getpid_process()
    up = Uprobe("libc", symbol_name="getpid", consumer=UprobeConsumer(), pid=proc.pid)
    try:
        register_uprobe(up)
        out, _ = proc.communicate("1000\n", timeout=30)
        assert out.strip() == "done"
    finally:
        if up.registered:
            unregister_uprobe(up)
        proc.kill()
        proc.wait()
    assert 1000 <= up.hits < 1100  # the interpreter itself may ask once or twice more


def test_missing_in_a_process_lists_its_libraries(live: Path) -> None:
    proc = getpid_process()
    try:
        with pytest.raises(ProbeError) as e:
            find_library("ssl_kuprobe_none", pid=proc.pid)
        assert e.value.errno == errno.ENOENT
        assert "libc.so.6" in (e.value.hint or "")
    finally:
        proc.kill()
        proc.wait()


def test_a_chroot_library_is_the_chroots_file(live: Path, tmp_path: Path) -> None:
    """A process under another root maps its own copy of libc: a name with its pid finds
    that copy (not the host's), and the probe fires in it."""
    root = tmp_path / "root"
    needed = [shutil.which("dash") or "/bin/dash", host_libc(), "/lib64/ld-linux-x86-64.so.2"]
    for f in needed:
        dest = root / os.path.realpath(f).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(f), dest)
        if f != os.path.realpath(f):  # the names the loader asks for
            link = root / f.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.realpath(f))
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "bin" / "dash").exists():
        (root / "bin" / "dash").symlink_to(os.path.realpath(needed[0]))
    proc = subprocess.Popen(
        ["chroot", str(root), "/bin/dash", "-c", "echo up; while read x; do :; done; echo done"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"
    try:
        found = find_library("c", pid=proc.pid)
        copy = root / os.path.realpath(host_libc()).lstrip("/")
        assert same_file(found, str(copy)) and not same_file(found, host_libc())
        up = Uprobe("libc", symbol_name="read", consumer=UprobeConsumer(), pid=proc.pid)
        register_uprobe(up)
        try:
            out, _ = proc.communicate("ab\ncd\nef\n", timeout=30)
        finally:
            unregister_uprobe(up)
        assert out.strip() == "done"
        assert up.hits >= 3  # dash reads a line byte by byte: a read() per byte
    finally:
        proc.kill()
        proc.wait()


def test_trace_a_library_function_by_name(live: Path) -> None:
    proc = getpid_process()
    try:
        trace = start_trace("u:libc:getpid", "--pid", str(proc.pid), probes=1)
        assert trace.stdout is not None
        assert trace.stdout.readline().split()[-1] == "PROBE"  # the header
        out, _ = proc.communicate("50\n", timeout=30)
        assert out.strip() == "done"
        trace.send_signal(2)
        tout, terr = trace.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert trace.returncode == 0, terr
    lines = [ln for ln in tout.splitlines() if " u:libc:getpid" in ln]
    assert len(lines) >= 50
    assert {ln.split()[1] for ln in lines} == {f"{proc.pid}/{proc.pid}"}
    bad = subprocess.run(
        [str(KUPROBE), "trace", "u:libno_such_kuprobe:f", "-d", "1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "no library 'libno_such_kuprobe'" in bad.stderr
