"""check_nova_hypervisors: are the hypervisors up, and how much room is left in the cloud?

The story of one run: log in (or reuse the cached token), list the hypervisors from Nova with
their state and status, keep those the selection asks for, read each one's inventories and
usages from Placement (concurrently) or Nova's legacy fields, add up the up-and-enabled ones,
count how many instances of a flavor still fit host by host, compare with the limits, tell.

Nova and Placement legitimately differ, and the check says which one it used:
- Placement capacity is (total - reserved) x allocation_ratio; Nova's legacy fields know no
  allocation ratio, so an over-committed host shows more than 100 % used there (compute3 with
  17 vCPUs on 16 at ratio 4.0: Nova 106 %, Placement 27 %).
- Nova's memory_mb_used includes the host's reserved memory (reserved_host_memory_mb);
  Placement reports it as inventory `reserved` and counts only what instances use.
- Nova dropped the usage fields at microversion 2.88; they are read at 2.53 (2.1 fallback).
  2.53 also makes the hypervisor id the compute node uuid, which is its Placement resource
  provider's uuid: no provider listing is needed.

Totals, limits on the cloud and flavor room count the up-and-enabled hypervisors only: the
capacity the scheduler can place onto. Down and disabled ones are counted and named apart.

Answers are checked, not trusted (docs/faults-nova.md): a number is a JSON number, finite,
0..2**53 (not NaN, not true, not "12"); a hypervisor whose usage data is not usable is left
out of the totals as a whole and named with the reason (WARNING, UNKNOWN when none is
usable); a malformed list, flavor or aggregate is UNKNOWN; paging never repeats a marker.

The calls are plain GETs with microversion headers (openstack.Connection.get), not
python-novaclient: it has no Placement client anyway, importing novaclient.v2 costs about
60 ms more per run (measured), and its hypervisor objects add nothing to the JSON. On a warm
run (a cached token with its catalog) they go out through the standard library without
importing keystoneauth1 at all, else through a keystoneauth session (openstack.py says when);
the answers, errors and messages are the same either way.

The output is kept within --max-output (plugin.fit): the per-hypervisor perfdata goes first,
then long output lines from the end.
"""
import argparse
import json
import math
import re
import time
import urllib.parse

from . import plugin
from .perfdata import Labels, label, token
from .thresholds import PLAIN_UNITS, SIZE_UNITS, format_number, parse_range, range_type, state_of

NAME = "HYPERVISORS"
RESOURCES = ("vcpus", "memory", "disk")
# Placement resource class and the size of its unit in our base unit (count, bytes, bytes)
CLASSES = {"vcpus": ("VCPU", 1), "memory": ("MEMORY_MB", 2**20), "disk": ("DISK_GB", 2**30)}
LEGACY = {"vcpus": ("vcpus_used", "vcpus"), "memory": ("memory_mb_used", "memory_mb"),
          "disk": ("local_gb_used", "local_gb")}
WORDS = {"vcpus": "vCPUs", "memory": "memory", "disk": "disk"}
NOVA_MICROVERSION = "2.53"         # the newest with the legacy usage fields and uuid ids
FLAVOR_MICROVERSION = "2.61"       # flavors with their extra specs (resources:CLASS=N)
PLACEMENT_MICROVERSION = "1.0"     # inventories and usages are all we need
POOL_SIZE = 8
NOT_THERE = object()               # what conn.get returns for a status that is an answer (404,
                                   # 406): never a JSON body, not even `null`


# ---------------------------------------------------------------- arguments

def _fail(message):
    raise argparse.ArgumentTypeError(message)


def _has_unitless_number(spec):
    """Whether a size range has a non-zero number without a unit (64 instead of 64Gi)."""
    for atom in re.split(r"[:@~]", spec):
        if atom and re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", atom) and float(atom) != 0:
            return True
    return False


def _lower_bound_only(rng):
    """A threshold on an amount left (free, fits) that only alerts below a value."""
    return rng.invert or rng.end == float("inf")


