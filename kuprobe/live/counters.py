"""A registered probe's counters, read from the pool's maps.

A kretprobe with its own maxactive takes its nmissed from tracefs' kprobe_profile."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kuprobe.live.messages import describe
from kuprobe.live.state import Registration
from kuprobe.live.tracefs import kprobe_profile
from kuprobe.probes import Kretprobe, Uprobe, counts, set_counts

log = logging.getLogger("kuprobe")


def read_profile(regs: Sequence[Registration]) -> dict[str, tuple[int, int]]:
    if any(r.tracefs_event for r in regs):
        return kprobe_profile()
    return {}


def sync(reg: Registration, profile: dict[str, tuple[int, int]] | None = None) -> None:
    hits = ret_hits = lost = ret_lost = 0
    for att in reg.attaches:
        h, lo = att.pool.counts(att.slot)
        if att.ret:
            ret_hits += h
            ret_lost += lo
        else:
            hits += h
            lost += lo
    p = reg.probe
    before = counts(p)
    if isinstance(p, Uprobe):
        if ret_lost > before.ret_lost:
            log.warning("%s: %d return events lost", describe(p), ret_lost)
        set_counts(p, hits=hits, ret_hits=ret_hits, ret_lost=ret_lost)
    elif isinstance(p, Kretprobe):
        lost += ret_lost
        set_counts(p, hits=ret_hits)
        if reg.tracefs_event:
            prof = profile if profile is not None else kprobe_profile()
            set_counts(p, nmissed=prof.get(reg.tracefs_event, (0, before.nmissed))[1])
    else:
        set_counts(p, hits=hits)
    if lost > before.lost:
        log.warning(
            "%s: %d events lost (the ring buffer refused a reservation: full or contended)",
            describe(p),
            lost,
        )
    set_counts(p, lost=lost)
