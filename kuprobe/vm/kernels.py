"""The kernel matrix: Debian's kernels by series and arch, resolved from apt lists at run time.

A series (``5.10``, ``6.1``, ``6.12``) is the kernel of one Debian suite (bullseye, bookworm,
trixie); within it the newest ``linux-image-<abi>-<flavour>`` of the arch's flavour (amd64,
arm64, 686-pae) is picked from the suite's Packages lists, so nothing checked in names an ABI
and a bump in the archive is picked up by the next ``apt-get update``.

The lists are the project's own: a private apt configuration under ``<cache>/apt`` (its own
sources, lists and archive cache; the host's sources with the host's suite name replaced by
each series' suite), never the system's sources. ``APT_CONFIG`` points apt-get at it for
``update`` and ``download``.
"""

from __future__ import annotations

import fcntl
import gzip
import lzma
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kuprobe.vm.guests import guest
from kuprobe.vm.host import VmError, capture, run_logged, say
from kuprobe.vm.image import host_sources

# The kernel series of the matrix and the Debian suite that ships each one.
SERIES: dict[str, str] = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie"}
# The matrix's lists are updated when older than this (an ABI bump is seen within a day).
LISTS_MAX_AGE = 24 * 3600
APT_HELPER = "/usr/lib/apt/apt-helper"
OS_RELEASE = Path("/etc/os-release")
LISTS_NAME = re.compile(
    r"_dists_(?P<suite>[a-z]+)(?:-[a-z]+)?_main_binary-(?P<arch>[a-z0-9]+)_Packages"
    r"(?:\.(?P<comp>lz4|gz|xz))?$"
)


def suite_of(series: str) -> str:
    try:
        return SERIES[series]
    except KeyError:
        known = ", ".join(SERIES)
        raise VmError(f"no kernel series {series!r} (known: {known})") from None


# --- Debian version order (dpkg's lib/dpkg/version.c: verrevcmp) ---------------------------


def _order(c: str) -> int:
    if c == "" or c.isdigit():
        return 0
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i] if i < len(a) else "")
            bc = _order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(v: str) -> tuple[int, str, str]:
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as Debian version `a` sorts before, with, after `b` (dpkg --compare-versions)."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


class _Version:
    """A Debian version as a sort key."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Version) -> bool:
        return compare_versions(self.text, other.text) < 0


# --- Packages lists -------------------------------------------------------------------------

WANTED_PREFIXES = ("linux-image-", "linux-headers-", "linux-kbuild-", "busybox-static\n", "libc6\n")


def parse_packages(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a Packages file that the catalogue reads (kernels, headers, kbuild,
    busybox-static), each as {field: value}."""
    for chunk in text.split("\n\n"):
        chunk = chunk.lstrip("\n")
        if not chunk.startswith("Package: "):
            continue
        head = chunk[len("Package: ") :]
        if not head.startswith(WANTED_PREFIXES):
            continue
        fields: dict[str, str] = {}
        key = ""
        for line in chunk.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        yield fields


def _read_list(path: Path, comp: str | None) -> str:
    if comp is None:
        return path.read_text(errors="replace")
    if comp == "gz":
        return gzip.decompress(path.read_bytes()).decode(errors="replace")
    if comp == "xz":
        return lzma.decompress(path.read_bytes()).decode(errors="replace")
    return capture([APT_HELPER, "cat-file", str(path)])  # lz4: apt's own reader


def suite_packages(lists: Path, suite: str, deb_arch: str) -> list[dict[str, str]]:
    """Every stanza of interest in `suite` (with its -updates and -security) for `deb_arch`."""
    stanzas: list[dict[str, str]] = []
    for path in sorted(lists.glob("*_Packages*")):
        m = LISTS_NAME.search(path.name)
        if m and m["suite"] == suite and m["arch"] == deb_arch:
            stanzas += parse_packages(_read_list(path, m["comp"]))
    return stanzas


