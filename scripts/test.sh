#!/usr/bin/env bash
# The whole suite: lint, types, then pytest (unit, model, live, vm). Fails if any test marked
# `live` was skipped on a machine that can run them (root, BPF, uprobes): a skip there would
# hide a broken live path.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=.venv/bin/python
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

step "ruff check, ruff format --check"
.venv/bin/ruff check kuprobe tests benchmarks
.venv/bin/ruff format --check kuprobe tests benchmarks
step "mypy --strict (kuprobe, tests, benchmarks)"
.venv/bin/mypy

# The VM tests need kprobes: on a host without them they run in the VM (below), so the host
# run leaves them out instead of skipping them.
if [ -e /sys/bus/event_source/devices/kprobe ]; then vm_here=1; else vm_here=0; fi
marker=()
[ $vm_here = 1 ] || marker=(-m "not vm")

step "pytest (host)"
junit=$(mktemp --suffix=.xml)
set +e
$py -m pytest -p no:cacheprovider --junitxml="$junit" "${marker[@]}" "$@"
rc=$?
set -e
if [ $rc -ne 0 ]; then
	exit $rc
fi

step "live tests skipped on a capable machine?"
$py - "$junit" <<'PY'
import os, sys
import xml.etree.ElementTree as ET
from kuprobe.live.checks import live_uprobes_possible

ok, why = live_uprobes_possible()
root = ET.parse(sys.argv[1]).getroot()
skipped_live = []
ran_live = 0
for case in root.iter("testcase"):
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    if props.get("live") != "1":
        continue
    if case.find("skipped") is not None:
        skipped_live.append(f'{case.get("classname")}::{case.get("name")}')
    else:
        ran_live += 1
print(f"    live tests run: {ran_live}, skipped: {len(skipped_live)}")
if ok and skipped_live:
    print("error: this machine can run live tests, yet these were skipped:", file=sys.stderr)
    for name in skipped_live:
        print(f"    {name}", file=sys.stderr)
    sys.exit(1)
if ok and ran_live == 0:
    print("error: this machine can run live tests, yet none ran", file=sys.stderr)
    sys.exit(1)
if not ok:
    print(f"    (live tests cannot run here: {why})")
PY

# A VM suite in which every test was skipped, or none ran, fails the run: the guest exists to
# run them. (status 0 from pytest with only skips would otherwise pass silently.)
vm_ran() { # vm_ran JUNIT LABEL
	$py - "$1" "$2" <<'PY'
import sys
import xml.etree.ElementTree as ET

path, label = sys.argv[1], sys.argv[2]
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError) as e:
    sys.exit(f"error: {label}: no JUnit XML from the guest ({e})")
cases = list(root.iter("testcase"))
skipped = [c for c in cases if c.find("skipped") is not None]
print(f"    {label}: {len(cases)} tests, {len(skipped)} skipped")
if not cases:
    sys.exit(f"error: {label}: no test ran")
if len(skipped) == len(cases):
    why = skipped[0].find("skipped")
    reason = why.get("message", "") if why is not None else ""
    sys.exit(f"error: {label}: every test was skipped ({reason})")
PY
}

if [ $vm_here = 0 ]; then
	for arch in x86_64 arm64; do
		step "pytest -m vm in the $arch qemu VM (this kernel has no kprobes)"
		junit_vm="$top/build/vm/junit-$arch.xml"
		rm -f "$junit_vm"
		# the x86_64 kprobe crosscheck and opcode map (tests/vm/test_crosscheck_kprobes.py) take
		# 4-7 minutes of the guest on their own: more than the default 600 s for the whole run
		.venv/bin/kuprobe vm test --arch "$arch" --timeout 1500 --junitxml "$junit_vm"
		vm_ran "$junit_vm" "$arch guest"
	done
fi
