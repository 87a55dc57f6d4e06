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
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

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
from kuprobe.vm.guests import guest
from kuprobe.vm.image import cache_dir, resolve_inputs


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


def guest_kernel() -> tuple[str, str]:
    """(release, Debian version) of the x86_64 guest's kernel, from the apt lists."""
    inputs = resolve_inputs(GUEST_ARCH)
    return inputs.kernel_release, inputs.kernel_version


def build(out: Path = DEFAULT_OUT, *, force: bool = False) -> Path:
    """``<out>/kuprobe_kmod.ko`` for the guest's kernel, built if missing or stale."""
    release, version = guest_kernel()
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
    tree = headers_tree(release, version)
    work = out / "src"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copy2(MODULE_SOURCES / name, work / name)
    (work / INSNS).write_text(insns_source())
    say(f"building {MODULE}.ko for {release} ({version})")
    _run(["make", "-C", str(tree), f"M={work}", "modules"])
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
    out = Path(argv[0]).resolve() if argv else DEFAULT_OUT  # make -C runs in the headers
    try:
        build(out)
    except TargetError as e:
        print(f"kuprobe_kmod: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
