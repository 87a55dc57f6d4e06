"""The file a library name means, found as the dynamic linker finds it.

A uprobe's path may be a library name (``libc``, ``c``, ``libssl.so.3``): ``find_library``
finds it as the dynamic linker would (elf/dl-load.c: _dl_map_object(): /etc/ld.so.cache, then
the default directories), keeping the files built for the wanted arch, or, for one process,
among the files that process has mapped, under its own root (``/proc/PID/root``: a
container's file, not the host's). A name may also be a program's (one on PATH).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable, Sequence

from kuprobe.arch import ARCHES, host_arch
from kuprobe.elf import open_image
from kuprobe.errors import ProbeError

LD_SO_CACHE = "/etc/ld.so.cache"
# sysdeps/generic/dl-cache.h: CACHEMAGIC_VERSION_NEW
_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
# sysdeps/generic/dl-cache.h: the directories searched after the cache (and ldconfig's own).
DEFAULT_LIB_DIRS = (
    "/lib/{triplet}",
    "/usr/lib/{triplet}",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)


def is_library_name(path: str) -> bool:
    """A bare name (``libc``, ``c``, ``libssl.so.3``) rather than a path: no ``/`` in it."""
    return "/" not in path


def _stem_matches(name: str) -> Callable[[str], bool]:
    """Which file names ``name`` means: ``c`` and ``libc`` mean ``libc.so`` and
    ``libc.so.N``; ``libssl.so`` means it and ``libssl.so.N``; ``libssl.so.3`` only itself."""
    stem = name if name.startswith("lib") or ".so" in name else f"lib{name}"
    if ".so" not in stem:
        stem += ".so"

    def matches(base: str) -> bool:
        if base == name:  # the file's own name (a program: "python3.11", "bash")
            return True
        return base == stem or (base.startswith(stem + ".") and base[len(stem) + 1 :][:1].isdigit())

    return matches


def ld_so_cache(path: str = LD_SO_CACHE) -> list[str]:
    """The library paths listed in the dynamic linker's cache, in its order (the new format,
    sysdeps/generic/dl-cache.h: struct cache_file_new and file_entry_new; ``ldconfig -p``
    prints the same list)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    base = data.find(_CACHE_MAGIC)
    if base < 0:
        return []
    nlibs, _len_strings = struct.unpack_from("<II", data, base + len(_CACHE_MAGIC))
    entries = base + 48  # the header: magic+version, nlibs, len_strings, flags, pad, ext, unused
    out: list[str] = []
    for i in range(nlibs):
        _flags, _key, value = struct.unpack_from("<iII", data, entries + 24 * i)
        end = data.find(b"\0", value)
        if 0 < value < len(data) and end > value:
            out.append(data[value:end].decode("utf-8", "replace"))
    return out


