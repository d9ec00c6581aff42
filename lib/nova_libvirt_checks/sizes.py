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