@dataclass(frozen=True)
class Kernel:
    """One kernel of the matrix, as the apt lists name it now."""

    series: str  # "5.10"
    suite: str  # "bullseye"
    arch: str  # kuprobe's guest arch: x86_64, arm64, i386
    deb_arch: str
    release: str  # uname -r: <abi>-<flavour>
    version: str  # the Debian version of its packages
    headers_common: str  # linux-headers-<abi>-common
    kbuild: str  # linux-kbuild-<...>, kbuild's host tools
    busybox_version: str  # busybox-static of the same suite and arch

    @property
    def image_package(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def headers_package(self) -> str:
        return f"linux-headers-{self.release}"


def _depends_names(stanza: dict[str, str]) -> list[str]:
    names = []
    for alt in re.split(r"[,|]", stanza.get("Depends", "")):
        name = alt.strip().split(" ", 1)[0].split(":", 1)[0]
        if name:
            names.append(name)
    return names


def kernel_candidates(
    stanzas: list[dict[str, str]], series: str, flavour: str
) -> list[tuple[str, str]]:
    """(abi, version) of each ``linux-image-<abi>-<flavour>`` of `series` in `stanzas`, the
    newest (highest package version) first: not -dbg, -unsigned, nor another flavour such as
    cloud or rt; a suite's backports of another series are left out by the ABI's prefix."""
    pattern = re.compile(
        rf"linux-image-(?P<abi>{re.escape(series)}\.[0-9][0-9a-z.+~]*(?:-[0-9][0-9.]*)?)"
        rf"-{re.escape(flavour)}"
    )
    found = {
        (m["abi"], s.get("Version", ""))
        for s in stanzas
        if (m := pattern.fullmatch(s.get("Package", "")))
    }
    return sorted(found, key=lambda av: _Version(av[1]), reverse=True)


def _headers_deps(stanzas: list[dict[str, str]], release: str, version: str) -> list[str] | None:
    """The dependencies of ``linux-headers-<release>`` at `version`, None if not listed."""
    for s in stanzas:
        if s.get("Package") == f"linux-headers-{release}" and s.get("Version") == version:
            return _depends_names(s)
    return None


def resolve(arch: str, series: str, lists: Path, skip: frozenset[str] = frozenset()) -> Kernel:
    """The newest kernel of `series` for guest `arch` whose headers are listed too, from the
    Packages lists in `lists`, leaving out the ``package:arch=version`` in `skip` (listed, but
    not served by the archive)."""
    g = guest(arch)
    suite = suite_of(series)
    stanzas = suite_packages(lists, suite, g.deb_arch)
    if not stanzas:
        raise VmError(f"no {suite} {g.deb_arch} Packages lists in {lists}")
    busybox = [
        v
        for s in stanzas
        if s.get("Package") == "busybox-static"
        and f"busybox-static:{g.deb_arch}={(v := s.get('Version', ''))}" not in skip
    ]
    if not busybox:
        raise VmError(f"no served busybox-static in the {suite} {g.deb_arch} lists")
    for abi, version in kernel_candidates(stanzas, series, g.flavour):
        release = f"{abi}-{g.flavour}"
        deps = _headers_deps(stanzas, release, version)
        if f"linux-image-{release}:{g.deb_arch}={version}" in skip or deps is None:
            continue
        common = [d for d in deps if d.startswith("linux-headers-") and d.endswith("-common")]
        kbuild = [d for d in deps if d.startswith("linux-kbuild-")]
        if len(common) != 1 or len(kbuild) != 1:
            raise VmError(f"linux-headers-{release}: expected one -common and one kbuild "
                          f"dependency, got {common} {kbuild}")  # fmt: skip
        return Kernel(
            series=series,
            suite=suite,
            arch=g.arch,
            deb_arch=g.deb_arch,
            release=release,
            version=version,
            headers_common=common[0],
            kbuild=kbuild[0],
            busybox_version=max(busybox, key=_Version),
        )
    raise VmError(f"the {suite} lists name no served linux-image-{series}.*-{g.flavour} "
                  "with its headers")  # fmt: skip


def package_version(lists: Path, suite: str, deb_arch: str, package: str) -> str:
    """The newest version of `package` (one the catalogue reads) in `suite` for `deb_arch`."""
    versions = [
        s.get("Version", "")
        for s in suite_packages(lists, suite, deb_arch)
        if s.get("Package") == package
    ]
    if not versions:
        raise VmError(f"no {package} in the {suite} {deb_arch} lists")
    return max(versions, key=_Version)


# --- the private apt configuration ----------------------------------------------------------


def _host_codename() -> str:
    for line in OS_RELEASE.read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise VmError(f"{OS_RELEASE} names no VERSION_CODENAME")


def private_sources(host_text: str, host_suite: str, suite: str) -> str:
    """The host's sources with its suite (and -updates, -security) renamed to `suite`."""
    return re.sub(rf"\b{re.escape(host_suite)}\b", suite, host_text)


class Apt:
    """apt-get with the project's own sources and lists under `root` (``<cache>/apt``)."""

    ARCHES = ("amd64", "arm64", "i386")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lists = root / "lists"
        self.config = root / "apt.conf"

    def _write_config(self) -> None:
        parts = self.root / "sources.list.d"
        parts.mkdir(parents=True, exist_ok=True)
        host = host_sources()
        ext = ".sources" if host.suffix == ".sources" else ".list"
        codename = _host_codename()
        for suite in SERIES.values():
            text = private_sources(host.read_text(), codename, suite)
            (parts / f"{suite}{ext}").write_text(text)
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        arches = " ".join(f'"{a}";' for a in self.ARCHES)
        self.config.write_text(
            "// Written by kuprobe (kuprobe/vm/kernels.py): the kernel matrix's own apt lists.\n"
            'Dir::Etc::sourcelist "/dev/null";\n'
            f'Dir::Etc::sourceparts "{parts}";\n'
            f'Dir::State::Lists "{self.lists}";\n'
            f'Dir::Cache "{self.root / "cache"}";\n'
            f"APT::Architectures {{ {arches} }};\n"
            'Acquire::Languages "none";\n'
            'Acquire::Check-Valid-Until "false";\n'
        )

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "APT_CONFIG": str(self.config)}

    def _stamp(self) -> Path:
        return self.root / "updated"

    @property
    def unserved_file(self) -> Path:
        """``package:arch=version`` lines the lists name but the archive answered 404 for (the
        lists of a mirror may keep an old ABI's image of one arch); forgotten at an update."""
        return self.root / "unserved"

    def unserved(self) -> frozenset[str]:
        f = self.unserved_file
        return frozenset(f.read_text().split()) if f.is_file() else frozenset()

    def ensure_lists(self, *, max_age: float = LISTS_MAX_AGE, refresh: bool = False) -> Path:
        """The lists directory, updated (``apt-get update``) if missing, old or `refresh`."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stamp = self._stamp()
            fresh = stamp.is_file() and time.time() - stamp.stat().st_mtime < max_age
            if refresh or not fresh:
                self._write_config()
                say(f"apt-get update: the kernel matrix's lists ({', '.join(SERIES.values())})")
                run_logged(["apt-get", "update", "-q"], log=self.root / "update.log", env=self.env)
                self.unserved_file.unlink(missing_ok=True)
                stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        return self.lists

    def download(self, package: str, version: str, deb_arch: str, debs: Path) -> Path:
        """``package:deb_arch`` at `version`, fetched once into `debs`."""
        debs.mkdir(parents=True, exist_ok=True)
        deb = debs / f"{package}_{version}_{deb_arch}.deb".replace(":", "%3a")
        if not deb.is_file():
            say(f"downloading {package} {version} ({deb_arch})")
            spec = (
                f"{package}:{deb_arch}={version}" if deb_arch != "all" else f"{package}={version}"
            )
            log = self.root / "logs" / f"download-{package}_{deb_arch}.log"
            log.parent.mkdir(exist_ok=True)
            log.unlink(missing_ok=True)  # its tail, in a VmError, is this download's only
            run_logged(
                ["sh", "-c", 'cd "$1" && apt-get download -q "$2"', "download", str(debs), spec],
                log=log,
                env=self.env,
            )
        if not deb.is_file():
            raise VmError(f"apt-get download did not produce {deb}")
        return deb


def apt(cache: Path) -> Apt:
    return Apt(cache / "apt")


# How many listed kernels of a series are tried, newest first, before giving up.
SERVED_TRIES = 8


def resolve_kernel(arch: str, series: str, cache: Path, *, refresh: bool = False) -> Kernel:
    """The kernel `series` of `arch` now: the private lists updated if needed, then read; the
    newest whose image (and busybox-static) the archive serves (downloaded into
    ``<cache>/debs`` to know: the minimal guest needs them anyway)."""
    suite_of(series)
    a = apt(cache)
    lists = a.ensure_lists(refresh=refresh)
    for _ in range(SERVED_TRIES):
        kernel = resolve(arch, series, lists, a.unserved())
        try:
            for package, version in (
                (kernel.image_package, kernel.version),
                ("busybox-static", kernel.busybox_version),
            ):
                a.download(package, version, kernel.deb_arch, cache / "debs")
        except VmError as exc:
            if "404" not in str(exc):
                raise
            say(f"{package} {version} is listed but not served: skipped")
            with a.unserved_file.open("a") as f:
                f.write(f"{package}:{kernel.deb_arch}={version}\n")
            continue
        return kernel
    raise VmError(f"none of the {SERVED_TRIES} newest {series} kernels of {arch} is served")
