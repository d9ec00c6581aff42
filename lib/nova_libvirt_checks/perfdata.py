"""Perfdata: labels that are valid for any input name, and tokens in the guidelines' format.

A label is made only of `A-Za-z0-9_.-`: no quoting needed, nothing Icinga 2, Graphite or
PNP4Nagios (which turns labels into RRD file names) would mangle. A name that is already made
of those characters is its own label. Any other name is folded to those characters and gets
8 hex digits of its SHA-256: two different names never share a label, and a name keeps its
label from run to run whatever else is on the host.
"""
import re

from .thresholds import format_number, format_range

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_BASE = 40


def label(name):
    """A perfdata label for `name` (any string), stable and distinct for distinct names."""
    if _SAFE.fullmatch(name) and len(name) <= MAX_BASE:
        return name
    import hashlib      # here: most checks never meet a name that needs it
    base = _UNSAFE_RUN.sub("_", name).strip("_")[:MAX_BASE - 9]
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{base}_{digest}" if base else f"_{digest}"


class Labels:
    """Labels for a set of names, distinct within the set even in the (astronomically rare)
    case of two hashes colliding with a literal name; the order of the input does not matter."""

    def __init__(self, names):
        self._labels = {}
        taken = set()
        for name in sorted(set(names)):
            candidate = label(name)
            suffix = 2
            while candidate in taken:
                candidate = f"{label(name)}_{suffix}"
                suffix += 1
            taken.add(candidate)
            self._labels[name] = candidate

    def __getitem__(self, name):
        return self._labels[name]


def token(label_, value, uom="", warning=None, critical=None, minimum=None, maximum=None):
    """One perfdata token `label=value[uom];warn;crit;min;max` (trailing empty fields dropped)."""
    fields = [f"{label_}={format_number(value)}{uom}", format_range(warning), format_range(critical),
              "" if minimum is None else format_number(minimum),
              "" if maximum is None else format_number(maximum)]
    while fields and fields[-1] == "":
        fields.pop()
    return ";".join(fields)
