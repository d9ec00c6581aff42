"""Human-readable numbers for status lines and long output (perfdata keeps raw numbers)."""
from __future__ import annotations

from .thresholds import format_number


def size(value: float) -> str:
    """Bytes in binary units: '40 GiB', '2.5 GiB', '11.7 TiB' from 10 TiB on, MiB below 1 GiB
    ('512 MiB', '0.5 MiB'; never '0.0 GiB' for an amount that is not nothing)."""
    gib = value / 2**30
    if abs(gib) >= 10240:
        return f"{gib / 1024:.1f} TiB"
    if value and abs(gib) < 1:
        mib = value / 2**20
        return f"{mib:.0f} MiB" if abs(mib) >= 100 else f"{significant(mib)} MiB"
    return f"{gib:.0f} GiB" if abs(gib) >= 100 or gib == int(gib) else f"{gib:.1f} GiB"


def count(value: float) -> str:
    """A count, one decimal at most: '16', '2.5'."""
    return format_number(round(value, 1))


def significant(value: float, digits: int = 3) -> str:
    """`digits` significant digits, never an exponent: 1.2345e-07 -> '0.000000123'."""
    return format_number(float(f"{value:.{digits}g}"))


def percent(value: float) -> str:
    """A percentage: '85%', '2.5%' (one decimal below 10), '0.012%' (two significant digits
    below 0.05, never '0.0%' for a non-zero one)."""
    if value >= 10 or value == 0:
        return f"{value:.0f}%"
    return f"{significant(value, 2)}%" if abs(value) < 0.05 else f"{value:.1f}%"


def decimal(value: float, unit: str = "") -> str:
    """With a decimal prefix, three significant digits, as disks and networks count: '1.5 MB/s'
    for unit 'B/s'; a count without a unit has no space: '1.5k', '12M'."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(value) >= factor or factor == 1:
            number = value / factor
            digits = f"{number:.0f}" if number >= 100 or number == int(number) else significant(number)
            return f"{digits} {prefix}{unit}" if unit else f"{digits}{prefix}"
    raise AssertionError("unreachable")


def milliseconds(value: float) -> str:
    """A latency: '150 ms', '0.21 ms' (two significant digits below 10 ms)."""
    return f"{value:.0f} ms" if value >= 10 else f"{significant(value, 2)} ms"


def seconds(value: float) -> str:
    """A duration to the millisecond: '2 s', '0.512 s', '3.022 s' (not '3.02197 s'); under a
    millisecond three significant digits, never '0.000 s' for a non-zero one: '0.000000123 s'."""
    if value == int(value):
        return f"{value:g} s"
    if abs(value) < 0.0005:
        return f"{significant(value)} s"
    return f"{value:.3f} s"


def plural(number: int, word: str) -> str:
    """'1 instance', '2 instances'."""
    return f"{number} {word}" + ("" if number == 1 else "s")