def limit_type(text):
    """RESOURCE=N% (% used) or RESOURCE_free=RANGE (amount left free), see the help."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not spec:
        _fail(f"expected RESOURCE=LIMIT, e.g. vcpus=80% or memory_free=64Gi: ({text!r})")
    if name in RESOURCES:
        if not spec.endswith("%"):
            _fail(f"{text!r}: a limit on {name} is a percentage used and ends with % "
                  f"(e.g. {name}=80%); for an amount left free use {name}_free={spec}:")
        try:
            return name, parse_range(spec, PLAIN_UNITS)
        except ValueError:
            _fail(f"not a valid range: {text!r}")
    resource = name[:-5] if name.endswith("_free") else None
    if resource not in RESOURCES:
        _fail(f"unknown resource {name!r} in {text!r} (one of: vcpus, memory, disk for % used; "
              f"vcpus_free, memory_free, disk_free for the amount left)")
    if "%" in spec:
        _fail(f"{text!r}: {name} is an amount; for a percentage used write {resource}={spec}")
    if resource != "vcpus" and _has_unitless_number(spec):
        _fail(f"{text!r}: give {resource} a unit, e.g. {name}=64Gi: (K M G T x1000, "
              f"Ki Mi Gi Ti x1024)")
    try:
        rng = parse_range(spec, {"": 1} if resource == "vcpus" else SIZE_UNITS)
    except ValueError:
        _fail(f"not a valid range: {text!r}")
    if not _lower_bound_only(rng):
        _fail(f"{text!r} would alert when MORE is free; write {name}={spec.rstrip(':')}: to "
              f"alert when less than that is left")
    return name, rng


def fits_type(text):
    try:
        rng = parse_range(text, {"": 1})
    except ValueError:
        _fail(f"not a valid range: {text!r}")
    if not _lower_bound_only(rng):
        _fail(f"{text!r} would alert when MORE instances fit; write {text.rstrip(':')}: to "
              f"alert when fewer fit")
    return rng


def _name(text):
    """A flavor, aggregate or zone name: Nova has no blank ones."""
    if not text.strip():
        _fail(f"a name, not {text!r}")
    return text


def build_parser(argv=None):
    parser = plugin.ArgumentParser(
        "check_nova_hypervisors",
        "Are the Nova hypervisors up and enabled, and how much room is left (vCPUs, memory, "
        "disk) in the whole cloud and on each hypervisor, with over-commit (Placement), and "
        "how many more instances of a flavor fit?",
        default_timeout=10,
        epilog="""Limits (-w/-c, --hypervisor-warning/--hypervisor-critical), repeatable:
  vcpus=80%          alert when more than 80 % of the vCPUs are used (memory=, disk= alike);
                     any Nagios range ending in %, e.g. vcpus=@90:95%
  memory_free=64Gi:  alert when less than 64 GiB is left free (vcpus_free=16:, disk_free=2T:);
                     sizes need a unit: K M G T (x1000) or Ki Mi Gi Ti (x1024); the range must
                     be open upwards (N:) or inverted (@...), as an alert on MORE free is a mistake
  -w/-c apply to the total of the up-and-enabled hypervisors selected; the --hypervisor-*
  forms to each of them (the worst are named). Capacity is (total - reserved) x allocation
  ratio from Placement; used is what instances hold. Free is capacity - used.
Counts (Nagios ranges): --down-* counts hypervisors that are down and enabled (default:
  --down-critical 0 unless a --down-* option is given), --disabled-* those disabled.
Flavor room: --flavor NAME counts, host by host on up and enabled hypervisors, how many more
  instances of it fit (free space scattered over hosts is no slot); --flavor-warning /
  --flavor-critical N: (default --flavor-critical 1:, i.e. CRITICAL when none fits).
Sources (--source): Placement (auto when the catalog has it) or Nova's legacy fields (read
  at microversion 2.53, 2.1 fallback). They differ: Nova knows no allocation ratio (an
  over-committed host is over 100 %), and its memory_mb_used includes the host's reserved
  memory, which Placement keeps apart as `reserved`.
