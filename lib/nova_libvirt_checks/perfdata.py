"""Perfdata: labels that are valid for any input name, and tokens in the guidelines' format.

The one place where labels are made. A label is made only of `A-Za-z0-9_.-`: no quoting
needed, nothing Icinga 2, Graphite or PNP4Nagios (which turns labels into RRD file names)
would mangle, and nothing nagiosplugin's Performance refuses (it raises on `'` and `=`). A name
that is already made of those characters is its own label. Any other name is folded to those
characters and gets 8 hex digits of its SHA-256: two different names never share a label, and
a name keeps its label from run to run whatever else is on the host.

- `label(name)`: one name.
- `Labels(names)`: a set of names, distinct even if two hashes collided.
- `labels_with_ids(pairs)`: things that carry an id (instances: uuid), labelled by name and the
  id's first hex digits, unchanged while the thing lives, whatever else has the same name.
- `labels_by_name(items)`: things named by the operator (hypervisors), labelled by name alone
  where it is unique, by name and id where names repeat.
"""
from __future__ import annotations

import re
from typing import Hashable, Iterable, Optional, Union

import nagiosplugin

from .thresholds import format_number, format_range

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_BASE = 40


def label(name: str) -> str:
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

    def __init__(self, names: Iterable[str]) -> None:
        self._labels: dict[str, str] = {}
        taken: set[str] = set()
        for name in sorted(set(names)):
            candidate = label(name)
            suffix = 2
            while candidate in taken:
                candidate = f"{label(name)}_{suffix}"
                suffix += 1
            taken.add(candidate)
            self._labels[name] = candidate

    def __getitem__(self, name: str) -> str:
        return self._labels[name]


def labels_with_ids(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{id: label} for `(id, name)` pairs (an instance's uuid and name): the name's label and
    the id's first 8 hex digits, 4 more while two would collide (up to 32)."""
    chosen: dict[str, str] = {}
    taken: set[str] = set()
    for ident, name in sorted(pairs):
        digits = 8
        while True:
            candidate = f"{label(name)}_{ident.replace('-', '')[:digits]}"
            if candidate not in taken or digits >= 32:
                break
            digits += 4
        taken.add(candidate)
        chosen[ident] = candidate
    return chosen


def labels_by_name(items: Iterable[tuple[Hashable, str, object]]) -> dict[Hashable, str]:
    """{key: label} for `(key, name, id)` items (a hypervisor): its name where the name is
    unique among them, else name and id, then a number if even those repeat."""
    items = list(items)
    counts: dict[str, int] = {}
    for _key, name, _ident in items:
        counts[name] = counts.get(name, 0) + 1
    texts: dict[Hashable, str] = {}
    taken: set[str] = set()
    for key, name, ident in items:
        text = base = name if counts[name] == 1 else f"{name} {ident}"
        n = 2
        while text in taken:
            text, n = f"{base} #{n}", n + 1
        taken.add(text)
        texts[key] = text
    labels = Labels(texts.values())
    return {key: labels[text] for key, text in texts.items()}


Threshold = Union[nagiosplugin.Range, str, None]
Number = Union[int, float]


def token(label_: str, value: Number, uom: Optional[str] = "", warning: Threshold = None,
          critical: Threshold = None, minimum: Union[Number, str, None] = None,
          maximum: Union[Number, str, None] = None) -> str:
    """One perfdata token `label=value[uom];warn;crit;min;max` (trailing empty fields dropped);
    numbers never with an exponent. Empty fields may be None or '' (as in a Performance)."""
    fields = [f"{label_}={format_number(value)}{uom or ''}", format_range(warning),
              format_range(critical),
              "" if minimum in (None, "") else format_number(minimum),
              "" if maximum in (None, "") else format_number(maximum)]
    while fields and fields[-1] == "":
        fields.pop()
    return ";".join(fields)
