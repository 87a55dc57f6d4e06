"""Kernel hazards (kuprobe/live/hazards.py): reproduced through kuprobe's own API, and
``kuprobe doctor``'s detection agrees with what the reproducer does on this kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kuprobe import Uprobe, UprobeConsumer, register_uprobe, unregister_uprobe
from kuprobe.live.hazards import doctor_rows, nop5_fork

pytestmark = pytest.mark.live

# A function that starts with a 5-byte nop; called N times, then once in a forked child.
NOP5_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
__asm__(".text\n.globl nop5_func\n.type nop5_func,@function\nnop5_func:\n"
        ".byte 0x0f,0x1f,0x44,0x00,0x00\n lea 1(%rdi),%rax\n ret\n"
        ".size nop5_func,.-nop5_func\n");
long nop5_func(long);
int main(int argc, char **argv) {
    long n = atol(argv[1]), s = 0;
    char line[8];
    printf("ready\n"); fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 3;
    for (long i = 0; i < n; i++) s += nop5_func(i);
    pid_t c = fork();
    if (c == 0) { s += nop5_func(1); _exit(0); }
    int st; waitpid(c, &st, 0);
    if (WIFSIGNALED(st)) printf("signal %d\n", WTERMSIG(st));
    else printf("exit %d\n", WEXITSTATUS(st));
    return 0;
}
"""


@pytest.fixture(scope="module")
def nop5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("nop5")
    (d / "nop5.c").write_text(NOP5_C)
    subprocess.run(["gcc", "-O2", "-o", str(d / "nop5"), str(d / "nop5.c")], check=True)
    return d / "nop5"


def child_end(exe: Path, offset: int) -> tuple[str, int]:
    p = subprocess.Popen([str(exe), "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    up = Uprobe(
        str(exe), symbol_name="nop5_func", offset=offset, consumer=UprobeConsumer(lambda u, r: 0)
    )
    register_uprobe(up)
    try:
        out, _ = p.communicate("go\n", timeout=30)
    finally:
        unregister_uprobe(up)
    return out.strip(), up.hits


def test_nop5_fork_hazard_detected_as_it_happens(live: Path, nop5: Path) -> None:
    end, hits = child_end(nop5, 0)
    crashed = end == "signal 11"
    assert nop5_fork().present == crashed
    rows = {name: ok for name, ok, _, _ in doctor_rows()}
    assert rows["hazard: uprobe on a 5-byte nop, then fork"] == (not crashed)
    # the advice holds: the instruction after the nop is safe to probe
    end, hits = child_end(nop5, 5)
    assert end == "exit 0" and hits == 11