Examples:
  check_nova_hypervisors -w vcpus=80% -c vcpus=95% -w memory=85% -c memory=95%
  check_nova_hypervisors --os-cloud prod --aggregate gpu -c memory_free=256Gi: --flavor m1.xlarge
  check_nova_hypervisors --hypervisor-critical disk_free=100Gi: --disabled-warning 0""")
    limits = parser.add_argument_group("limits")
    limits.add_argument("-w", "--warning", type=limit_type, action="append", default=[],
                        metavar="RESOURCE=LIMIT", help="warning limit on the cloud total")
    limits.add_argument("-c", "--critical", type=limit_type, action="append", default=[],
                        metavar="RESOURCE=LIMIT", help="critical limit on the cloud total")
    limits.add_argument("--hypervisor-warning", type=limit_type, action="append", default=[],
                        metavar="RESOURCE=LIMIT", help="warning limit on each hypervisor")
    limits.add_argument("--hypervisor-critical", type=limit_type, action="append", default=[],
                        metavar="RESOURCE=LIMIT", help="critical limit on each hypervisor")
    counts = range_type({"": 1})
    limits.add_argument("--down-warning", type=counts, metavar="RANGE",
                        help="warning range for the number of hypervisors down (and enabled)")
    limits.add_argument("--down-critical", type=counts, metavar="RANGE",
                        help="critical range for it (default 0: any down is CRITICAL)")
    limits.add_argument("--disabled-warning", type=counts, metavar="RANGE",
                        help="warning range for the number of disabled hypervisors, e.g. 0")
    limits.add_argument("--disabled-critical", type=counts, metavar="RANGE",
                        help="critical range for the number of disabled hypervisors")
    limits.add_argument("--flavor", type=_name, action="append", default=[], metavar="NAME",
                        help="count how many more instances of this flavor (name or id) fit; "
                             "repeatable")
    limits.add_argument("--flavor-warning", type=fits_type, metavar="RANGE",
                        help="warning range for that count, e.g. 10:")
    limits.add_argument("--flavor-critical", type=fits_type, metavar="RANGE",
                        help="critical range for that count (default 1:)")
    select = parser.add_argument_group("selection")
    select.add_argument("--aggregate", type=_name, action="append", default=[], metavar="NAME",
                        help="only hypervisors in this host aggregate; repeatable (any of them)")
    select.add_argument("--availability-zone", type=_name, action="append", default=[],
                        metavar="NAME",
                        help="only hypervisors in this availability zone; repeatable")
    select.add_argument("--hypervisor", type=plugin.regex, action="append", default=[], metavar="REGEX",
                        help="only hypervisors whose name matches (searched); repeatable")
    select.add_argument("--exclude-hypervisor", type=plugin.regex, action="append", default=[],
                        metavar="REGEX", help="leave out hypervisors whose name matches")
    source = parser.add_argument_group("source and output")
    source.add_argument("--source", choices=("auto", "placement", "nova"), default="auto",
                        help="capacity and usage from Placement or Nova's legacy fields; auto: "
                             "Placement when the catalog has it (default)")
    source.add_argument("--nova-microversion", choices=("auto", "2.53", "2.1"), default="auto",
                        help="microversion of the hypervisor list (auto: 2.53, else 2.1)")
    source.add_argument("--perfdata-per-hypervisor", action="store_true",
                        help="perfdata for each hypervisor too (used and %% used per resource)")
    source.add_argument("--max-output", type=plugin.positive_int, default=60000, metavar="BYTES",
                        help="keep the output under this size, dropping the per-hypervisor "
                             "perfdata first, then long output lines from the end (default "
                             "60000, under NRPE's 64 KB; 1000 for NRPE v2 clients)")
    from . import openstack
    openstack.add_arguments(parser, argv)
    return parser


# ---------------------------------------------------------------- the model

class Amount:
    """Used and capacity of one resource, in base units (count or bytes)."""

    def __init__(self, used=0, capacity=0):
        self.used = used
        self.capacity = capacity

    @property
    def free(self):
        return max(0, self.capacity - self.used)

    @property
    def percent(self):
        # no capacity at all: no room, as full as it gets
        return 100.0 * self.used / self.capacity if self.capacity > 0 else 100.0

    def value(self, quantity):
        return self.free if quantity.endswith("_free") else self.percent


def _text(value):
    """A non-blank JSON string, else None (Nova's fields as we may show and compare them)."""
    return value if isinstance(value, str) and value.strip() else None


def _count(value):
    """A count or size as we may add it up: a JSON number (not a boolean), finite and between
    0 and 2**53 (exact in a float), else None. NaN, Infinity, 400-digit numbers, "12", true,
    -3 are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if 0 <= value <= 2**53 else None       # NaN fails both comparisons


def _shown(value, limit=24):
    """A field's value in a message, short, as JSON writes it (null, true, "4", NaN)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):          # not from JSON after all
        text = repr(type(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Hypervisor:
    def __init__(self, record):
        service = record.get("service") if isinstance(record.get("service"), dict) else {}
        self.id = str(record.get("id"))
        self.host = _text(service.get("host"))
        self.name = _text(record.get("hypervisor_hostname")) or self.host or self.id
        self.host = self.host or self.name
        self.state = _text(record.get("state")) or "unknown"
        self.status = _text(record.get("status")) or "unknown"
        self.disabled_reason = _text(service.get("disabled_reason"))
        self.record = record
        self.amounts = {}         # resource -> Amount
        self.inventory = {}       # Placement resource class -> inventory record (+ "used")
        self.fits = {}            # flavor name -> instances that still fit
        self.problems = []        # (state, text)
        self.line_state = plugin.OK   # down / disabled: the state their count gave
        self.unusable = None      # why its usage data cannot be used (a few words), if so

    @property
    def usable(self):
        return self.state == "up" and self.status == "enabled"

    @property
    def worst(self):
        return max((s for s, _ in self.problems), default=plugin.OK)

    def condition(self):
        words = [self.state, self.status]
        if self.status == "disabled" and self.disabled_reason:
            words.append(f"reason: {self.disabled_reason}")
        return ", ".join(words)


# ---------------------------------------------------------------- reading the cloud

def run_all(tasks):
    """Run the callables, concurrently when there are several; results in order.

    One keystoneauth session serves all threads: it has a valid token by now, so no thread
    logs in on its own."""
    if len(tasks) <= 2:
        return [task() for task in tasks]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=min(POOL_SIZE, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
        return [future.result() for future in futures]


def list_hypervisors(conn, wanted):
    """All hypervisors (following pages), at 2.53 or, on a Nova older than that, 2.1."""
    versions = [NOVA_MICROVERSION, "2.1"] if wanted == "auto" else [wanted]
    for version in versions:
        path = "/os-hypervisors/detail"
        records = []
        markers = set()
        while True:
            # 406: this Nova does not have the microversion; try the next one
            body = conn.get("compute", path, microversion=version,
                            instead={406: NOT_THERE} if version != versions[-1] else None)
            if body is NOT_THERE:
                break
            page = _field(body, "hypervisors", list, "Nova", path)
            odd = sum(1 for record in page if not isinstance(record, dict))
            if odd:
                raise plugin.CheckError(f"Nova answered GET {path} with {odd} hypervisor "
                                        f"record{'s that are' if odd > 1 else ' that is'} "
                                        f"not {'objects' if odd > 1 else 'an object'}")
            records.extend(page)
            links = body.get("hypervisors_links")
            if not page or not isinstance(links, list) or not any(
                    isinstance(link, dict) and link.get("rel") == "next" for link in links):
                return records, version
            # a next page: after the last id of this one, never twice (a Nova, or a proxy,
            # that repeats a page would otherwise be followed until the deadline)
            marker = page[-1].get("id")
            if not isinstance(marker, (str, int)) or isinstance(marker, bool):
                raise plugin.CheckError(f"Nova's hypervisor list has a next page, but its last "
                                        f"record has no id to ask for it ({_shown(marker)})")
            if str(marker) in markers:
                raise plugin.CheckError(f"Nova's hypervisor list does not end: the page after "
                                        f"marker {marker} repeats it")
            markers.add(str(marker))
            path = f"/os-hypervisors/detail?marker={urllib.parse.quote(str(marker), safe='')}"
    raise AssertionError("unreachable")


def _field(body, key, kind, service, path):
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, kind):
        raise plugin.CheckError(f"{service} answered GET {path} without a {key!r} "
                                f"{'list' if kind is list else 'object'}")
    return value


def find_flavors(conn, names):
    body = conn.get("compute", "/flavors/detail?is_public=None", microversion=FLAVOR_MICROVERSION,
                    instead={406: NOT_THERE})
    if body is NOT_THERE:
        body = conn.get("compute", "/flavors/detail?is_public=None", microversion="2.1")
    flavors = [f for f in _field(body, "flavors", list, "Nova", "/flavors/detail")
               if isinstance(f, dict)]
    found = {}
    for wanted in names:
        match = [f for f in flavors if f.get("name") == wanted] or \
            [f for f in flavors if f.get("id") == wanted]
        if not match:
            known = ", ".join(sorted(str(f.get("name")) for f in flavors)[:15]) or "none"
            raise plugin.CheckError(f"no flavor named {wanted!r} in Nova (known: {known})")
        found[wanted] = match[0]
    return found


def _flavor_number(flavor, key, value, blank_is_zero=False, spec=False):
    """A flavor's size field as a count: Nova gives integers (swap: "" for none), extra specs
    are strings of ASCII digits ("\u00b2" is a digit to str.isdigit(), not to int())."""
    if blank_is_zero and value in ("", None):
        return 0
    if spec and isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    number = _count(value)
    if number is None or number != int(number):
        raise plugin.CheckError(f"Nova's flavor {flavor.get('name')!r} has an unusable {key}: "
                                f"{_shown(value)}")
    return int(number)


def flavor_needs(flavor):
    """What one instance of the flavor asks of Placement: {resource class: amount}.

    As Nova's scheduler does: VCPU, MEMORY_MB, DISK_GB = root + ephemeral + swap (MiB, rounded
    up to GiB), then `resources:CLASS=N` extra specs override (0 removes a class). A
    boot-from-volume instance needs no root disk; the flavor cannot tell, so it is counted."""
    def number(key, blank_is_zero=False):
        return _flavor_number(flavor, key, flavor.get(key), blank_is_zero)
    swap_gb = math.ceil(number("swap", True) / 1024)
    needs = {"VCPU": number("vcpus"), "MEMORY_MB": number("ram"),
             "DISK_GB": number("disk") + number("OS-FLV-EXT-DATA:ephemeral", True) + swap_gb}
    specs = flavor.get("extra_specs")
    if specs is None:
        specs = {}
    if not isinstance(specs, dict):
        raise plugin.CheckError(f"Nova's flavor {flavor.get('name')!r} has an unusable "
                                f"extra_specs: {_shown(specs)}")
    for key, value in specs.items():
        if isinstance(key, str) and key.startswith("resources:"):
            needs[key.split(":", 1)[1]] = _flavor_number(flavor, key, value, spec=True)
    return {rc: amount for rc, amount in needs.items() if amount > 0}


def select(args, hypervisors, aggregates, zones):
    chosen = []
    for hv in hypervisors:
        if args.hypervisor and not any(rx.search(hv.name) for rx in args.hypervisor):
            continue
        if any(rx.search(hv.name) for rx in args.exclude_hypervisor):
            continue
        if aggregates is not None and hv.host not in aggregates and hv.name not in aggregates:
            continue
        if zones is not None and hv.host not in zones and hv.name not in zones:
            continue
        chosen.append(hv)
    return chosen


def aggregate_hosts(conn, names):
    body = conn.get("compute", "/os-aggregates", microversion="2.1")
    aggregates = [a for a in _field(body, "aggregates", list, "Nova", "/os-aggregates")
                  if isinstance(a, dict)]
    hosts = set()
    for name in names:
        match = [a for a in aggregates if a.get("name") == name]
        if not match:
            known = ", ".join(sorted(str(a.get("name")) for a in aggregates)[:15]) or "none"
            raise plugin.CheckError(f"no host aggregate named {name!r} (known: {known})")
        for agg in match:
            members = agg.get("hosts") or []
            if not isinstance(members, list):
                raise plugin.CheckError(f"Nova's host aggregate {name!r} has unusable hosts: "
                                        f"{_shown(members)}")
            hosts.update(host for host in members if isinstance(host, str))
    return hosts


def zone_hosts(conn, names):
    body = conn.get("compute", "/os-availability-zone/detail", microversion="2.1")
    zones = [z for z in _field(body, "availabilityZoneInfo", list, "Nova",
                               "/os-availability-zone/detail") if isinstance(z, dict)]
    hosts = set()
    for name in names:
        match = [z for z in zones if z.get("zoneName") == name]
        if not match:
            known = ", ".join(sorted(str(z.get("zoneName")) for z in zones
                                     if z.get("zoneName") != "internal")[:15]) or "none"
            raise plugin.CheckError(f"no availability zone named {name!r} (known: {known})")
        for zone in match:
            members = zone.get("hosts")
            if isinstance(members, dict):
                hosts.update(host for host, services in members.items()
                             if isinstance(services, dict) and "nova-compute" in services)
    return hosts


def _providers(conn):
    """{name: uuid} of Placement's resource providers (a name listed twice: None, ambiguous)."""
    body = conn.get("placement", "/resource_providers", microversion=PLACEMENT_MICROVERSION)
    by_name = {}
    for p in _field(body, "resource_providers", list, "Placement", "/resource_providers"):
        if isinstance(p, dict) and _text(p.get("name")) and _text(p.get("uuid")):
            by_name[p["name"]] = None if p["name"] in by_name else p["uuid"]
    return by_name


def read_placement(conn, hypervisors, microversion):
    """Inventories and usages of each hypervisor's resource provider, concurrently.

    At 2.53 the hypervisor id is the compute node uuid, which is its provider's uuid; at 2.1
    (or when that provider is not found) providers are matched by name. Returns the
    hypervisors whose data cannot be used (hv.unusable says why)."""
    pl = PLACEMENT_MICROVERSION
    by_name = None
    if microversion == "2.1" or not all(_looks_like_uuid(hv.id) for hv in hypervisors):
        by_name = _providers(conn)

    def provider_of(hv):
        if by_name is not None:
            return by_name.get(hv.name)
        return hv.id

    def fetch(hv, uuid):
        def task():
            if uuid is None:
                return hv, NOT_THERE, NOT_THERE
            base = f"/resource_providers/{urllib.parse.quote(uuid, safe='')}"
            inv = conn.get("placement", f"{base}/inventories", microversion=pl,
                           instead={404: NOT_THERE})
            if inv is NOT_THERE:
                return hv, NOT_THERE, NOT_THERE
            use = conn.get("placement", f"{base}/usages", microversion=pl,
                           instead={404: NOT_THERE})
            return hv, inv, use
        return task

    results = run_all([fetch(hv, provider_of(hv)) for hv in hypervisors])
    missing = [hv for hv, inv, _ in results if inv is NOT_THERE]
    if missing and by_name is None:
        # uuids did not match (an unusual deployment): look those up by name
        names = _providers(conn)
        retry = run_all([fetch(hv, names.get(hv.name)) for hv in missing])
        results = [r for r in results if r[1] is not NOT_THERE] + retry
    unreported = []
    for hv, inv, use in results:
        hv.unusable = ("no resource provider" if inv is NOT_THERE or use is NOT_THERE
                       else _read_provider(hv, inv, use))
        if hv.unusable:
            unreported.append(hv)
    return sorted(unreported, key=lambda h: (h.name, h.id))


def _read_provider(hv, inv, use):
    """Fill hv.inventory and hv.amounts from one provider's answers; or say, in a few words,
    why they cannot be used (then nothing of them is used: a host half counted is wrong)."""
    inventories = inv.get("inventories") if isinstance(inv, dict) else None
    if not isinstance(inventories, dict):
        return "inventories not an object"
    usages = use.get("usages") if isinstance(use, dict) else None
    if not isinstance(usages, dict):
        return "usages not an object"
    for rc, used in usages.items():
        if _count(used) is None:
            return f"{rc} usage {_shown(used)}"
    records = {}
    for rc, record in inventories.items():
        if not isinstance(record, dict):
            return f"{rc} inventory not an object"
        if _count(record.get("total")) is None:
            return f"{rc} total {_shown(record.get('total'))}"
        for key in ("reserved", "min_unit", "max_unit", "step_size"):
            if record.get(key) is not None and _count(record[key]) is None:
                return f"{rc} {key} {_shown(record[key])}"
        ratio = record.get("allocation_ratio")
        if ratio is not None and not _count(ratio):            # 0 is no ratio either
            return f"{rc} allocation_ratio {_shown(ratio)}"
        records[rc] = dict(record, used=usages.get(rc, 0))
    hv.inventory = records
    for resource, (rc, unit) in CLASSES.items():
        record = records.get(rc)
        if record is not None:
            hv.amounts[resource] = Amount(record["used"] * unit, _capacity(record) * unit)
    return None


def _capacity(record):
    total = record.get("total") or 0
    reserved = record.get("reserved") or 0
    ratio = record.get("allocation_ratio")
    ratio = 1.0 if ratio is None else ratio
    return max(0, int((total - reserved) * ratio))     # reserved over total: no room


def _looks_like_uuid(text):
    return bool(re.fullmatch(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}", text))


def read_legacy(hypervisors):
    """Nova's legacy usage fields; returns the hypervisors without usable ones (all six are
    needed: Nova at 2.53 or older gives all, and a host half counted is wrong)."""
    unreported = []
    for hv in hypervisors:
        for resource, (used_key, total_key) in LEGACY.items():
            for key in (total_key, used_key):
                if _count(hv.record.get(key)) is None:
                    hv.unusable = f"{key} " + (_shown(hv.record[key]) if key in hv.record
                                               else "missing")
                    break
            if hv.unusable:
                break
            unit = CLASSES[resource][1]
            hv.amounts[resource] = Amount(hv.record[used_key] * unit, hv.record[total_key] * unit)
        if hv.unusable:
            hv.amounts = {}
            unreported.append(hv)
    return unreported


def count_fits(hv, needs, source):
    """How many more instances needing `needs` fit on this hypervisor alone."""
    fits = []
    for rc, need in needs.items():
        if source == "placement":
            record = hv.inventory.get(rc)
            if record is None:
                if rc == "DISK_GB":
                    continue        # disk from a shared storage provider: not this host's
                return 0
            if need > (record.get("max_unit") or need) or need < (record.get("min_unit") or 1):
                return 0
            free = _capacity(record) - record["used"]
        else:
            resource = next((r for r, (c, _u) in CLASSES.items() if c == rc), None)
            if resource is None:
                return 0
            if resource not in hv.amounts:
                continue
            amount = hv.amounts[resource]
            free = (amount.capacity - amount.used) / CLASSES[resource][1]
        fits.append(max(0, int(free // need)))
    return min(fits) if fits else 0


# ---------------------------------------------------------------- measuring

def measure(args):
    from .openstack import Connection
    for option in ("flavor_warning", "flavor_critical"):
        if getattr(args, option) is not None and not args.flavor:
            raise plugin.UsageError(f"argument --{option.replace('_', '-')}: needs --flavor NAME "
                                    f"(the flavor whose room it limits)")
    started = time.monotonic()
    # leave the watchdog a margin, so that a hung peer is named by our own message
    deadline = started + max(args.timeout * 0.8, args.timeout - 0.5)
    conn = Connection(args, deadline, app_name="check_nova_hypervisors")
    try:
        report = _measure(args, conn, started)
    finally:
        conn.save_token()
    # a token that could not be saved is told too (the output was made before the save)
    report.long_output.extend(note for note in conn.notes if note not in report.long_output)
    # lines past the budget can never be shown: cut them before plugin.fit, which drops one
    # line at a time and renders the whole output each time (over 10 s for 4000 lines at -v)
    report.long_output = _within(report.long_output, args.max_output)
    return plugin.fit(NAME, report, args.max_output, getattr(report, "lighter_perfdata", ()))


def _within(lines, budget):
    """The first of the long output lines that fit in `budget` bytes once rendered."""
    total = 0
    for n, line in enumerate(lines):
        total += len(plugin.plain(line).encode("utf-8", "replace")) + 1
        if total > budget:
            return lines[:n]
    return lines


def _measure(args, conn, started):
    conn.login()
    source = args.source
    if source == "auto":
        source = "placement" if conn.has_service("placement") else "nova"
    elif source == "placement" and not conn.has_service("placement"):
        raise conn.missing_endpoint("placement")
    # the first call alone: a rejected cached token means one new login, not one per thread
    records, microversion = list_hypervisors(conn, args.nova_microversion)
    hypervisors = sorted((Hypervisor(r) for r in records), key=lambda h: (h.name, h.id))

    tasks = {}
    if args.flavor:
        tasks["flavors"] = lambda: find_flavors(conn, args.flavor)
    if args.aggregate:
        tasks["aggregates"] = lambda: aggregate_hosts(conn, args.aggregate)
    if args.availability_zone:
        tasks["zones"] = lambda: zone_hosts(conn, args.availability_zone)
    found = dict(zip(tasks, run_all(list(tasks.values()))))
    chosen = select(args, hypervisors, found.get("aggregates"), found.get("zones"))
    if not chosen:
        raise plugin.CheckError(f"no hypervisor matches the selection ({_selection(args)}; "
                                f"{len(hypervisors)} hypervisors in all)")
    if source == "placement":
        unreported = read_placement(conn, chosen, microversion)
    else:
        unreported = read_legacy(chosen)

    flavors = found.get("flavors") or {}
    needs = {name: flavor_needs(flavor) for name, flavor in flavors.items()}
    for hv in chosen:
        if hv.usable:
            hv.fits = {name: count_fits(hv, need, source) for name, need in needs.items()}
    elapsed = time.monotonic() - started
    return evaluate(args, conn, chosen, source, microversion, flavors, needs, unreported, elapsed)


def _selection(args):
    parts = [f"aggregate {a}" for a in args.aggregate]
    parts += [f"availability zone {z}" for z in args.availability_zone]
    parts += [f"name ~ /{rx.pattern}/" for rx in args.hypervisor]
    parts += [f"name !~ /{rx.pattern}/" for rx in args.exclude_hypervisor]
    return ", ".join(parts) or "all"


# ---------------------------------------------------------------- judging and telling

def human(resource, value):
    if resource == "vcpus":
        return format_number(round(value, 1))
    gib = value / 2**30
    if gib >= 10240:
        return f"{gib / 1024:.1f} TiB"
    return f"{gib:.0f} GiB" if gib >= 100 or gib == int(gib) else f"{gib:.1f} GiB"


def percent_text(value):
    return f"{value:.0f}%" if value >= 10 or value == 0 else f"{value:.1f}%"


def describe_limit(quantity, value, rng):
    """'vCPUs 85% used > 80%' / 'memory 40 GiB free < 64 GiB'."""
    resource = quantity[:-5] if quantity.endswith("_free") else quantity
    if quantity.endswith("_free"):
        shown, bound = human(resource, value), lambda x: human(resource, x)
        what = f"{WORDS[resource]} {shown} free"
    else:
        # one decimal: "10% > 10%" would puzzle; bounds as given
        shown, bound = f"{value:.1f}%", lambda x: format_number(x) + "%"
        what = f"{WORDS[resource]} {shown} used"
    if rng.invert:
        return f"{what} inside {bound(rng.start)}..{bound(rng.end)}"
    if value > rng.end:
        return f"{what} > {bound(rng.end)}"
    return f"{what} < {bound(rng.start)}"


def judge(amounts, warning, critical):
    """Problems of one set of amounts against limits: [(state, text)], worst first."""
    problems = []
    for quantity in sorted(set(warning) | set(critical), key=_quantity_order):
        resource = quantity[:-5] if quantity.endswith("_free") else quantity
        amount = amounts.get(resource)
        if amount is None:
            problems.append((plugin.UNKNOWN, f"{WORDS[resource]} not reported"))
            continue
        value = amount.value(quantity)
        state = state_of(value, warning.get(quantity), critical.get(quantity))
        if state:
            limit = critical[quantity] if state == plugin.CRITICAL else warning[quantity]
            problems.append((state, describe_limit(quantity, value, limit)))
    problems.sort(key=lambda p: -p[0])
    return problems


def _quantity_order(quantity):
    resource = quantity[:-5] if quantity.endswith("_free") else quantity
    return RESOURCES.index(resource), quantity


def _limits(pairs):
    """The last value given per quantity wins."""
    return dict(pairs)


def evaluate(args, conn, chosen, source, microversion, flavors, needs, unreported, elapsed):
    usable = [hv for hv in chosen if hv.usable]
    down = [hv for hv in chosen if hv.state != "up" and hv.status == "enabled"]
    disabled = [hv for hv in chosen if hv.status != "enabled"]

    totals = {}
    for resource in RESOURCES:
        reporting = [hv.amounts[resource] for hv in usable if resource in hv.amounts]
        if reporting or not usable:
            totals[resource] = Amount(sum(a.used for a in reporting),
                                      sum(a.capacity for a in reporting))

    warning, critical = _limits(args.warning), _limits(args.critical)
    hv_warning, hv_critical = _limits(args.hypervisor_warning), _limits(args.hypervisor_critical)
    problems = []                                   # (state, text) for the status line
    for state, text in judge(totals, warning, critical):
        problems.append((state, f"cloud {text}" if usable else f"{text} (no usable hypervisor)"))

    # counts
    down_warn, down_crit = args.down_warning, args.down_critical
    if down_warn is None and down_crit is None:
        down_crit = parse_range("0")
    down_state = state_of(len(down), down_warn, down_crit)
    if down_state:
        problems.append((down_state, f"{len(down)} of {plural(len(chosen), 'hypervisor')}"
                         f" down: {_names(down)}"))
    disabled_state = state_of(len(disabled), args.disabled_warning, args.disabled_critical)
    if disabled_state:
        problems.append((disabled_state, f"{len(disabled)} of {plural(len(chosen), 'hypervisor')}"
                         f" disabled: {_names(disabled)}"))
    for hv in down:
        hv.line_state = down_state
    for hv in disabled:
        hv.line_state = disabled_state

    # per hypervisor
    if hv_warning or hv_critical:
        for hv in usable:
            hv.problems = judge(hv.amounts, hv_warning, hv_critical)
        offenders = sorted((hv for hv in usable if hv.problems),
                           key=lambda h: (-h.worst, _badness(h), h.name))
        if offenders:
            shown = "; ".join(f"{hv.name} " + ", ".join(t for _, t in hv.problems)
                              for hv in offenders[:3])
            more = f"; and {len(offenders) - 3} more" if len(offenders) > 3 else ""
            problems.append((offenders[0].worst, f"{len(offenders)} of "
                             f"{plural(len(usable), 'hypervisor')} over limits: {shown}{more}"))

    # flavors
    fits = {name: sum(hv.fits.get(name, 0) for hv in usable) for name in flavors}
    fit_warn, fit_crit = args.flavor_warning, args.flavor_critical
    if fit_warn is None and fit_crit is None:
        fit_crit = parse_range("1:")
    for name in flavors:
        state = state_of(fits[name], fit_warn, fit_crit)
        if state:
            limit = fit_crit if state == plugin.CRITICAL else fit_warn
            problems.append((state, f"room for {fits[name]} more {name}, "
                             + (f"fewer than {format_number(limit.start)}" if not limit.invert
                                else f"inside {format_number(limit.start)}.."
                                     f"{format_number(limit.end)}")))

    if unreported:
        text = (f"{plural(len(unreported), 'hypervisor')} without usable data in "
                f"{'Placement' if source == 'placement' else 'Nova'}: "
                + ", ".join(f"{hv.name} ({hv.unusable})" for hv in unreported[:5])
                + (f" and {len(unreported) - 5} more" if len(unreported) > 5 else ""))
        problems.append((plugin.WARNING if len(unreported) < len(chosen) else plugin.UNKNOWN, text))

    problems.sort(key=lambda p: -p[0])
    overall = max((s for s, _ in problems), default=plugin.OK)
    summary = _summary(chosen, usable, down, disabled, totals, fits, source)
    if problems:
        summary = "; ".join(text for _, text in problems) + " - " + summary

    long_output = _long_output(args, conn, chosen, usable, totals, flavors, needs, fits, source,
                               microversion, elapsed)
    perfdata = _perfdata(args, chosen, usable, down, disabled, totals, fits, warning, critical,
                         hv_warning, hv_critical, down_warn, down_crit, fit_warn, fit_crit)
    report = plugin.Report(overall, summary, long_output, perfdata)
    # for plugin.fit, made only if the output is too large: the cloud's perfdata alone
    report.lighter_perfdata = (
        (_perfdata(args, chosen, usable, down, disabled, totals, fits, warning, critical,
                   hv_warning, hv_critical, down_warn, down_crit, fit_warn, fit_crit,
                   per_hypervisor=False),
         f"(per-hypervisor perfdata left out to stay under {args.max_output} bytes)")
        for _ in range(1 if args.perfdata_per_hypervisor else 0))
    return report


def plural(count, word):
    return f"{count} {word}" + ("" if count == 1 else "s")


def _badness(hv):
    return -max((a.percent for a in hv.amounts.values()), default=0)


def _names(hypervisors, limit=5):
    names = ", ".join(hv.name for hv in hypervisors[:limit])
    return names + (f" and {len(hypervisors) - limit} more" if len(hypervisors) > limit else "")


def _summary(chosen, usable, down, disabled, totals, fits, source):
    head = f"{len(usable)} of {plural(len(chosen), 'hypervisor')} up and enabled"
    extra = []
    if down:
        extra.append(f"{len(down)} down")
    if disabled:
        extra.append(f"{len(disabled)} disabled")
    if extra:
        head += f" ({', '.join(extra)})"
    parts = [head]
    if not usable:
        parts.append("no usable capacity")
    else:
        shown = [f"{WORDS[r]} {human(r, totals[r].used)} of {human(r, totals[r].capacity)} used "
                 f"({percent_text(totals[r].percent)})" for r in RESOURCES if r in totals]
        if shown:
            parts.append(", ".join(shown))
    if fits:
        parts.append(", ".join(f"room for {n} more {name}" for name, n in fits.items()))
    return "; ".join(parts) + f" [{source}]"


def _hv_line(hv, source):
    state = plugin.STATE_NAMES[max(hv.worst, hv.line_state)]
    details = []
    for resource in RESOURCES:
        amount = hv.amounts.get(resource)
        if amount is not None:
            details.append(f"{WORDS[resource]} {human(resource, amount.used)}/"
                           f"{human(resource, amount.capacity)} ({percent_text(amount.percent)})")
    if hv.fits:
        details.append(", ".join(f"room for {n} {name}" for name, n in hv.fits.items()))
    text = f"{state}: {hv.name} [{hv.condition()}]"
    if hv.problems:
        text += ": " + ", ".join(t for _, t in hv.problems) + " -"
    return text + (": " if not hv.problems else " ") + (
        ", ".join(details) or (f"no usable data ({hv.unusable})" if hv.unusable
                               else "no usage reported"))


def _long_output(args, conn, chosen, usable, totals, flavors, needs, fits, source, microversion,
                 elapsed):
    lines = []
    if usable:
        for resource in RESOURCES:
            if resource in totals:
                t = totals[resource]
                lines.append(f"cloud {WORDS[resource]}: {human(resource, t.used)} used of "
                             f"{human(resource, t.capacity)} ({percent_text(t.percent)}), "
                             f"{human(resource, t.free)} free")
    for name, flavor in flavors.items():
        need = ", ".join(f"{rc} {n}" for rc, n in sorted(needs[name].items()))
        hosts = sum(1 for hv in usable if hv.fits.get(name))
        lines.append(f"flavor {name} ({need}): room for {fits[name]} more, "
                     f"on {plural(hosts, 'hypervisor')}")
    shown = chosen if args.verbose else [hv for hv in chosen if hv.problems or not hv.usable]
    lines.extend(_hv_line(hv, source) for hv in shown)
    if args.verbose:
        from .openstack import describe
        ratio_note = ("capacity = (total - reserved) x allocation ratio" if source == "placement"
                      else "legacy fields: no allocation ratio, memory used includes the host "
                           "reservation")
        lines.append(f"source: {source} ({ratio_note}); Nova microversion {microversion}; "
                     f"{plural(len(conn.requests), 'HTTP request')} in {elapsed:.3f} s")
        lines.append("connection: " + describe(conn))
        lines.extend(conn.notes)
    elif conn.notes:
        lines.extend(conn.notes)
    if args.verbose >= 2:
        for method, url, status, seconds in list(conn.requests):
            lines.append(f"request: {method} {url} -> {status} in {seconds * 1000:.0f} ms")
    return lines


def _perfdata(args, chosen, usable, down, disabled, totals, fits, warning, critical,
              hv_warning, hv_critical, down_warn, down_crit, fit_warn, fit_crit,
              per_hypervisor=True):
    tokens = []
    for resource in RESOURCES:
        if resource not in totals:
            continue
        t = totals[resource]
        uom = "" if resource == "vcpus" else "B"
        tokens.append(token(f"{resource}_used", t.used, uom, None, None, 0, t.capacity))
        tokens.append(token(f"{resource}_capacity", t.capacity, uom, None, None, 0))
        tokens.append(token(f"{resource}_free", t.free, uom, warning.get(f"{resource}_free"),
                            critical.get(f"{resource}_free"), 0, t.capacity))
        tokens.append(token(f"{resource}_used_pct", round(t.percent, 2), "%",
                            warning.get(resource), critical.get(resource), 0, 100))
    tokens.append(token("hypervisors", len(chosen), "", None, None, 0))
    tokens.append(token("hypervisors_usable", len(usable), "", None, None, 0))
    tokens.append(token("hypervisors_down", len(down), "", down_warn, down_crit, 0))
    tokens.append(token("hypervisors_disabled", len(disabled), "", args.disabled_warning,
                        args.disabled_critical, 0))
    for name, count in fits.items():
        tokens.append(token(f"fits_{label(name)}", count, "", fit_warn, fit_crit, 0))
    if args.perfdata_per_hypervisor and per_hypervisor:
        keys = _label_keys(chosen)
        labels = Labels(keys.values())
        for hv in chosen:
            for resource in RESOURCES:
                amount = hv.amounts.get(resource)
                if amount is None:
                    continue
                uom = "" if resource == "vcpus" else "B"
                base = f"{labels[keys[id(hv)]]}.{resource}"
                tokens.append(token(f"{base}_used", amount.used, uom, None, None, 0,
                                    amount.capacity))
                tokens.append(token(f"{base}_used_pct", round(amount.percent, 2), "%",
                                    hv_warning.get(resource), hv_critical.get(resource), 0, 100))
    return tokens


def _label_keys(hypervisors):
    """One distinct text per hypervisor to make its perfdata label of: its name; for
    hypervisors of the same name (several cells, or a hostile answer) name and id, then a
    number if even those repeat."""
    counts = {}
    for hv in hypervisors:
        counts[hv.name] = counts.get(hv.name, 0) + 1
    keys, taken = {}, set()
    for hv in hypervisors:
        key = base = hv.name if counts[hv.name] == 1 else f"{hv.name} {hv.id}"
        n = 2
        while key in taken:
            key, n = f"{base} #{n}", n + 1
        taken.add(key)
        keys[id(hv)] = key
    return keys


def timeout_message(args):
    from .openstack import where
    return (f"no answer from OpenStack within {args.timeout:g} s ({where(args)}, Nova, "
            f"Placement)")


def main(argv=None):
    import sys
    argv = sys.argv[1:] if argv is None else argv
    plugin.main(NAME, build_parser(argv), measure, argv, timeout_state=plugin.UNKNOWN,
                timeout_message=timeout_message)
