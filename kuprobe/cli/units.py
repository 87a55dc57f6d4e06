"""Numbers as short text: durations (512ns, 1.5µs, 20ms) and counts (12,345 and 1.2k)."""

from __future__ import annotations


def format_ns(ns: float) -> str:
    """512ns, 1.5µs, 20ms, 3s: at most two significant figures below 10, none above."""
    unit, scale = "ns", 1.0
    for bigger, factor in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= factor:
            unit, scale = bigger, factor
            break
    value = ns / scale
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return text.removesuffix(".0") + unit


def grouped(n: float) -> str:
    """12,345: a whole number with its thousands separated."""
    return f"{n:,.0f}"


def compact(n: float) -> str:
    """999, 1.2k, 34k, 5.6M: four characters at most."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale * 0.9995:
            value = n / scale
            return (f"{value:.1f}" if value < 9.95 else f"{value:.0f}") + suffix
    return f"{n:.0f}"
