"""Human-readable numbers for status lines and long output (perfdata keeps raw numbers)."""
from __future__ import annotations

from .thresholds import format_number


def size(value: float) -> str:
    """Bytes as GiB (TiB from 10 TiB on): '40 GiB', '2.5 GiB', '11.7 TiB'."""
    gib = value / 2**30
    if gib >= 10240:
        return f"{gib / 1024:.1f} TiB"
    return f"{gib:.0f} GiB" if gib >= 100 or gib == int(gib) else f"{gib:.1f} GiB"


def count(value: float) -> str:
    """A count, one decimal at most: '16', '2.5'."""
    return format_number(round(value, 1))


def percent(value: float) -> str:
    """A percentage: '85%', '2.5%' (one decimal below 10)."""
    return f"{value:.0f}%" if value >= 10 or value == 0 else f"{value:.1f}%"


def decimal(value: float, unit: str = "") -> str:
    """With a decimal prefix, three significant digits, as disks and networks count: '1.5 MB/s'
    for unit 'B/s'; a count without a unit has no space: '1.5k', '12M'."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(value) >= factor or factor == 1:
            number = value / factor
            digits = f"{number:.0f}" if number >= 100 or number == int(number) else f"{number:.3g}"
            return f"{digits} {prefix}{unit}" if unit else f"{digits}{prefix}"
    raise AssertionError("unreachable")


def milliseconds(value: float) -> str:
    """A latency: '150 ms', '0.21 ms' (two significant digits below 10 ms)."""
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2g} ms"


def seconds(value: float) -> str:
    """A duration to the millisecond: '2 s', '0.512 s', '3.022 s' (not '3.02197 s')."""
    return f"{value:g} s" if value == int(value) else f"{value:.3f} s"


def plural(number: int, word: str) -> str:
    """'1 instance', '2 instances'."""
    return f"{number} {word}" + ("" if number == 1 else "s")
