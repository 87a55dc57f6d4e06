"""tests/gate.py, the suite's gates on JUnit XML: a run that skipped what it can run, or ran
nothing, fails; before, a guest failed only when every one of its tests was skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gate import GateError, guest_gate, live_gate


def junit(tmp_path: Path, *cases: tuple[str, str | None, str]) -> Path:
    """A JUnit XML file of (name, skip reason or None, marker property or "")."""
    rows = []
    for name, skipped, marker in cases:
        props = f'<properties><property name="{marker}" value="1"/></properties>' if marker else ""
        skip = f'<skipped type="pytest.skip" message="{skipped}"/>' if skipped is not None else ""
        rows.append(f'<testcase classname="tests.t" name="{name}">{props}{skip}</testcase>')
    path = tmp_path / "junit.xml"
    path.write_text(f"<testsuites><testsuite>{''.join(rows)}</testsuite></testsuites>")
    return path


def test_one_skip_in_a_guest_fails_the_run(tmp_path: Path) -> None:
    path = junit(tmp_path, ("a", None, "vm"), ("b", "no /boot/vmlinux", "vm"), ("c", None, ""))
    with pytest.raises(GateError, match=r"tests\.t::b: no /boot/vmlinux"):
        guest_gate(path, "x86_64 guest", allowed={})


def test_a_reasoned_skip_passes(tmp_path: Path) -> None:
    path = junit(tmp_path, ("a", None, "vm"), ("b", "why", "vm"))
    assert guest_gate(path, "g", allowed={"tests.t::b": "a reason"}) == "g: 2 tests, 1 skipped"


def test_a_guest_that_ran_nothing_fails(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="no test ran"):
        guest_gate(junit(tmp_path), "g", allowed={})
    only_skips = junit(tmp_path, ("a", "x", "vm"))
    with pytest.raises(GateError, match="no test ran"):
        guest_gate(only_skips, "g", allowed={"tests.t::a": "a reason"})


def test_no_junit_from_a_guest_fails(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="no JUnit XML"):
        guest_gate(tmp_path / "missing.xml", "g")


def test_a_skipped_live_or_vm_test_fails_where_they_can_run(tmp_path: Path) -> None:
    for marker in ("live", "vm"):
        path = junit(tmp_path, ("a", None, "live"), ("b", "no kprobes", marker))
        with pytest.raises(GateError, match=r"tests\.t::b: no kprobes"):
            live_gate(path, capable=True, why="")
        assert "cannot run here: not root" in live_gate(path, capable=False, why="not root")


def test_unmarked_skips_are_not_the_live_gates(tmp_path: Path) -> None:
    path = junit(tmp_path, ("a", None, "live"), ("b", "needs gdb", ""))
    assert live_gate(path, capable=True, why="") == "live tests run: 1, skipped: 0"


def test_no_live_test_ran_where_they_can(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="none ran"):
        live_gate(junit(tmp_path, ("a", None, "")), capable=True, why="")


def test_no_leftovers_fails_when_it_cannot_look(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """tests/vm/conftest.py's view of the kernel's kprobes: without debugfs's kprobes/list it
    fails; before, it returned [] and ``no_leftovers`` passed without looking."""
    from tests.vm import conftest

    monkeypatch.setattr(conftest, "KPROBES_DEBUGFS", tmp_path / "no-debugfs")
    with pytest.raises(pytest.fail.Exception, match="cannot see the kernel's kprobes"):
        conftest.registered_kprobes()
    (tmp_path / "kprobes").mkdir()
    (tmp_path / "kprobes" / "list").write_text(
        "ffffffff81000000  k  do_sys_openat2+0x0    [FTRACE]\n"
    )
    monkeypatch.setattr(conftest, "KPROBES_DEBUGFS", tmp_path / "kprobes")
    assert conftest.registered_kprobes() == ["ffffffff81000000  k  do_sys_openat2+0x0    [FTRACE]"]
