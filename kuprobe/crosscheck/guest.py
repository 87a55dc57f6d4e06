"""The live side of scenarios in a qemu guest (``kuprobe.vm``); the model on this host.

``run_in_vm(specs, arch)`` builds the ARCH programs here (kuprobe.targets), boots the ARCH guest
once with their folder and the scenario files shared, and runs

    python3 -m kuprobe.crosscheck.guest --arch ARCH --targets DIR --out FILE SCENARIO...

there: each scenario's live side (``run_live``: uprobes on the guest's kernel, limited to
the driven process), written back as JSON (``GuestReport``). The model then runs here, on the
very same files, with the semantics of the guest's kernel release.

Why the model runs on the host (measured, 2 shared cores): the 37 arm64 scenarios'
model takes 3-8 s here; ``kuprobe crosscheck --side vm --arch arm64`` in all ~4 min, of which
the guest (boot ~10-20 s, then the live side: the first scenario ~27 s with BCC's import and
compile, the others 0.5-6 s each) is ~2-3.5 min. The same model run under qemu's user-mode TCG
(``qemu-x86_64-static``, a stand-in for Unicorn inside a TCG guest) took 13x as long (8
scenarios: 2.1 s natively, 27.8 s under TCG). The x86_64 guest's Debian unicorn 2.0.1 runs the
model (one register at a time where 2.0 has no batch read: kuprobe/model/emu.py), which the
kprobe scenarios use; the arm64 image's imports distutils, which that image lacks. So the guest
sends back only its live observations. ``--model`` below runs the model in the guest as well,
where Unicorn imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuprobe.crosscheck.observe import Observation
from kuprobe.crosscheck.runs import decode_observation, encode_observation
from kuprobe.crosscheck.sides import run_live, run_model
from kuprobe.crosscheck.spec import NEEDS_KPROBES, ScenarioSpec
from kuprobe.crosscheck.target import target_path
from kuprobe.errors import KuprobeError

GUEST_OUT = "crosscheck.json"  # in the guest's job directory, /run/kuprobe
# Seconds for one boot: boot (~1-2 min for arm64 under TCG) plus each scenario's live side
# (a BCC compile ~6 s there, attaching, detaching ~0.1 s per probe, the program).
BOOT_SECONDS = 240.0
SCENARIO_SECONDS = 60.0


def model_semantics(release: str) -> Any:
    """The model's semantics for a live kernel ``release`` (``uname -r``): the rules of that
    release (kuprobe.model.semantics). Every result says which it used."""
    from kuprobe.model.semantics import for_kernel

    return for_kernel(release)


@dataclass
class GuestScenario:
    """One scenario's live side in the guest (and its model side, if asked for there)."""

    scenario: str
    live: Observation | None = None
    model: Observation | None = None
    error: str | None = None
    live_seconds: float = 0.0
    model_seconds: float = 0.0


