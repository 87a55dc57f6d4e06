"""Building the kprobe scenarios' test module for the x86_64 guest's kernel.

Its sources are kuprobe/targets/kmod's kk_funcs.c, and kk_insns.S generated here.

``build()`` makes ``<out>/kuprobe_kmod.ko`` against the guest kernel's own headers: the Debian
packages ``linux-headers-<release>`` (+ its ``-common``) and ``linux-kbuild-<major>`` at the
version the VM image is built from (``kuprobe.vm.image.resolve_inputs``), downloaded once into
the VM cache's ``debs/`` and unpacked once into ``<cache>/kmod/<release>/``. The host's gcc-12
is bookworm's, the compiler those headers were made with. Idempotent: nothing is done when the
.ko is newer than its sources and was built for the same kernel (a stamp beside it says which).

``python -m kuprobe.crosscheck.kmod_build [OUT]`` builds it (tests/targets/build.sh does, into
tests/targets/build/kmod/, which the guest sees over 9p and loads with insmod).

With a kernel series (``build(out, kernel="5.10", arch=...)``, ``python -m
kuprobe.crosscheck.kmod_build --kernel 5.10 [--arch i386] OUT``) it is built instead for that
kernel of the matrix (``kuprobe.vm.kernels``: the newest of the series' Debian suite, from the
project's own apt lists), the one its minimal guest boots: the headers debs of that kernel,
kbuild's host tools from the host arch's ``linux-kbuild`` of the same version, the host's gcc
(``-m32`` through ARCH=i386 for 686-pae; ``aarch64-linux-gnu-`` for arm64), unpacked under
``<cache>/kmod-matrix/<release>/``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kuprobe.arch import ArchInfo, host_arch
from kuprobe.crosscheck import acceptance
from kuprobe.targets import TargetError
from kuprobe.targets.kmod import (
    DEFAULT_OUT,
    GUEST_ARCH,
    INSN_SYMBOL,
    INSNS,
    MODULE,
    MODULE_SOURCES,
    SOURCE_FILES,
)
from kuprobe.vm import kernels
from kuprobe.vm.guests import ALL_GUESTS, guest
from kuprobe.vm.host import VmError
from kuprobe.vm.image import cache_dir, resolve_inputs


def _host() -> ArchInfo:
    host = host_arch()
    if host is None:
        raise TargetError(f"no kbuild host tools for this host ({os.uname().machine})")
    return host


def host_deb_arch() -> str:
    """Debian's name of this host's arch: kbuild's host tools (fixdep, modpost) run here."""
    return guest(_host().name).deb_arch


def say(message: str) -> None:
    print(f"[kmod] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TargetError(
            f"{' '.join(argv)}: exit status {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def _download(package: str, version: str, deb_arch: str, debs: Path) -> Path:
    """``package`` at ``version`` from the registry, once, into ``debs``."""
    deb = debs / f"{package}_{version}_{deb_arch}.deb".replace(":", "%3a")
    if not deb.is_file():
        say(f"downloading {package} {version}")
        debs.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=debs)
    if not deb.is_file():
        raise TargetError(f"apt-get download did not produce {deb}")
    return deb


def headers_tree(release: str, version: str) -> Path:
    """The kernel's build tree (``/usr/src/linux-headers-<release>`` of the three packages,
    unpacked under the VM cache), made once."""
    cache = cache_dir()
    deb_arch = guest(GUEST_ARCH).deb_arch
    root = cache / "kmod" / release
    build = root / "usr" / "src" / f"linux-headers-{release}"
    stamp = root / ".unpacked"
    if stamp.is_file() and stamp.read_text() == version:
        return build
    show = _run(["apt-cache", "show", f"linux-headers-{release}={version}"])
    common = sorted(set(re.findall(r"\b(linux-headers-[0-9][^\s,]*-common)\b", show)))
    kbuild = sorted(set(re.findall(r"\b(linux-kbuild-[0-9.]+)\b", show)))
    if len(common) != 1 or len(kbuild) != 1:
        raise TargetError(f"linux-headers-{release}: expected one -common and one kbuild, got "
                          f"{common} {kbuild}")  # fmt: skip
    debs = [
        _download(f"linux-headers-{release}", version, deb_arch, cache / "debs"),
        _download(common[0], version, "all", cache / "debs"),
        _download(kbuild[0], version, deb_arch, cache / "debs"),
    ]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs:
        say(f"unpacking {deb.name}")
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    if not (build / "Makefile").is_file():
        raise TargetError(f"{build}: no Makefile after unpacking the headers")
    stamp.write_text(version)
    return build


