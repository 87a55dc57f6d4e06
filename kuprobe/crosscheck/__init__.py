"""``crosscheck``: scenarios run on the reference model and on the live kernel, normalised
and diffed.

``SCENARIOS[name].run(arch)`` observes one scenario both ways on tests/targets' ``target``
for that arch and returns a ``Result`` (``model``, ``live``, ``differences``, ``agree``).
``kuprobe crosscheck`` (``kuprobe.cli.crosscheck``) runs them and prints what each side saw.
"""

from kuprobe.crosscheck.scenarios import (
    SCENARIOS,
    Difference,
    Event,
    Observation,
    Result,
    Scenario,
    diff,
)

__all__ = ["SCENARIOS", "Difference", "Event", "Observation", "Result", "Scenario", "diff"]
