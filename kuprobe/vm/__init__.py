"""The kprobe VM: a Debian guest under qemu TCG where kprobes exist, for tests and users.

``kuprobe vm build`` makes (or finds cached) the guest image, ``kuprobe vm test`` boots it
and runs ``pytest -m vm`` inside, ``kuprobe vm run -- COMMAND`` runs any command inside with
the project shared at its own path. See vagrant/README.md.
"""

from __future__ import annotations

from kuprobe.vm.host import VmError

__all__ = ["VmError"]
