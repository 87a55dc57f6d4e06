"""The suite's gates on JUnit XML, run by scripts/test.sh after each pytest run: a run where
tests that can run were skipped, or none ran, fails. A green run must mean the tests ran.

    python -m tests.gate live JUNIT          the host's run: no `live` (or `vm`) test skipped
                                             where this machine can run them (root, BPF, uprobes)
    python -m tests.gate guest JUNIT LABEL   a guest's run: tests ran, and none was skipped
                                             (except the reasoned GUEST_SKIPS)
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Tests a guest may skip, by JUnit name ("classname::name"), each with the reason the guest
# cannot run it. Empty: every test a guest collects must run there (a test that does not
# apply to a guest's arch is deselected by tests/vm/conftest.py, not skipped).
GUEST_SKIPS: dict[str, str] = {}


class GateError(Exception):
    """A run the gate refuses: the message says which tests and why."""


@dataclass
class Cases:
    """The test cases of one JUnit XML file: those run, and those skipped with their reason."""

    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def read_cases(path: Path, keep: Callable[[ET.Element], bool] = lambda case: True) -> Cases:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise GateError(f"no JUnit XML at {path} ({e})") from e
    cases = Cases()
    for case in root.iter("testcase"):
        if not keep(case):
            continue
        name = f"{case.get('classname')}::{case.get('name')}"
        skip = case.find("skipped")
        if skip is None:
            cases.ran.append(name)
        else:
            cases.skipped[name] = skip.get("message", "")
    return cases


def _is_live(case: ET.Element) -> bool:
    """A test marked `live` or `vm` (tests/conftest.py records them as JUnit properties): on
    a host whose kernel has kprobes the `vm` tests run in its own run, and the same rule
    holds for them."""
    return any(
        p.get("name") in ("live", "vm") and p.get("value") == "1" for p in case.iter("property")
    )


def live_gate(path: Path, capable: bool, why: str) -> str:
    """The host's run: where live tests can run (``capable``), none skipped and some ran."""
    cases = read_cases(path, _is_live)
    summary = f"live tests run: {len(cases.ran)}, skipped: {len(cases.skipped)}"
    if not capable:
        return f"{summary} (live tests cannot run here: {why})"
    if cases.skipped:
        raise GateError(
            "this machine can run live tests, yet these were skipped:\n"
            + "\n".join(f"    {n}: {r}" for n, r in cases.skipped.items())
        )
    if not cases.ran:
        raise GateError("this machine can run live tests, yet none ran")
    return summary


def guest_gate(path: Path, label: str, allowed: dict[str, str] | None = None) -> str:
    """A guest's run: some tests ran and none was skipped but the ``allowed`` ones."""
    allowed = GUEST_SKIPS if allowed is None else allowed
    cases = read_cases(path)
    summary = f"{label}: {len(cases.ran) + len(cases.skipped)} tests, {len(cases.skipped)} skipped"
    if not cases.ran:
        raise GateError(f"{label}: no test ran")
    refused = {n: r for n, r in cases.skipped.items() if n not in allowed}
    if refused:
        raise GateError(
            f"{label}: the guest exists to run these, yet they were skipped:\n"
            + "\n".join(f"    {n}: {r}" for n, r in refused.items())
        )
    return summary


def main(argv: Sequence[str]) -> int:
    try:
        if argv[:1] == ["live"] and len(argv) == 2:
            from kuprobe.live.checks import live_uprobes_possible

            capable, why = live_uprobes_possible()
            print(f"    {live_gate(Path(argv[1]), capable, why)}")
        elif argv[:1] == ["guest"] and len(argv) == 3:
            print(f"    {guest_gate(Path(argv[1]), argv[2])}")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except GateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