def matrix_headers_tree(kernel: kernels.Kernel) -> Path:
    """The build tree of a matrix kernel (its headers, the -common ones, and the host's
    kbuild of the same version), unpacked once under ``<cache>/kmod-matrix/<release>``."""
    cache = cache_dir()
    apt = kernels.apt(cache)
    root = cache / "kmod-matrix" / kernel.release
    build = root / "usr" / "src" / f"linux-headers-{kernel.release}"
    stamp = root / ".unpacked"
    if stamp.is_file() and stamp.read_text() == kernel.version:
        return build
    debs = [
        apt.download(kernel.headers_package, kernel.version, kernel.deb_arch, cache / "debs"),
        apt.download(kernel.headers_common, kernel.version, "all", cache / "debs"),
        apt.download(kernel.kbuild, kernel.version, host_deb_arch(), cache / "debs"),
    ]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs:
        say(f"unpacking {deb.name}")
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    makefile = build / "Makefile"
    if not makefile.is_file():
        raise TargetError(f"{build}: no Makefile after unpacking the headers")
    # Its `include /usr/src/linux-headers-<abi>-common/Makefile` is the host's path once
    # installed: here the -common tree is the one unpacked beside it.
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    _run_with_suite_libc(kernel, root, apt, cache / "debs")
    stamp.write_text(kernel.version)
    return build


GLIBC_NEEDED = re.compile(rb"GLIBC_2\.([0-9]+)\x00")


def libc_dir() -> str:
    """The host arch's multiarch library directory, in a Debian root."""
    return f"lib/{_host().triplet}"


def glibc_minor_needed(elf: bytes) -> int:
    """The highest GLIBC_2.N version an ELF's dynamic strings name (0 for none)."""
    return max((int(m) for m in GLIBC_NEEDED.findall(elf)), default=0)


def _host_glibc_minor() -> int:
    version = os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.0"  # "glibc 2.36"
    return int(version.split(".")[1])


def _run_with_suite_libc(kernel: kernels.Kernel, root: Path, apt: kernels.Apt, debs: Path) -> None:
    """kbuild's host tools of a newer suite (trixie's objtool and modpost need glibc 2.38,
    bookworm has 2.36) run under that suite's own libc6, unpacked beside them: each such
    binary is renamed ``*.bin`` and replaced by a script calling the suite's dynamic linker."""
    tools = root / "usr" / "lib" / kernel.kbuild
    host = _host_glibc_minor()
    newer = []
    for path in sorted(tools.rglob("*")):
        if path.is_file() and not path.is_symlink() and os.access(path, os.X_OK):
            data = path.read_bytes()
            if data.startswith(b"\x7fELF") and glibc_minor_needed(data) > host:
                newer.append(path)
    if not newer:
        return
    lists = apt.ensure_lists()
    version = kernels.package_version(lists, kernel.suite, host_deb_arch(), "libc6")
    libc = root / "suite-libc"
    _run(["dpkg-deb", "-x", str(apt.download("libc6", version, host_deb_arch(), debs)), str(libc)])
    loader = next(libc.glob("usr/lib64/ld-linux-x86-64.so.2"), None) or next(
        libc.glob(f"**/{libc_dir()}/ld-linux-x86-64.so.2")
    )
    libdirs = ":".join(str(d) for d in libc.glob(f"**/{libc_dir()}") if d.is_dir())
    for path in newer:
        say(f"{path.name} needs a newer glibc than the host's: run with {kernel.suite}'s libc6")
        real = path.with_name(path.name + ".bin")
        path.rename(real)
        path.write_text(f'#!/bin/sh\nexec "{loader}" --library-path "{libdirs}" "{real}" "$@"\n')
        path.chmod(0o755)


