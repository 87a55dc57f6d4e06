"""``kuprobe vm``: build the kprobe VM, run the VM tests in it, run any command in it."""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from kuprobe.arch import host_arch
from kuprobe.errors import KuprobeError
from kuprobe.targets import TargetError
from kuprobe.vm.boot import Bootable, run_in_guest
from kuprobe.vm.guests import ALL_GUESTS, DEFAULT_ARCH
from kuprobe.vm.host import Stopwatch, VmError, say
from kuprobe.vm.image import PROJECT_ROOT, Image, cache_dir, ensure_image
from kuprobe.vm.kernels import SERIES
from kuprobe.vm.minimal import ensure_minimal

DEFAULT_TIMEOUT = 600
DEFAULT_JUNIT = PROJECT_ROOT / "build" / "vm" / "junit.xml"  # junit-arm64.xml for arm64
DEFAULT_TESTS = ("tests/vm",)
HOST_SUITE_TESTS = ("tests/live", "tests/cli")
VENV_PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"
# The guest's root is read-only: targets a test builds on demand go to its tmpfs.
HOST_SUITE_ENV = {"KUPROBE_TARGET_CACHE": "/tmp/kuprobe-targets"}


def add_parser(subparsers: Any) -> None:
    """Add ``vm`` and its subcommands to the ``kuprobe`` command's subparsers."""
    vm = subparsers.add_parser(
        "vm",
        help="build and boot the kprobe VM (qemu): run the VM tests or any command in it",
        description="A Debian 12 guest under qemu TCG whose kernel has kprobes. The image is "
        f"built once and cached (in {cache_dir()}, or $KUPROBE_VM_CACHE) under a key of "
        "its inputs. Host tools come from scripts/setup-vm.sh.",
    )
    vm.set_defaults(func=lambda args: (vm.print_help(), 2)[1])
    sub = vm.add_subparsers(dest="vm_command", metavar="SUBCOMMAND")

    build = sub.add_parser("build", help="build the guest image (nothing to do when cached)")
    build.add_argument("--rebuild", action="store_true", help="build even if cached")
    _arch_option(build)
    _kernel_option(build)
    build.set_defaults(func=_build)

    test = sub.add_parser(
        "test",
        help="run `pytest -m vm` in the guest; exits with pytest's status",
        description="Boot the guest and run `python3 -m pytest -m vm` there on the shared "
        "project (default: tests/vm); JUnit XML comes back to the host.",
    )
    _boot_options(test)
    test.add_argument(
        "--host-suite",
        action="store_true",
        help="run the host's tests instead (`pytest -m 'not vm'`, default: tests/live "
        "tests/cli) with the checkout's .venv, as on a user's machine whose kernel has kprobes "
        "(a guest of this host's arch only: the venv is the host's)",
    )
    test.add_argument(
        "--junitxml",
        type=Path,
        default=None,
        help=f"where the JUnit XML results go (default: {DEFAULT_JUNIT}, "
        "junit-ARCH.xml for another arch)",
    )
    test.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        metavar="PYTEST-ARGS",
        help="passed to pytest (after `--` if they start with `-`); default: tests/vm",
    )
    test.set_defaults(func=_test)

    run = sub.add_parser(
        "run",
        help="run COMMAND in the guest; exits with its status",
        description="Boot the guest and run COMMAND as root with the project (and each "
        "--share DIR) shared at its own path; `python3 -c 'import kuprobe'` works there.",
    )
    _boot_options(run)
    run.add_argument(
        "--share",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also share DIR, at the same path (repeatable)",
    )
    _kernel_option(run)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    run.set_defaults(func=_run)


def _arch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        choices=sorted(ALL_GUESTS),
        default=DEFAULT_ARCH,
        help="the guest's architecture (default: %(default)s; i386 with --kernel only)",
    )


def _kernel_option(parser: argparse.ArgumentParser) -> None:
    suites = ", ".join(f"{series}: {suite}" for series, suite in SERIES.items())
    parser.add_argument(
        "--kernel",
        choices=list(SERIES),
        default=None,
        metavar="SERIES",
        help=f"a minimal guest (kernel, initramfs, busybox; no Debian root, no BCC) booting "
        f"the newest Debian kernel of SERIES ({suites}); default: the full guest",
    )


