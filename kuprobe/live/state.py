"""What the live backend holds: each registered probe's slots and links, and the locks.

Every registered probe holds one or two slots (entry and/or return) of a compiled pool
(kuprobe/live/pool.py) and one attachment per slot: a BPF link whose cookie is the slot, on a
perf event or as a uprobe_multi link.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field

from kuprobe.live.closer import LinkCloser
from kuprobe.live.compiling import PendingPool
from kuprobe.live.dispatch import Dispatcher
from kuprobe.live.pool import ProbePool
from kuprobe.live.signals import SignalsDeferred
from kuprobe.probes import AnyProbe


@dataclass
class Attach:
    pool: ProbePool
    slot: int
    ret: bool
    link_fd: int = -1  # closing it detaches the program (a BPF link)
    perf_fd: int = -1  # the kprobe/uprobe perf event under a perf-event link, if any
    target: int = -1  # the ring position past this slot's last event, once detached
    closing: bool = False  # its link is queued in the LinkCloser, the slot stopped meanwhile
    release_wanted: bool = False  # the slot is to be freed once the link has closed


@dataclass
class Registration:
    probe: AnyProbe
    attaches: list[Attach] = field(default_factory=list)
    tracefs_event: str | None = None  # kept after removal: kprobe_profile is read by name
    tracefs_removed: bool = False
    detached: bool = False  # no program of it records any more; it waits in BackendState._closing
    dropping: bool = False  # its slots' handlers only count what is left, in dropped
    final: bool = False  # counters final, slots released, the probe's _owner cleared
    profile: dict[str, tuple[int, int]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


class BackendState:
    """The registrations, pools, dispatcher and closer every step of the backend shares."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pools: list[ProbePool] = []
        self._regs: dict[int, Registration] = {}
        self._closing: dict[int, Registration] = {}  # detached, events still being handled
        self.signals = SignalsDeferred()
        self._finished_late: list[Registration] = []  # final while a handler still ran
        self.dispatcher = Dispatcher()
        self.closer = LinkCloser()
        # Attach.closing and .release_wanted: the closer's callback never takes self._lock
        # (a SIGINT handler may wait for the closer while this thread holds it).
        self._release_lock = threading.RLock()
        self._event_seq = 0
        self._stale_checked = False
        self._reaper: subprocess.Popen[bytes] | None = None
        self._pool_pending: PendingPool | None = None