def _cc_accepts(cc: str, flag: str) -> bool:
    done = subprocess.run(
        [cc, flag, "-x", "c", "-c", "-o", "/dev/null", "/dev/null"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


# Flags a kernel's config chose for its own (newer) gcc, each with the config symbol that
# chose it; make's command line clears a symbol the host's gcc lacks the flag of, so kbuild
# falls back to the older flag (-fmin-function-alignment=N: gcc 14; else -falign-functions=N).
NEWER_GCC_FLAGS = (("CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT", "-fmin-function-alignment=16"),)


def compat_vars(tree: Path, kernel: kernels.Kernel) -> list[str]:
    """make variables that let the host's gcc build against `kernel`'s config."""
    config = (tree / ".config").read_text().splitlines()
    cc = guest(kernel.arch).kbuild[-1].split("=", 1)[1]
    out = []
    for symbol, flag in NEWER_GCC_FLAGS:
        if f"{symbol}=y" in config and not _cc_accepts(cc, flag):
            say(f"{cc} lacks {flag}: building with {symbol} unset")
            out.append(f"{symbol}=")
    # The module's BTF (for BPF programs' types; kprobes need none) takes pahole.
    if "CONFIG_DEBUG_INFO_BTF_MODULES=y" in config and shutil.which("pahole") is None:
        say("no pahole on this host: building without the module's BTF")
        out.append("CONFIG_DEBUG_INFO_BTF_MODULES=")
    return out


def guest_kernel() -> tuple[str, str]:
    """(release, Debian version) of the x86_64 guest's kernel, from the apt lists."""
    inputs = resolve_inputs(GUEST_ARCH)
    return inputs.kernel_release, inputs.kernel_version


def build(
    out: Path = DEFAULT_OUT,
    *,
    force: bool = False,
    kernel: str | None = None,
    arch: str = GUEST_ARCH,
) -> Path:
    """``<out>/kuprobe_kmod.ko`` for the guest's kernel, built if missing or stale; with
    `kernel` (a series of ``kuprobe.vm.kernels.SERIES``), for that kernel of `arch`."""
    matrix = None
    if kernel is None:
        release, version = guest_kernel()
    else:
        matrix = kernels.resolve_kernel(guest(arch).arch, kernel, cache_dir())
        release, version = matrix.release, matrix.version
    ko = out / f"{MODULE}.ko"
    stamp = out / f"{MODULE}.kernel"
    sources = [MODULE_SOURCES / f for f in (*SOURCE_FILES, "__init__.py")]
    sources += [Path(acceptance.__file__), Path(__file__)]
    fresh = (
        ko.is_file()
        and stamp.is_file()
        and stamp.read_text() == f"{release} {version}"
        and all(s.stat().st_mtime <= ko.stat().st_mtime for s in sources)
    )
    if fresh and not force:
        return ko
    tree = headers_tree(release, version) if matrix is None else matrix_headers_tree(matrix)
    work = out / "src"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copy2(MODULE_SOURCES / name, work / name)
    # The acceptance encodings are x86_64's (and their __mcount_loc entries 8 bytes).
    native = matrix is None or matrix.arch == GUEST_ARCH
    (work / INSNS).write_text(insns_source() if native else "\t.text\n")
    say(f"building {MODULE}.ko for {release} ({version})")
    make_vars = () if matrix is None else (*guest(matrix.arch).kbuild, *compat_vars(tree, matrix))
    _run(["make", "-C", str(tree), f"M={work}", *make_vars, "modules"])
    shutil.copy2(work / f"{MODULE}.ko", ko)
    stamp.write_text(f"{release} {version}")
    say(f"built {ko}")
    return ko


def insns_source() -> str:
    """kk_insns.S: each encoding of ``crosscheck.acceptance.instructions()`` as a function
    ``kk_insn_N`` of its own (never run), after a ``call __fentry__`` recorded in
    __mcount_loc as the compiler records its own: ftrace makes it a NOP at load, and the
    function is not a notrace one to trace_kprobe (kernel/trace/trace_kprobe.c:
    within_notrace_func()), so a kprobe may go on the encoding at +5."""
    lines = [
        "/* Generated by kuprobe/crosscheck/kmod_build.py (insns_source()): do not edit. */",
        "\t.text",
    ]
    for i, (code, text) in enumerate(acceptance.instructions(GUEST_ARCH)):
        name = INSN_SYMBOL.format(i)
        lines += [
            f"\t.globl {name}",
            f"\t.type {name}, @function",
            f"{name}:\t/* {text.replace('*/', '* /')} */",
            "1:\tcall __fentry__",
            '\t.pushsection __mcount_loc, "a"',
            "\t.quad 1b",
            "\t.popsection",
            "\t.byte " + ", ".join(f"{b:#04x}" for b in code),
            f"\t.size {name}, .-{name}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuprobe.crosscheck.kmod_build")
    parser.add_argument("out", nargs="?", type=Path, default=None)
    parser.add_argument(
        "--kernel",
        choices=list(kernels.SERIES),
        default=None,
        help="a kernel series of the matrix (default: the x86_64 guest's)",
    )
    parser.add_argument("--arch", choices=sorted(ALL_GUESTS), default=GUEST_ARCH)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = args.out.resolve() if args.out else DEFAULT_OUT  # make -C runs in the headers
    try:
        build(out, force=args.force, kernel=args.kernel, arch=args.arch)
    except (TargetError, VmError) as e:  # VmError: the matrix's apt lists or a download
        print(f"kuprobe_kmod: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
