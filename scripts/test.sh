#!/usr/bin/env bash
# The whole suite: lint, types, then pytest (unit, model, live, vm). Fails if any test marked
# `live` was skipped on a machine that can run them (root, BPF, uprobes): a skip there would
# hide a broken live path.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=.venv/bin/python
step() { printf '\033[1m==> [%dm%02ds] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

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
$py -m tests.gate live "$junit"

if [ $vm_here = 0 ]; then
	for arch in x86_64 arm64; do
		step "pytest -m vm in the $arch qemu VM (this kernel has no kprobes)"
		junit_vm="$top/build/vm/junit-$arch.xml"
		rm -f "$junit_vm"
		# the x86_64 kprobe crosscheck and opcode map (tests/vm/test_crosscheck_kprobes.py) take
		# 4-7 minutes of the guest on their own: more than the default 600 s for the whole run
		.venv/bin/kuprobe vm test --arch "$arch" --timeout 1500 --junitxml "$junit_vm"
		$py -m tests.gate guest "$junit_vm" "$arch guest"
	done
	# Most users' kernels have kprobes, this host's has none: the host's tests whose outcome
	# depends on that run once more in the x86_64 guest, with this checkout's .venv, so a test
	# that passes only on a kernel without kprobes fails here. (All of tests/live and tests/cli
	# there, `kuprobe vm test --host-suite`, take ~41 min under TCG: not in every run yet.)
	step "the host's kprobe-dependent tests in the x86_64 guest (a kernel with kprobes)"
	junit_host="$top/build/vm/junit-host-suite.xml"
	rm -f "$junit_host"
	.venv/bin/kuprobe vm test --arch x86_64 --host-suite --timeout 1800 --junitxml "$junit_host" \
		-- tests/live/test_errors.py tests/cli/test_spec.py tests/cli/test_crosscheck_cli.py
	$py -m tests.gate guest "$junit_host" "the host's tests in the x86_64 guest"
fi
step "done"