def _mapped_files(pid: int) -> dict[str, str]:
    """The files process ``pid`` has mapped (/proc/PID/maps), each with a path that opens
    that very file from here: ``/proc/PID/root`` + its name when that is the same inode (a
    container: maps names it as the container sees it), else ``/proc/PID/map_files/RANGE``
    (a chroot, whose maps name it as we see it, or a file since renamed)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ProbeError(errno.ESRCH, f"no process {pid}") from None
    except PermissionError:
        raise ProbeError(
            errno.EACCES, f"cannot read /proc/{pid}/maps", hint="run as root"
        ) from None
    out: dict[str, str] = {}
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5].endswith(" (deleted)"):
            continue
        name, inode = parts[5], int(parts[4])
        if name in out:
            continue
        inside = f"/proc/{pid}/root{name}"
        try:
            same = os.stat(inside).st_ino == inode
        except OSError:
            same = False
        out[name] = inside if same else f"/proc/{pid}/map_files/{parts[0]}"
    return out


def _elf_arch(path: str) -> str | None:
    try:
        return open_image(path).arch
    except ProbeError:
        return None


def _distinct(paths: Iterable[str]) -> list[str]:
    """``paths`` that exist, one per file (a symlink and its target are one file)."""
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(p)
    return out


def _program_on_path(name: str) -> str | None:
    """The first ELF executable called ``name`` on PATH (a shell-script shim is skipped)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            try:
                with open(candidate, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        return candidate
            except OSError:
                continue
    return None


def find_library(
    name: str,
    *,
    pid: int | None = None,
    arch: str | None = None,
    cache: str = LD_SO_CACHE,
    dirs: Sequence[str] | None = None,
) -> str:
    """The file a library name means, as the dynamic linker would find it.

    Without ``pid``: the entries of /etc/ld.so.cache whose name matches, else the default
    directories; of those, the ones built for ``arch`` (the host's by default: this machine
    also keeps i386 and x32 C libraries). With ``pid``: the matching files that process has
    mapped, opened through ``/proc/PID/root`` (so a container's library is the container's
    file). A name may also be a program's: the process's own file, or one on PATH (before
    a library whose name only starts with it: "python3.11" is the program, not
    libpython3.11.so.1.0). No match, or several different files, is ``ENOENT`` listing what
    was found.
    ``cache`` and ``dirs`` replace the linker's cache and default directories.
    """
    if not name or "\0" in name:
        raise ProbeError(errno.EINVAL, "a library name is empty")
    matches = _stem_matches(name)
    if pid is not None:
        mapped = _mapped_files(pid)
        # the file's own name first (a program: "python3.11"), then library names
        hits = [p for p in mapped if os.path.basename(p) == name] or [
            p for p in mapped if matches(os.path.basename(p))
        ]
        found = _distinct(mapped[p] for p in hits)
        if len(found) == 1:
            return found[0]
        libs = sorted({os.path.basename(p) for p in mapped if ".so" in os.path.basename(p)})
        if not found:
            raise ProbeError(
                errno.ENOENT,
                f"process {pid} has no library {name!r} mapped",
                hint=f"it maps: {', '.join(libs) or 'no libraries'}",
            )
        raise ProbeError(
            errno.ENOENT,
            f"{name!r} is ambiguous in process {pid}: {', '.join(hits)}",
            hint="give the file name (e.g. libssl.so.3) or a path",
        )
    want = arch or (host.name if (host := host_arch()) is not None else None)
    cached = [p for p in ld_so_cache(cache) if matches(os.path.basename(p))]
    exact = [p for p in cached if os.path.basename(p) == name]
    if not exact and (program := _program_on_path(name)) is not None:
        return program  # a program on PATH ("bash", "python3.11"), as bpftrace's uprobe:bash:
    candidates = _distinct(exact or cached)
    where = cache
    if not candidates:
        triplet = ARCHES[want].triplet if want is not None and want in ARCHES else ""
        if dirs is None:
            dirs = [d.format(triplet=triplet) for d in DEFAULT_LIB_DIRS if triplet or "{" not in d]
        listed: list[str] = []
        for d in dirs:
            try:
                listed += [os.path.join(d, f) for f in sorted(os.listdir(d)) if matches(f)]
            except OSError:
                continue
        candidates = _distinct(listed)
        where = ", ".join(dirs)
    fitting = [p for p in candidates if want is None or _elf_arch(p) == want]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        others = f" (only for other arches: {', '.join(candidates)})" if candidates else ""
        raise ProbeError(
            errno.ENOENT,
            f"no library {name!r} for {want or 'this machine'} in {where}{others}",
            hint="give the path of the file, or install the library",
        )
    raise ProbeError(
        errno.ENOENT,
        f"{name!r} is ambiguous: {', '.join(fitting)}",
        hint="give the file name with its version (e.g. libssl.so.3) or a path",
    )


def find_target(path: str, *, pid: int | None = None, arch: str | None = None) -> str:
    """A uprobe's file: ``path`` itself, or the library that a bare name means."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ProbeError(errno.EINVAL, "a Uprobe needs the path of an executable file")
    path = str(path)
    return find_library(path, pid=pid, arch=arch) if is_library_name(path) else path