def _guest_image(args: argparse.Namespace, *, rebuild: bool = False) -> Bootable:
    """The full guest of --arch, or its minimal guest of --kernel."""
    if args.kernel is not None:
        return ensure_minimal(args.arch, args.kernel, cache=cache_dir(), rebuild=rebuild)
    return ensure_image(rebuild=rebuild, arch=args.arch)


def _boot_options(parser: argparse.ArgumentParser) -> None:
    _arch_option(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds before the VM is killed (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the qemu command and boot")


def _strip_dashes(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args


def _guarded(body: Any) -> int:
    try:
        return int(body())
    except KuprobeError as exc:  # VmError, TargetError
        print(f"kuprobe vm: error: {exc}", file=sys.stderr)
        return 1


def _build(args: argparse.Namespace) -> int:
    def body() -> int:
        image = _guest_image(args, rebuild=args.rebuild)
        print(image.path)
        return 0

    return _guarded(body)


def _run(args: argparse.Namespace) -> int:
    command = _strip_dashes(list(args.command))
    if not command:
        print("kuprobe vm run: error: no COMMAND (kuprobe vm run -- uname -a)", file=sys.stderr)
        return 2

    def body() -> int:
        image = _guest_image(args)
        result = run_in_guest(
            image, command, shares=args.share, timeout=args.timeout, verbose=args.verbose
        )
        return result.status

    return _guarded(body)


def junit_summary(path: Path) -> str:
    """The "N tests, F failures, E errors, S skipped" line of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return (
        f"{total['tests']} tests, {total['failures']} failures, {total['errors']} errors, "
        f"{skipped} skipped"
    )


def _test(args: argparse.Namespace) -> int:
    pytest_args = _strip_dashes(list(args.pytest_args))
    if args.host_suite:
        python, marker = str(VENV_PYTHON), "not vm"
        pytest_args = pytest_args or list(HOST_SUITE_TESTS)
    else:
        python, marker = "python3", "vm"
        pytest_args = pytest_args or list(DEFAULT_TESTS)
    command = [
        python, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider",
        "--junitxml=/run/kuprobe/junit.xml", *pytest_args,
    ]  # fmt: skip

    def body() -> int:
        here = host_arch()
        if args.host_suite and (here is None or here.name != args.arch):
            raise VmError(f"--host-suite runs with the checkout's .venv, so in the guest of "
                          f"this host's arch, not the {args.arch} one")  # fmt: skip
        if args.host_suite and not VENV_PYTHON.exists():
            raise VmError(f"no {VENV_PYTHON}: run `sudo ./run setup` first")
        image = ensure_image(arch=args.arch)
        default = DEFAULT_JUNIT.with_name(f"junit-{args.arch}.xml")
        junit: Path = args.junitxml or (DEFAULT_JUNIT if args.arch == DEFAULT_ARCH else default)
        junit = junit.resolve()
        result = run_in_guest(
            image,
            command,
            cwd=PROJECT_ROOT,
            env=HOST_SUITE_ENV if args.host_suite else predictions_env(image, DEFAULT_JUNIT.parent),
            timeout=args.timeout,
            verbose=args.verbose,
            outputs={"junit.xml": junit},
        )
        if "junit.xml" in result.outputs:
            say(f"JUnit XML: {junit} ({junit_summary(junit)})")
        else:
            say("no JUnit XML came back from the guest")
        return result.status

    return _guarded(body)


def predictions_env(image: Image, out_dir: Path) -> dict[str, str]:
    """The model's predictions for the guest's uprobe scenarios, computed here for the kernel
    the image boots, into ``out_dir``; the guest's environment naming them
    (tests/vm/test_crosscheck_guest.py compares its live side with them). So nothing checked
    in names the kernel ABI of an image, and a new one in Debian's archive needs nothing
    regenerated."""
    from kuprobe.crosscheck.guest import PREDICTIONS_ENV, write_predictions

    targets = PROJECT_ROOT / "tests" / "targets"
    built = subprocess.run(["bash", str(targets / "build.sh")], capture_output=True, text=True)
    if built.returncode != 0:
        raise TargetError(f"tests/targets/build.sh failed:\n{built.stdout}{built.stderr}")
    out = out_dir / f"predictions-{image.arch}.json"
    clock = Stopwatch()
    write_predictions(image.arch, image.kernel_release, targets / "build", out)
    say(f"the model's predictions for {image.kernel_release} ({clock}): {out}")
    return {PREDICTIONS_ENV: str(out)}
