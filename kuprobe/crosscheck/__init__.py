"""``crosscheck``: scenarios run on the reference model and a live kernel, normalised, diffed.

A scenario is a TOML file in corpus/ (package data; tests/scenarios/ in a checkout), read by
``kuprobe.crosscheck.spec``: the program, the probes and what they record, the calls.
``SCENARIOS[name].run(arch)`` observes it both ways on that arch's build of the program and
returns a ``Result`` (``model``, ``live``, ``differences``, ``agree``). ``kuprobe crosscheck``
(``kuprobe.cli.crosscheck``) runs them, here or with the live side in a qemu guest
(``kuprobe.crosscheck.guest``), and prints what each side saw.
"""

from kuprobe.crosscheck.scenarios import (
    SCENARIOS,
    Difference,
    Observation,
    ObservedEvent,
    Result,
    Scenario,
    diff,
)

__all__ = ["SCENARIOS", "Difference", "Observation", "ObservedEvent", "Result", "Scenario", "diff"]
