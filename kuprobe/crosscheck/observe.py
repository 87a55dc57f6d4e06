"""What a scenario observed on one side, normalised so the two sides compare with ``==``.

``diff`` lists where they disagree.

An ``Observation`` is named facts in the order a reader should see them: each call's result,
each probe's hits, the handler events in order. No addresses (the model maps a PIE where the
kernel's ASLR does not); values signed at the arch's word size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObservedEvent:
    """One handler call as a side observed it: ``kind`` (entry, return, or the probed label)
    and what it read (not kuprobe.cli.session.Event: one event as ``kuprobe trace`` prints it)."""

    kind: str
    values: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.values))})"


ObservedValue = int | tuple[ObservedEvent, ...]  # a fact: a count, a result, or the events in order
Observation = dict[str, ObservedValue]  # fact -> value, in the order a reader should see them


@dataclass(frozen=True)
class Difference:
    """One fact on which the model and the kernel disagree (None: that side lacks it)."""

    fact: str
    model: ObservedValue | None
    live: ObservedValue | None
    why: str


def diff(model: Observation, live: Observation) -> list[Difference]:
    """Every fact whose value differs, in the model's order, then facts only the kernel has."""
    out = []
    for fact in [*model, *(f for f in live if f not in model)]:
        m, k = model.get(fact), live.get(fact)
        if m == k:
            continue
        if m is None or k is None:
            why = f"only the {'kernel' if m is None else 'model'} observed it"
        elif isinstance(m, tuple) and isinstance(k, tuple):
            why = _first_difference(m, k)
        else:
            why = f"model {m}, kernel {k}"
        out.append(Difference(fact, m, k, why))
    return out


def _first_difference(model: tuple[ObservedEvent, ...], live: tuple[ObservedEvent, ...]) -> str:
    i = next((i for i, (m, k) in enumerate(zip(model, live, strict=False)) if m != k), None)
    if i is None:
        i = min(len(model), len(live))
    m = str(model[i]) if i < len(model) else "nothing"
    k = str(live[i]) if i < len(live) else "nothing"
    return (
        f"event {i + 1}: model {m}, kernel {k} "
        f"({len(model)} events in the model, {len(live)} from the kernel)"
    )
