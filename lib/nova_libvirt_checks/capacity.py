"""The capacity model: pure functions of hosts, no HTTP (nova.py and placement.py fill them).

- Placement capacity is (total - reserved) x allocation_ratio; Nova's legacy fields know no
  allocation ratio (an over-committed host is over 100 % there).
- A host's free room is max(0, capacity - used): an over-committed host has none, and hides
  nobody else's. The cloud's free room is the sum of its hosts' (not total capacity minus
  total used), so it agrees with the flavor room, which is also counted host by host.
- Totals, free room and flavor room count the usable hosts only (up and enabled): the capacity
  the scheduler can place onto.
- A flavor needs what Nova's scheduler asks of Placement: VCPU, MEMORY_MB and DISK_GB = root
  + ephemeral + swap (MiB, rounded up to GiB), then `resources:CLASS=N` extra specs override
  (0 removes a class).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

RESOURCES = ("vcpus", "memory", "disk")
# Placement resource class and the size of its unit in our base unit (count, bytes, bytes)
CLASSES = {"vcpus": ("VCPU", 1), "memory": ("MEMORY_MB", 2**20), "disk": ("DISK_GB", 2**30)}
WORDS = {"vcpus": "vCPUs", "memory": "memory", "disk": "disk"}


class FlavorError(ValueError):
    """A flavor whose sizes cannot be counted."""


class Amount:
    """Used, capacity and free room of one resource, in base units (count or bytes)."""

    def __init__(self, used: float = 0, capacity: float = 0, free: Optional[float] = None):
        self.used = used
        self.capacity = capacity
        self.free = max(0, capacity - used) if free is None else free

    @property
    def percent(self) -> float:
        # no capacity at all: no room, as full as it gets
        return 100.0 * self.used / self.capacity if self.capacity > 0 else 100.0

    def value(self, quantity: str) -> float:
        """The number a limit on `quantity` (vcpus or vcpus_free) is compared with."""
        return self.free if quantity.endswith("_free") else self.percent


class Inventory:
    """One resource class of a Placement resource provider, with what is used of it."""

    def __init__(self, total: float, used: float = 0, reserved: float = 0,
                 allocation_ratio: float = 1.0, min_unit: Optional[float] = None,
                 max_unit: Optional[float] = None, step_size: Optional[float] = None):
        self.total, self.used, self.reserved = total, used, reserved
        self.allocation_ratio = allocation_ratio
        self.min_unit, self.max_unit, self.step_size = min_unit, max_unit, step_size

    @property
    def capacity(self) -> int:
        return max(0, int((self.total - self.reserved) * self.allocation_ratio))

    def room_for(self, need: int) -> int:
        """How many more allocations of `need` units fit (Placement's unit rules too)."""
        if self.max_unit is not None and need > self.max_unit:
            return 0
        if need < (self.min_unit or 1):
            return 0
        if self.step_size and need % self.step_size:
            return 0
        return max(0, int((self.capacity - self.used) // need))


class Host:
    """One hypervisor: its state, where it is, and (once read) its amounts."""

    def __init__(self, id: str, name: str, host: str, state: str = "unknown",
                 status: str = "unknown", disabled_reason: Optional[str] = None,
                 zone: Optional[str] = None):
        self.id, self.name, self.host = id, name, host
        self.state, self.status, self.disabled_reason = state, status, disabled_reason
        self.zone = zone
        self.amounts: dict[str, Amount] = {}          # resource -> Amount
        self.inventory: dict[str, Inventory] = {}     # Placement resource class -> Inventory
        self.unusable: Optional[str] = None           # why its usage data cannot be used
        self.record: dict = {}                        # Nova's record (its legacy fields)

    @property
    def usable(self) -> bool:
        return self.state == "up" and self.status == "enabled"

    @property
    def down(self) -> bool:
        return self.state != "up" and self.status == "enabled"

    @property
    def disabled(self) -> bool:
        return self.status != "enabled"

    def condition(self) -> str:
        words = [self.state, self.status]
        if self.status == "disabled" and self.disabled_reason:
            words.append(f"reason: {self.disabled_reason}")
        return ", ".join(words)

    def set_inventory(self, inventory: dict[str, Inventory]) -> None:
        """Placement's view: the amounts follow from the inventories."""
        self.inventory = inventory
        self.amounts = {}
        for resource, (rc, unit) in CLASSES.items():
            if rc in inventory:
                record = inventory[rc]
                self.amounts[resource] = Amount(record.used * unit, record.capacity * unit)


def totals(hosts: Iterable[Host]) -> dict[str, Amount]:
    """The cloud's amounts over the usable hosts that report each resource: used and capacity
    summed, free the sum of each host's free room. No usable host: all zero (no room)."""
    usable = [h for h in hosts if h.usable]
    found = {}
    for resource in RESOURCES:
        reporting = [h.amounts[resource] for h in usable if resource in h.amounts]
        if reporting or not usable:
            found[resource] = Amount(sum(a.used for a in reporting),
                                     sum(a.capacity for a in reporting),
                                     sum(a.free for a in reporting))
    return found


def _number(flavor: dict, key: str, value: object, blank_is_zero: bool = False,
            spec: bool = False) -> int:
    """A flavor's size field as a count: Nova gives integers (swap: "" for none), extra specs
    are strings of ASCII digits ("\u00b2" is a digit to str.isdigit(), not to int())."""
    if blank_is_zero and value in ("", None):
        return 0
    if spec and isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= 2**53 or value != int(value):
        raise FlavorError(f"Nova's flavor {flavor.get('name')!r} has an unusable {key}: "
                          f"{shown(value)}")
    return int(value)


def flavor_needs(flavor: dict) -> dict[str, int]:
    """What one instance of the flavor asks of Placement: {resource class: amount}.

    A boot-from-volume instance needs no root disk; the flavor cannot tell, so it is counted."""
    def number(key, blank_is_zero=False):
        return _number(flavor, key, flavor.get(key), blank_is_zero)
    swap_gb = math.ceil(number("swap", True) / 1024)
    needs = {"VCPU": number("vcpus"), "MEMORY_MB": number("ram"),
             "DISK_GB": number("disk") + number("OS-FLV-EXT-DATA:ephemeral", True) + swap_gb}
    specs = flavor.get("extra_specs")
    if specs is None:
        specs = {}
    if not isinstance(specs, dict):
        raise FlavorError(f"Nova's flavor {flavor.get('name')!r} has an unusable extra_specs: "
                          f"{shown(specs)}")
    for key, value in specs.items():
        if isinstance(key, str) and key.startswith("resources:"):
            needs[key.split(":", 1)[1]] = _number(flavor, key, value, spec=True)
    return {rc: amount for rc, amount in needs.items() if amount > 0}


def room(host: Host, needs: dict[str, int], source: str) -> int:
    """How many more instances needing `needs` fit on this host alone."""
    counts = []
    for rc, need in needs.items():
        if source == "placement":
            record = host.inventory.get(rc)
            if record is None:
                if rc == "DISK_GB":
                    continue        # disk from a shared storage provider: not this host's
                return 0
            counts.append(record.room_for(need))
        else:
            resource = next((r for r, (c, _u) in CLASSES.items() if c == rc), None)
            if resource is None:
                return 0            # Nova's legacy fields know VCPU, MEMORY_MB, DISK_GB only
            if resource not in host.amounts:
                continue
            amount = host.amounts[resource]
            counts.append(max(0, int((amount.capacity - amount.used) / CLASSES[resource][1]
                                     // need)))
    return min(counts) if counts else 0


def cloud_room(hosts: Iterable[Host], needs: dict[str, int], source: str) -> int:
    """Instances of a flavor that still fit, host by host, on the usable hosts."""
    return sum(room(h, needs, source) for h in hosts if h.usable)


def shown(value: object, limit: int = 24) -> str:
    """A field's value in a message, short, as JSON writes it (null, true, "4", NaN)."""
    import json
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):          # not from JSON after all
        text = repr(type(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."
