"""Thresholds: Nagios ranges (`10`, `10:`, `~:10`, `10:20`, `@10:20`) with unit suffixes.

The range semantics are nagiosplugin's Range: a value outside the range raises the alert,
`@` inverts. We only add units, so that `-w disk_write_bytes=50M` or `-w 500ms` reads as the
operator means it, and strict validation: anything that does not parse is an error naming
the text, never a silently ignored threshold. Numbers and ranges are printed back here too,
as perfdata wants them (`format_number`, `format_range`: never an exponent); numbers for
people are sizes.py's.
"""
from __future__ import annotations

import argparse
import math
import re
from collections import namedtuple
from typing import Callable, Collection, Optional, Union

import nagiosplugin

Number = Union[int, float]


class Units(namedtuple("Units", "factors suffixes", defaults=((),))):
    """Unit symbols and their factors, and the suffixes that may follow them (the B of 50MB,
    the /s of 10M/s) where they make sense; nothing else after a number is accepted."""


# Decimal prefixes as the Monitoring Plugins and `iostat` use them; binary ones for memory.
_DECIMAL = {"": 1, "K": 10**3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
SIZE_UNITS = Units({**_DECIMAL, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50},
                   ("B", "/s"))
COUNT_UNITS = Units(_DECIMAL, ("/s",))
TIME_UNITS = Units({"": 1, "s": 1, "ms": 10**-3, "us": 10**-6, "m": 60, "min": 60, "h": 3600})
PLAIN_UNITS = Units({"": 1, "%": 1})
MILLISECOND_UNITS = Units({"": 1, "ms": 1, "us": 10**-3, "s": 10**3})     # latencies, in ms
NUMBERS = Units({"": 1})

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"


def _atom_pattern(units: Units) -> re.Pattern:
    names = sorted((re.escape(u) for u in units.factors if u), key=len, reverse=True)
    unit = "(?:" + "|".join(names) + ")" if names else "(?!)"
    tail = "".join(f"(?:{re.escape(s)})?" for s in units.suffixes)
    return re.compile(rf"({_NUMBER})({unit})?{tail}")


def _parse_atom(text: str, units: Units, pattern: re.Pattern) -> Number:
    match = pattern.fullmatch(text)
    if not match:
        raise ValueError(text)
    value = float(match.group(1)) * units.factors[match.group(2) or ""]
    if not math.isfinite(value):
        raise ValueError(text)
    return int(value) if value == int(value) and abs(value) < 2**63 else value


def parse_range(text: str, units: Union[Units, dict] = SIZE_UNITS) -> nagiosplugin.Range:
    """`text` as a nagiosplugin Range, unit suffixes resolved; ValueError if it is not one."""
    if isinstance(units, dict):
        units = Units(units)
    pattern = _atom_pattern(units)
    body = text.strip()
    invert = body.startswith("@")
    body = body[1:] if invert else body
    if ":" in body:
        start_text, end_text = body.split(":", 1)
        start = "~" if start_text == "~" else format_number(_parse_atom(start_text or "0", units, pattern))
        end = format_number(_parse_atom(end_text, units, pattern)) if end_text else ""
        spec = f"{start}:{end}"
    else:
        spec = format_number(_parse_atom(body, units, pattern))
    return nagiosplugin.Range(("@" if invert else "") + spec)


def format_number(value: Number) -> str:
    """A number as perfdata wants it: no exponent, no trailing zeros; 6 decimals, and below
    0.1 six significant digits (1e-07 is 0.0000001, never 0)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {value}")
    if value == int(value) and abs(value) < 2**63:
        return str(int(value))
    decimals = max(6, 5 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_range(rng: Union[nagiosplugin.Range, str, None]) -> str:
    """A Range in the perfdata threshold syntax (nagiosplugin's str() may use exponents);
    None and '' (no threshold) give ''."""
    if rng is None or rng == "":
        return ""
    if isinstance(rng, str):
        rng = nagiosplugin.Range(rng)
    parts = ["@"] if rng.invert else []
    if rng.start == float("-inf"):
        parts.append("~:")
    elif rng.start != 0:
        parts.append(format_number(rng.start) + ":")
    if rng.end != float("inf"):
        parts.append(format_number(rng.end))
    return "".join(parts)


def range_type(units: Units = SIZE_UNITS) -> Callable[[str], nagiosplugin.Range]:
    """An argparse type for one range."""
    def convert(text):
        try:
            return parse_range(text, units)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid range: {text!r}") from None
    return convert


def named_range_type(names: Collection[str], units_of: Callable[[str], Units]
                     ) -> Callable[[str], tuple[str, nagiosplugin.Range]]:
    """An argparse type for `NAME=RANGE`; `names` the allowed names, `units_of(name)` their units."""
    def convert(text):
        name, sep, spec = text.partition("=")
        name = name.strip()
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=RANGE: {text!r}")
        if name not in names:
            raise argparse.ArgumentTypeError(
                f"unknown name {name!r} in {text!r} (one of: {', '.join(sorted(names))})")
        try:
            return name, parse_range(spec, units_of(name))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid range: {text!r}") from None
    return convert


class OncePerName(argparse.Action):
    """The argparse action of every repeatable NAME=RANGE option: appends (name, range) like
    action="append", but a NAME given twice is an error (`-w cpu=80 -w cpu=90` is a mistake;
    keeping either value silently would hide it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        name = values[0]
        given = list(getattr(namespace, self.dest, None) or [])
        if name in dict(given):
            raise argparse.ArgumentError(self, f"{name} given twice: one range per name")
        setattr(namespace, self.dest, given + [values])


def breach(value: Number, warning: Optional[nagiosplugin.Range] = None,
           critical: Optional[nagiosplugin.Range] = None) -> tuple[int, Optional[nagiosplugin.Range]]:
    """(state 0/1/2, the range that was broken) for a value against optional warning and
    critical ranges, critical winning; (0, None) when it keeps to both."""
    if critical is not None and not critical.match(value):
        return 2, critical
    if warning is not None and not warning.match(value):
        return 1, warning
    return 0, None


def describe_breach(value: Number, rng: nagiosplugin.Range,
                    show: Callable[[Number], str] = format_number,
                    show_limit: Optional[Callable[[Number], str]] = None) -> str:
    """How a value breaks a range, in the operator's terms: '12 > 10', '3 < 5', '15 inside 10..20'.
    `show` formats the value, `show_limit` the range's ends where they read otherwise
    ('85.0% used > 80%'; default: as the value)."""
    bound = show_limit or show
    if rng.invert:
        return f"{show(value)} inside {bound(rng.start)}..{bound(rng.end)}"
    if value > rng.end:
        return f"{show(value)} > {bound(rng.end)}"
    return f"{show(value)} < {bound(rng.start)}"
