"""The one module that imports BCC, lazily, and knows where its kernel headers are.

BCC comes from Debian (python3-bpfcc) and imports only in Debian's python3; PyPI's ``bcc``
is an unrelated package. BCC compiles against a kernel build tree: /lib/modules/$(uname
-r)/build when the distro ships one for this kernel, else the tree kuprobe's set-up lays out
from the distro's current headers, which BCC is pointed to with its own setting,
BCC_KERNEL_SOURCE.

Each compile runs on a thread of its own with a private view of the file system (see
``compile_module``): BCC changes the working directory for the compile, which must not move
the caller's, and it reads all of /proc/kallsyms to answer a question kuprobe already knows
the answer to.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from pathlib import Path
from typing import Any

from kuprobe.errors import ProbeError

log = logging.getLogger("kuprobe")

KUPROBE_HEADERS = Path(os.environ.get("KUPROBE_STATE_DIR", "/var/lib/kuprobe")) / "kernel-headers"


def kernel_build_tree() -> tuple[Path | None, str]:
    """(the build tree BCC will use, how it was found)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return (Path(env), "BCC_KERNEL_SOURCE") if Path(env).is_dir() else (None, "")
    release = os.uname().release
    build = Path("/lib/modules") / release / "build"
    if build.is_dir():
        return build, "the running kernel's headers"
    ours = KUPROBE_HEADERS / release
    if ours.is_dir():
        return ours, "kuprobe's tree from the distro's current headers (not this kernel's)"
    return None, ""


def prepare_env() -> None:
    """Point BCC at the kernel build tree (``kernel_build_tree``) through BCC_KERNEL_SOURCE,
    unless it is /lib/modules' own; raw BCC in this process compiles against it too.
    ProbeError(ENOENT) when there is none."""
    if "BCC_KERNEL_SOURCE" in os.environ:
        return
    tree, _how = kernel_build_tree()
    if tree is None:
        raise ProbeError(
            errno.ENOENT,
            f"no kernel headers for {os.uname().release}: BCC cannot compile",
            hint="run ./run setup (it installs linux-headers and lays out a build tree)",
        )
    if not str(tree).startswith("/lib/modules/"):
        os.environ["BCC_KERNEL_SOURCE"] = str(tree)


def import_bcc() -> Any:
    """``bcc.BPF``, or a ProbeError saying how to get BCC."""
    try:
        from bcc import BPF  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise ProbeError(
            errno.EOPNOTSUPP,
            f"BCC is not importable in this Python ({e})",
            hint="use the project's .venv (made from /usr/bin/python3 with "
            "--system-site-packages) after `apt-get install python3-bpfcc`, or run ./run setup",
        ) from e
    return BPF


def bcc_version() -> tuple[bool, str]:
    """(True, BCC's version) if BCC imports in this Python, else (False, why not)."""
    try:
        import bcc  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        return False, str(e)
    return True, getattr(bcc, "__version__", "?")


# BCC's answer file for its /proc/kallsyms question (package data beside the BPF C).
KALLSYMS_ANSWER = Path(__file__).resolve().parent.parent / "bpf_programs" / "bcc_kallsyms"

CLONE_FS = 0x200
CLONE_NEWNS = 0x20000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

# How the last compile saw the file system: "private" (own working directory and BCC's
# kallsyms question answered), "own-cwd" (own working directory only) or "shared".
last_view = "shared"


def _private_view() -> str:
    """Give the calling thread, which must be a thread made for one compile, its own working
    directory and its own mount namespace in which /proc/kallsyms is KALLSYMS_ANSWER.

    Why: BCC (0.26, ``ClangLoader::parse``) chdir(2)s into the kernel build tree for the
    compile, which moves every thread's working directory (a relative path opened by the
    caller meanwhile would resolve inside the headers tree); unshare(CLONE_FS) keeps that to
    this thread. And BCC's front end (``BFrontendAction::DoMiscWorkAround``) reads and sorts
    all of /proc/kallsyms (~120k lines, ~0.2 s, half of a compile here) only to learn whether
    the kernel has bpf_probe_read_kernel, to fall back to bpf_probe_read before Linux 5.5.
    kuprobe needs the BPF ring buffer (5.8), checked before any compile, so the answer is
    yes; the file says so, and the compiled program is the same instructions
    (tests/live/test_compile_view.py). The mounts are made private first, so the bind mount
    propagates nowhere, and they go with the thread's exit.

    Refused (no CAP_SYS_ADMIN, a seccomp or LSM policy): the compile reads the real
    /proc/kallsyms, only slower; this is logged, and ``last_view`` says which view ran."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p
    ]  # fmt: skip
    if libc.unshare(CLONE_FS | CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        log.debug("compile: unshare(CLONE_NEWNS): %s; kallsyms is read", os.strerror(err))
        if libc.unshare(CLONE_FS) != 0:
            log.debug("compile: unshare(CLONE_FS): %s", os.strerror(ctypes.get_errno()))
            return "shared"
        return "own-cwd"
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        log.debug("compile: private mounts: %s; kallsyms is read", os.strerror(ctypes.get_errno()))
        return "own-cwd"
    src, dst = bytes(KALLSYMS_ANSWER), b"/proc/kallsyms"
    if libc.mount(src, dst, None, MS_BIND, None) != 0:
        log.debug("compile: bind over /proc/kallsyms: %s", os.strerror(ctypes.get_errno()))
        return "own-cwd"
    return "private"


def view_here() -> str:
    """The view a compile would take on this machine (``kuprobe doctor``), tried on a
    throwaway thread: nothing is compiled, and the thread's namespace goes with it."""
    views: list[str] = []
    thread = threading.Thread(target=lambda: views.append(_private_view()), daemon=True)
    thread.start()
    thread.join()
    return views[0]


def compile_module(text: str, cflags: list[str]) -> Any:
    """Compile one BPF module, on a thread made for it (``_private_view``). Raises
    ProbeError with the compiler's message on failure."""
    bpf_cls = import_bcc()
    prepare_env()
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        global last_view
        try:
            last_view = _private_view()
            result.append(bpf_cls(text=text.encode(), cflags=cflags))
        except BaseException as e:  # raised again in the caller's thread
            errors.append(e)

    thread = threading.Thread(target=run, name="kuprobe-bcc", daemon=True)
    thread.start()
    thread.join()
    if errors:
        e = errors[0]
        if isinstance(e, Exception) and not isinstance(e, ProbeError):
            # BCC raises bare Exception on compile failure
            raise ProbeError(errno.EINVAL, f"BPF compile failed: {e}") from e
        raise e
    return result[0]


def kprobe_prog_type() -> int:
    return int(import_bcc().KPROBE)
