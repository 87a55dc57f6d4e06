"""The one module that imports BCC, lazily, and knows where its kernel headers are.

BCC comes from Debian (python3-bpfcc) and imports only in Debian's python3; PyPI's ``bcc``
is an unrelated package. BCC compiles against a kernel build tree: /lib/modules/$(uname
-r)/build when the distro ships one for this kernel, else the tree kuprobe's set-up lays out
from the distro's current headers, which BCC is pointed to with its own setting,
BCC_KERNEL_SOURCE.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from kuprobe.errors import ProbeError

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


def _prepare_env() -> None:
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


def compile_module(text: str, cflags: list[str]) -> Any:
    """Compile one BPF module. Raises ProbeError with the compiler's message on failure."""
    bpf_cls = import_bcc()
    _prepare_env()
    try:
        return bpf_cls(text=text.encode(), cflags=cflags)
    except Exception as e:  # BCC raises bare Exception on compile failure
        raise ProbeError(errno.EINVAL, f"BPF compile failed: {e}") from e


def kprobe_prog_type() -> int:
    return int(import_bcc().KPROBE)