@dataclass
class GuestReport:
    """What the guest sends back: its kernel and each scenario's observations."""

    release: str
    machine: str
    semantics: str = ""
    scenarios: list[GuestScenario] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "machine": self.machine,
            "semantics": self.semantics,
            "scenarios": [
                {
                    "scenario": s.scenario,
                    "live": None if s.live is None else encode_observation(s.live),
                    "model": None if s.model is None else encode_observation(s.model),
                    "error": s.error,
                    "live_seconds": round(s.live_seconds, 3),
                    "model_seconds": round(s.model_seconds, 3),
                }
                for s in self.scenarios
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuestReport:
        return cls(
            release=str(data["release"]),
            machine=str(data["machine"]),
            semantics=str(data.get("semantics", "")),
            scenarios=[
                GuestScenario(
                    scenario=str(s["scenario"]),
                    live=None if s["live"] is None else decode_observation(s["live"]),
                    model=None if s["model"] is None else decode_observation(s["model"]),
                    error=s["error"],
                    live_seconds=float(s["live_seconds"]),
                    model_seconds=float(s["model_seconds"]),
                )
                for s in data["scenarios"]
            ],
        )


def observe_here(
    specs: Sequence[ScenarioSpec], arch: str, targets: Path, *, model: bool = False
) -> GuestReport:
    """Each scenario's live side on this kernel (and the model's, with ``model``), on the ARCH
    programs in ``targets/ARCH/``. A kprobe scenario runs both sides here: its model executes
    the test module as this kernel runs it (read back from it). A scenario that fails says why;
    the others still run."""
    from kuprobe.crosscheck.scenarios import SCENARIOS, Scenario, from_spec

    uname = os.uname()
    report = GuestReport(uname.release, uname.machine)
    semantics = model_semantics(uname.release)
    report.semantics = str(semantics)
    for spec in specs:
        exe = targets / arch / spec.program
        one = GuestScenario(spec.name)
        start = time.monotonic()
        scenario: Scenario = SCENARIOS.get(spec.name) or from_spec(spec)
        try:
            if spec.needs == NEEDS_KPROBES:
                one.model, one.live = scenario.observe(arch)
                one.live_seconds = time.monotonic() - start
            else:
                one.live = run_live(exe, spec)
                one.live_seconds = time.monotonic() - start
            if model and one.model is None:
                start = time.monotonic()
                one.model = run_model(exe, spec, semantics=semantics)
                one.model_seconds = time.monotonic() - start
        except (KuprobeError, OSError) as e:
            one.error = f"{type(e).__name__}: {e}"
        print(
            f"{spec.name} on {arch}: live {one.live_seconds:.1f} s"
            + (f", model {one.model_seconds:.1f} s" if model else "")
            + (f", error: {one.error}" if one.error else ""),
            file=sys.stderr,
            flush=True,
        )
        report.scenarios.append(one)
    return report


def predict(
    specs: Sequence[ScenarioSpec], arch: str, targets: Path, release: str
) -> dict[str, Any]:
    """The model's observations of each scenario on the ARCH programs in ``targets/ARCH/``,
    with the semantics of kernel ``release``: what a guest running that kernel must observe.
    (A VM test compares the guest's live side with these: the model is kept on the host,
    faster there, and the arm64 image's unicorn does not import, for want of distutils.)"""
    semantics = model_semantics(release)
    return {
        "release": release,
        "arch": arch,
        "semantics": str(semantics),
        "scenarios": {
            s.name: encode_observation(
                run_model(targets / arch / s.program, s, semantics=semantics)
            )
            for s in specs
        },
    }


def dump_predictions(data: dict[str, Any]) -> str:
    """Predictions as JSON, one scenario a line (a person can read and diff two runs')."""
    head = {k: v for k, v in data.items() if k != "scenarios"}
    lines = ["{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()) + ","]
    lines.append('"scenarios": {')
    items = list(data["scenarios"].items())
    lines += [
        f"{json.dumps(k)}: {json.dumps(v)}{',' if i < len(items) - 1 else ''}"
        for i, (k, v) in enumerate(items)
    ]
    lines.append("}}")
    return "\n".join(lines) + "\n"


# The variable that names the predictions file to the guest's tests (test_crosscheck_guest.py).
PREDICTIONS_ENV = "KUPROBE_PREDICTIONS"


def write_predictions(arch: str, release: str, targets: Path, out: Path) -> Path:
    """The model's predictions for the ARCH guest's uprobe scenarios, for the kernel
    ``release`` that guest boots, written to ``out``: computed when a guest's suite is about
    to run (``kuprobe vm test``), from the image's own kernel, so no checked-in file names a
    kernel ABI that Debian's archive may retire. ~2.5 s of the model here."""
    specs = [s for s in (_spec(n) for n in vm_scenarios(arch, uprobes_only=True)) if s]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_predictions(predict(specs, arch, targets, release)))
    return out


def _spec(name: str) -> ScenarioSpec | None:
    from kuprobe.crosscheck.scenarios import SCENARIOS

    return SCENARIOS[name].spec


# --- on the host ----------------------------------------------------------------------------


def run_in_vm(
    specs: Sequence[ScenarioSpec],
    arch: str,
    *,
    model_in_guest: bool = False,
    timeout: float | None = None,
    verbose: bool = False,
) -> GuestReport:
    """Boot the ARCH guest once and observe every scenario's live side there; the model's
    side stays to the caller (``model_in_guest``: the guest runs it too). Raises ``VmError``
    when the guest cannot boot or sends nothing back, ``TargetError`` when a program cannot
    be built."""
    from kuprobe.targets import cache_dir
    from kuprobe.vm import VmError
    from kuprobe.vm.boot import run_in_guest
    from kuprobe.vm.image import PROJECT_ROOT, ensure_image

    # the programs a uprobe scenario drives, built here (a kprobe scenario's test module is
    # built with the project's targets: python -m kuprobe.crosscheck.kmod_build)
    exes = {target_path(arch, s.program) for s in specs if s.needs != NEEDS_KPROBES}
    targets = {exe.parent.parent for exe in exes} or {cache_dir()}
    folders = sorted({s.path.parent.resolve() for s in specs if s.path is not None})
    if len(targets) != 1 or len(folders) > 1:
        raise VmError(f"the guest side needs one targets folder and one scenario folder, "
                      f"not {sorted(map(str, [*targets, *folders]))}")  # fmt: skip
    [target_dir] = targets
    env = {"KUPROBE_SCENARIOS": str(folders[0])} if folders else {}
    shares = [d for d in (target_dir, *folders) if not _inside(d, PROJECT_ROOT)]
    command = [
        *("python3", "-m", "kuprobe.crosscheck.guest", "--arch", arch),
        *("--targets", str(target_dir), "--out", f"/run/kuprobe/{GUEST_OUT}"),
        *(["--model"] if model_in_guest else []),
        *(s.name for s in specs),
    ]
    image = ensure_image(arch=arch)
    with tempfile.TemporaryDirectory(prefix="kuprobe-crosscheck-") as tmp:
        out = Path(tmp) / GUEST_OUT
        result = run_in_guest(
            image,
            command,
            shares=shares,
            env=env,
            timeout=timeout or BOOT_SECONDS + SCENARIO_SECONDS * len(specs),
            outputs={GUEST_OUT: out},
            echo=verbose,
            verbose=verbose,
        )
        if result.status != 0 or not out.is_file():
            tail = "\n".join(result.output.splitlines()[-30:])
            raise VmError(
                f"the {arch} guest's live side failed (exit status {result.status}):\n{tail}"
            )
        return GuestReport.from_json(json.loads(out.read_text()))


def _inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or under it (already shared with the guest)."""
    return path == root or root in path.parents


def main(argv: Sequence[str] | None = None) -> int:
    """The guest's entry point (run by ``run_in_vm``)."""
    from kuprobe.crosscheck.scenarios import SCENARIOS

    parser = argparse.ArgumentParser(
        prog="python3 -m kuprobe.crosscheck.guest",
        description="Run scenarios' live side on this kernel; write what they observed as "
        "JSON (kuprobe crosscheck --side vm runs this in a guest).",
    )
    parser.add_argument("--arch", required=True, help="the programs' arch")
    parser.add_argument("--targets", type=Path, required=True, help="folder of ARCH/PROGRAM")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--model", action="store_true", help="run the model here too")
    parser.add_argument(
        "--predict",
        metavar="RELEASE",
        help="no live side: write the model's observations with the semantics of kernel "
        "RELEASE (default scenarios: every uprobe one the vm side runs on ARCH)",
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    args = parser.parse_args(argv)
    unknown = [n for n in args.scenarios if n not in SCENARIOS or SCENARIOS[n].spec is None]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    names = args.scenarios or (vm_scenarios(args.arch, uprobes_only=True) if args.predict else [])
    if not names:
        parser.error("name the scenarios to run")
    specs = [s for s in (SCENARIOS[n].spec for n in names) if s is not None]
    if args.predict:
        args.out.write_text(dump_predictions(predict(specs, args.arch, args.targets, args.predict)))
        return 0
    report = observe_here(specs, args.arch, args.targets, model=args.model)
    args.out.write_text(json.dumps(report.to_json()))
    return 0


def vm_scenarios(arch: str, *, uprobes_only: bool = False) -> list[str]:
    """The scenarios the vm side runs on ARCH (``uprobes_only``: not those needing kprobes,
    whose model runs in the guest on the module's running image)."""
    from kuprobe.crosscheck.runs import plan
    from kuprobe.crosscheck.scenarios import SCENARIOS

    return [
        p.scenario
        for p in plan(SCENARIOS.values(), [arch], ["vm"])
        if p.runs and not (uprobes_only and SCENARIOS[p.scenario].needs == NEEDS_KPROBES)
    ]


if __name__ == "__main__":
    sys.exit(main())
