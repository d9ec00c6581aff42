"""check_nova_hypervisors: are the hypervisors up, and how much room is left in the cloud?

The story of one run, on nagiosplugin's model: the arguments (build_parser); the Resource
`Hypervisors` logs in (or reuses the cached token), lists the hypervisors from Nova, keeps
those the selection asks for (aggregate; availability zone, taken from the compute services
so that a disabled host stays in its zone; name), reads each one's inventories and usages
from Placement or Nova's legacy fields (`read`), and yields the Metrics: the cloud's totals,
the counts, each flavor's room, per-hypervisor amounts. The Contexts judge them (`contexts`:
the cloud's limits, the down and disabled counts, each hypervisor's limits, the flavor room,
unusable data); `HypervisorsSummary` words the status line and the long output. The modules
below: openstack.py (session, token cache), nova.py, placement.py, capacity.py (the model,
pure functions of hosts), errors.py (one-line errors without secrets).

Nova and Placement legitimately differ, and the check says which one it used:
- Placement capacity is (total - reserved) x allocation_ratio; Nova's legacy fields know no
  allocation ratio, so an over-committed host shows more than 100 % used there (compute3 with
  17 vCPUs on 16 at ratio 4.0: Nova 106 %, Placement 27 %).
- Nova's memory_mb_used includes the host's reserved memory (reserved_host_memory_mb);
  Placement reports it as inventory `reserved` and counts only what instances use.

The output is kept within --max-output (plugin.fit): the per-hypervisor perfdata goes first,
then long output lines from the end.
"""
from __future__ import annotations

import argparse
import re
import time
from typing import Optional

import nagiosplugin

from . import plugin, sizes
from .capacity import (RESOURCES, WORDS, Amount, FlavorError, Host, cloud_room, flavor_needs,
                       room, totals)
from .perfdata import label, labels_by_name
from .thresholds import (PLAIN_UNITS, SIZE_UNITS, OncePerName, breach, describe_breach,
                         format_number, parse_range, range_type)

NAME = "HYPERVISORS"


# ---------------------------------------------------------------- arguments

def _fail(message: str):
    raise argparse.ArgumentTypeError(message)


def _has_unitless_number(spec: str) -> bool:
    """Whether a size range has a non-zero number without a unit (64 instead of 64Gi)."""
    for atom in re.split(r"[:@~]", spec):
        if atom and re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", atom) and float(atom) != 0:
            return True
    return False


def _lower_bound_only(rng) -> bool:
    """A threshold on an amount left (free, fits) that only alerts below a value."""
    return rng.invert or rng.end == float("inf")


def limit_type(text: str) -> tuple:
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
    return name, _room_range(text, spec, {"": 1} if resource == "vcpus" else SIZE_UNITS,
                             f"{name}=", "is free", "less than that is left")


def fits_type(text: str):
    return _room_range(text, text, {"": 1}, "", "instances fit", "fewer fit")


def _room_range(text: str, spec: str, units, prefix: str, more: str, less: str):
    """A range on room left (free, fits), which may only alert when there is too little."""
    try:
        rng = parse_range(spec, units)
    except ValueError:
        _fail(f"not a valid range: {text!r}")
    if not _lower_bound_only(rng):
        _fail(f"{text!r} would alert when MORE {more}; write {prefix}{spec.rstrip(':')}: to "
              f"alert when {less}")
    return rng


def _name(text: str) -> str:
    """A flavor, aggregate or zone name: Nova has no blank ones."""
    if not text.strip():
        _fail(f"a name, not {text!r}")
    return text


def build_parser(argv: Optional[list] = None) -> plugin.ArgumentParser:
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
  ratio from Placement; used is what instances hold. Free is counted host by host: the sum
  over the hypervisors of max(0, capacity - used), so an over-committed host hides no room
  on the others, and free agrees with the flavor room.
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
    limits.add_argument("-w", "--warning", type=limit_type, action=OncePerName, default=[],
                        metavar="RESOURCE=LIMIT", help="warning limit on the cloud total")
    limits.add_argument("-c", "--critical", type=limit_type, action=OncePerName, default=[],
                        metavar="RESOURCE=LIMIT", help="critical limit on the cloud total")
    limits.add_argument("--hypervisor-warning", type=limit_type, action=OncePerName, default=[],
                        metavar="RESOURCE=LIMIT", help="warning limit on each hypervisor")
    limits.add_argument("--hypervisor-critical", type=limit_type, action=OncePerName, default=[],
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


# ---------------------------------------------------------------- reading the cloud

class Reading:
    """What one run read: the selected hosts (their amounts filled), where from, the flavors."""

    def __init__(self, hosts: list[Host], source: str, microversion: str,
                 flavors: dict[str, dict], unreported: list[Host], conn, elapsed: float):
        self.hosts = hosts
        self.source = source
        self.microversion = microversion
        self.flavors = flavors
        self.needs = {}
        for name, flavor in flavors.items():
            try:
                self.needs[name] = flavor_needs(flavor)
            except FlavorError as exc:
                raise plugin.CheckError(str(exc)) from None
        self.unreported = unreported
        self.conn = conn
        self.elapsed = elapsed

    @property
    def usable(self) -> list[Host]:
        return [h for h in self.hosts if h.usable]

    @property
    def down(self) -> list[Host]:
        return [h for h in self.hosts if h.down]

    @property
    def disabled(self) -> list[Host]:
        return [h for h in self.hosts if h.disabled]


def _selection(args: argparse.Namespace) -> str:
    parts = [f"aggregate {a}" for a in args.aggregate]
    parts += [f"availability zone {z}" for z in args.availability_zone]
    parts += [f"name ~ /{rx.pattern}/" for rx in args.hypervisor]
    parts += [f"name !~ /{rx.pattern}/" for rx in args.exclude_hypervisor]
    return ", ".join(parts) or "all"


def select(args: argparse.Namespace, hosts: list[Host], aggregate_hosts: Optional[set],
           zone_hosts: Optional[set]) -> list[Host]:
    chosen = []
    for h in hosts:
        if args.hypervisor and not any(rx.search(h.name) for rx in args.hypervisor):
            continue
        if any(rx.search(h.name) for rx in args.exclude_hypervisor):
            continue
        if aggregate_hosts is not None and h.host not in aggregate_hosts \
                and h.name not in aggregate_hosts:
            continue
        if zone_hosts is not None and h.host not in zone_hosts and h.name not in zone_hosts:
            continue
        chosen.append(h)
    return chosen


def read(args: argparse.Namespace, conn, started: float) -> Reading:
    """Log in, list, select, read usage: a Reading."""
    from .nova import Nova, read_legacy
    from .placement import Placement, run_all
    conn.login()
    source = args.source
    if source == "auto":
        source = "placement" if conn.has_service("placement") else "nova"
    elif source == "placement" and not conn.has_service("placement"):
        raise conn.missing_endpoint("placement")
    nova = Nova(conn)
    # the first call alone: a rejected cached token means one new login, not one per thread
    hosts, microversion = nova.hypervisors(args.nova_microversion)
    tasks = {}
    if args.flavor:
        tasks["flavors"] = lambda: nova.flavors(args.flavor)
    if args.aggregate:
        tasks["aggregates"] = lambda: nova.aggregate_hosts(args.aggregate)
    if args.availability_zone:
        tasks["zones"] = lambda: nova.zone_hosts(args.availability_zone)
    found = dict(zip(tasks, run_all(list(tasks.values()))))
    chosen = select(args, hosts, found.get("aggregates"), found.get("zones"))
    if not chosen:
        raise plugin.CheckError(f"no hypervisor matches the selection ({_selection(args)}; "
                                f"{len(hosts)} hypervisors in all)")
    if source == "placement":
        unreported = Placement(conn).read(chosen, microversion)
    else:
        unreported = read_legacy(chosen)
    return Reading(chosen, source, microversion, found.get("flavors") or {}, unreported, conn,
                   time.monotonic() - started)


# ---------------------------------------------------------------- judging

class Limits:
    """The limits of the command line (each quantity at most once: thresholds.OncePerName)."""

    def __init__(self, args: argparse.Namespace):
        self.cloud_warning, self.cloud_critical = dict(args.warning), dict(args.critical)
        self.host_warning = dict(args.hypervisor_warning)
        self.host_critical = dict(args.hypervisor_critical)
        self.down_warning, self.down_critical = args.down_warning, args.down_critical
        if self.down_warning is None and self.down_critical is None:
            self.down_critical = parse_range("0")
        self.disabled_warning = args.disabled_warning
        self.disabled_critical = args.disabled_critical
        self.fit_warning, self.fit_critical = args.flavor_warning, args.flavor_critical
        if self.fit_warning is None and self.fit_critical is None:
            self.fit_critical = parse_range("1:")


def human(resource: str, value: float) -> str:
    return sizes.count(value) if resource == "vcpus" else sizes.size(value)


def resource_of(quantity: str) -> str:
    """vcpus for a limit on vcpus (% used) or vcpus_free (amount left)."""
    return quantity[:-5] if quantity.endswith("_free") else quantity


def show(quantity: str) -> tuple:
    """How a limit on `quantity` reads: (its value, the range's ends) as '85.0% used', '80%'
    or '40 GiB free', '64 GiB'. One decimal for % used ("10% > 10%" would puzzle), the
    bounds as given."""
    resource = resource_of(quantity)
    if quantity.endswith("_free"):
        return (lambda value: f"{human(resource, value)} free"), (lambda x: human(resource, x))
    return (lambda value: f"{value:.1f}% used"), (lambda x: format_number(x) + "%")


def breach_text(quantity: str, value: float, limit) -> str:
    """'vCPUs 85.0% used > 80%' / 'memory 40 GiB free < 64 GiB'."""
    return f"{WORDS[resource_of(quantity)]} {describe_breach(value, limit, *show(quantity))}"


def _quantity_order(quantity: str):
    return RESOURCES.index(resource_of(quantity)), quantity


def judge_amounts(amounts: dict[str, Amount], warning: dict, critical: dict) -> list:
    """Problems of one set of amounts against limits: [(state, text)], worst first."""
    problems = []
    for quantity in sorted(set(warning) | set(critical), key=_quantity_order):
        amount = amounts.get(resource_of(quantity))
        if amount is None:
            problems.append((plugin.UNKNOWN, f"{WORDS[resource_of(quantity)]} not reported"))
            continue
        value = amount.value(quantity)
        state, limit = breach(value, warning.get(quantity), critical.get(quantity))
        if state:
            problems.append((state, breach_text(quantity, value, limit)))
    problems.sort(key=lambda p: -p[0])
    return problems


def _names(hosts: list[Host], limit: int = 5) -> str:
    names = ", ".join(h.name for h in hosts[:limit])
    return names + (f" and {len(hosts) - limit} more" if len(hosts) > limit else "")


# ---------------------------------------------------------------- the Resource

class Hypervisors(nagiosplugin.Resource):
    """The cloud's hypervisors as the selection and source see them: probe() reads them
    (Reading) and yields the Metrics - the cloud's totals per resource, the counts, the room
    for each flavor, per-hypervisor amounts - each for the Context of its name to judge."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.reading: Optional[Reading] = None
        self.totals: dict[str, Amount] = {}
        self.rooms: dict[int, dict[str, int]] = {}      # id(host) -> {flavor: room}
        self.fits: dict[str, int] = {}
        self.flavor_of_metric: dict[str, str] = {}      # fits_<label> -> flavor name
        self.host_problems: dict[int, list] = {}        # filled by HostLimitsContext
        self.labels: dict[int, str] = {}

    def probe(self):
        from .openstack import Connection
        args = self.args
        started = time.monotonic()
        # leave the watchdog a margin, so that a hung peer is named by our own message
        deadline = started + max(args.timeout * 0.8, args.timeout - 0.5)
        conn = Connection(args, deadline, app_name="check_nova_hypervisors")
        try:
            reading = read(args, conn, started)
        finally:
            conn.save_token()
        self.reading = reading
        self.totals = totals(reading.hosts)
        self.rooms = {id(h): {name: room(h, need, reading.source)
                              for name, need in reading.needs.items()} for h in reading.usable}
        self.fits = {name: cloud_room(reading.hosts, need, reading.source)
                     for name, need in reading.needs.items()}

        limited = set(args.warning and dict(args.warning)) | set(args.critical and
                                                                  dict(args.critical))
        for resource in RESOURCES:
            a = self.totals.get(resource)
            if a is None:
                if {resource, f"{resource}_free"} & limited:
                    yield nagiosplugin.Metric(f"{resource}_missing", 0, context="not reported")
                continue
            uom = "" if resource == "vcpus" else "B"
            yield nagiosplugin.Metric(f"{resource}_used", a.used, uom, min=0, max=a.capacity,
                                      context="amount")
            yield nagiosplugin.Metric(f"{resource}_capacity", a.capacity, uom, min=0,
                                      context="amount")
            yield nagiosplugin.Metric(f"{resource}_free", a.free, uom, min=0, max=a.capacity)
            yield nagiosplugin.Metric(f"{resource}_used_pct", round(a.percent, 2), "%", min=0,
                                      max=100)
        yield nagiosplugin.Metric("hypervisors", len(reading.hosts), min=0, context="amount")
        yield nagiosplugin.Metric("hypervisors_usable", len(reading.usable), min=0,
                                  context="amount")
        yield nagiosplugin.Metric("hypervisors_down", len(reading.down), min=0)
        yield nagiosplugin.Metric("hypervisors_disabled", len(reading.disabled), min=0)
        if args.hypervisor_warning or args.hypervisor_critical:
            yield nagiosplugin.Metric("hypervisors_over_limits", len(reading.usable),
                                      context="hypervisor limits")
        for name, n in self.fits.items():
            metric = f"fits_{label(name)}"
            self.flavor_of_metric[metric] = name
            yield nagiosplugin.Metric(metric, n, min=0, context="fits")
        if reading.unreported:
            yield nagiosplugin.Metric("hypervisors_unreported", len(reading.unreported),
                                      context="unreported")
        if args.perfdata_per_hypervisor:
            self.labels = labels_by_name((id(h), h.name, h.id) for h in reading.hosts)
            for h in reading.hosts:
                for resource in RESOURCES:
                    amount = h.amounts.get(resource)
                    if amount is None:
                        continue
                    uom = "" if resource == "vcpus" else "B"
                    base = f"{self.labels[id(h)]}.{resource}"
                    yield nagiosplugin.Metric(f"{base}_used", amount.used, uom, min=0,
                                              max=amount.capacity, context="host amount")
                    yield nagiosplugin.Metric(f"{base}_used_pct", round(amount.percent, 2), "%",
                                              min=0, max=100, context=f"host {resource}_used_pct")


# ---------------------------------------------------------------- the Contexts

class ShownLimits(plugin.ThresholdContext):
    """Each hypervisor's % used: its limits shown in the perfdata, judged by
    HostLimitsContext (which names the worst in one breach)."""

    def evaluate(self, metric, resource):
        return self.result_cls(nagiosplugin.Ok, None, metric)


class HostLimitsContext(nagiosplugin.Context):
    """Each usable hypervisor against --hypervisor-warning/--hypervisor-critical: the
    offenders, worst first, named in one breach (the first three)."""

    def __init__(self, warning: dict, critical: dict):
        super().__init__("hypervisor limits")
        self.warning, self.critical = warning, critical

    def evaluate(self, metric, resource):
        usable = resource.reading.usable
        for h in usable:
            resource.host_problems[id(h)] = judge_amounts(h.amounts, self.warning, self.critical)

        def worst(h):
            return max((s for s, _ in resource.host_problems[id(h)]), default=plugin.OK)

        def badness(h):
            return -max((a.percent for a in h.amounts.values()), default=0)
        offenders = sorted((h for h in usable if resource.host_problems[id(h)]),
                           key=lambda h: (-worst(h), badness(h), h.name))
        if not offenders:
            return self.result_cls(nagiosplugin.Ok, None, metric)
        shown = "; ".join(f"{h.name} " + ", ".join(t for _, t in resource.host_problems[id(h)])
                          for h in offenders[:3])
        more = f"; and {len(offenders) - 3} more" if len(offenders) > 3 else ""
        return self.result_cls(plugin.STATES[worst(offenders[0])],
                               f"{len(offenders)} of {sizes.plural(len(usable), 'hypervisor')} over "
                               f"limits: {shown}{more}", metric)


class UnreportedContext(nagiosplugin.Context):
    """Hypervisors whose usage data cannot be used: WARNING, UNKNOWN when it is all of them."""

    def evaluate(self, metric, resource):
        reading = resource.reading
        unreported = reading.unreported
        text = (f"{sizes.plural(len(unreported), 'hypervisor')} without usable data in "
                f"{'Placement' if reading.source == 'placement' else 'Nova'}: "
                + ", ".join(f"{h.name} ({h.unusable})" for h in unreported[:5])
                + (f" and {len(unreported) - 5} more" if len(unreported) > 5 else ""))
        state = nagiosplugin.Warn if len(unreported) < len(reading.hosts) else nagiosplugin.Unknown
        return self.result_cls(state, text, metric)


class NotReportedContext(nagiosplugin.Context):
    """A limit on a resource no usable hypervisor reports: nothing to compare, UNKNOWN."""

    def evaluate(self, metric, resource):
        return self.result_cls(nagiosplugin.Unknown,
                               f"{WORDS[metric.name[:-len('_missing')]]} not reported", metric)


def _cloud_hint(quantity: str):
    def hint(metric, limit, resource):
        text = breach_text(quantity, metric.value, limit)
        return f"cloud {text}" if resource.reading.usable else f"{text} (no usable hypervisor)"
    return hint


def _count_hint(word: str):
    def hint(metric, limit, resource):
        hosts = getattr(resource.reading, word)
        text = f"{len(hosts)} of {sizes.plural(len(resource.reading.hosts), 'hypervisor')} {word}"
        return f"{text}: {_names(hosts)}" if hosts else text      # e.g. --disabled-warning @0
    return hint


def _fits_hint(metric, limit, resource) -> str:
    name = resource.flavor_of_metric[metric.name]
    return (f"room for {metric.value} more {name}, "
            + (f"fewer than {format_number(limit.start)}" if not limit.invert
               else f"inside {format_number(limit.start)}..{format_number(limit.end)}"))


def contexts(args: argparse.Namespace) -> list[nagiosplugin.Context]:
    limits = Limits(args)
    found = [plugin.ThresholdContext("amount"), plugin.ThresholdContext("host amount"),
             NotReportedContext("not reported"), UnreportedContext("unreported")]
    for resource in RESOURCES:
        for quantity in (f"{resource}_free", resource):
            name = quantity if quantity.endswith("_free") else f"{resource}_used_pct"
            found.append(plugin.ThresholdContext(name, limits.cloud_warning.get(quantity),
                                                 limits.cloud_critical.get(quantity),
                                                 hint=_cloud_hint(quantity)))
        found.append(ShownLimits(f"host {resource}_used_pct", limits.host_warning.get(resource),
                                 limits.host_critical.get(resource)))
    found.append(plugin.ThresholdContext("hypervisors_down", limits.down_warning,
                                         limits.down_critical, hint=_count_hint("down")))
    found.append(plugin.ThresholdContext("hypervisors_disabled", limits.disabled_warning,
                                         limits.disabled_critical, hint=_count_hint("disabled")))
    found.append(HostLimitsContext(limits.host_warning, limits.host_critical))
    found.append(plugin.ThresholdContext("fits", limits.fit_warning, limits.fit_critical,
                                         hint=_fits_hint))
    return found


# ---------------------------------------------------------------- the Summary

def _rank(name: str) -> tuple:
    """The order of the breaches in the status line (within a state): the cloud's limits by
    resource (% used before free), the counts, the hypervisors, the flavors, missing data."""
    for n, resource in enumerate(RESOURCES):
        if name in (f"{resource}_used_pct", f"{resource}_missing"):
            return (0, n, 0)
        if name == f"{resource}_free":
            return (0, n, 1)
    order = ["hypervisors_down", "hypervisors_disabled", "hypervisors_over_limits"]
    if name in order:
        return (1, order.index(name), 0)
    return (2 if name.startswith("fits_") else 3, 0, 0)


class HypervisorsSummary(nagiosplugin.Summary):
    """The status line: the breaches, worst first, then the hypervisors and the cloud's use;
    the long output: the cloud's totals and free room, each flavor's room, the hypervisors
    (all at -v, else those with a problem or not usable), the connection at -v."""

    def __init__(self, cloud: Hypervisors, verbose: int = 0):
        self.cloud = cloud
        self.verbose_level = verbose

    def ok(self, results) -> str:
        cloud = self.cloud
        reading, t = cloud.reading, cloud.totals
        if reading is None:
            return ""
        hosts, usable = reading.hosts, reading.usable
        head = f"{len(usable)} of {sizes.plural(len(hosts), 'hypervisor')} up and enabled"
        extra = []
        if reading.down:
            extra.append(f"{len(reading.down)} down")
        if reading.disabled:
            extra.append(f"{len(reading.disabled)} disabled")
        if extra:
            head += f" ({', '.join(extra)})"
        parts = [head]
        if not usable:
            parts.append("no usable capacity")
        else:
            shown = [f"{WORDS[r]} {human(r, t[r].used)} of {human(r, t[r].capacity)} used "
                     f"({sizes.percent(t[r].percent)})" for r in RESOURCES if r in t]
            if shown:
                parts.append(", ".join(shown))
        if cloud.fits:
            parts.append(", ".join(f"room for {n} more {name}" for name, n in cloud.fits.items()))
        return "; ".join(parts) + f" [{reading.source}]"

    def problem(self, results) -> str:
        breaches = sorted((r for r in results if r.state != nagiosplugin.Ok and r.hint),
                          key=lambda r: (-r.state.code, _rank(r.metric.name if r.metric else "")))
        text = "; ".join(r.hint for r in breaches)
        ok = self.ok(results)
        return f"{text} - {ok}" if ok else text

    def _line_state(self, results, host: Host) -> int:
        state = max((s for s, _ in self.cloud.host_problems.get(id(host), ())),
                    default=plugin.OK)
        for word, name in (("down", "hypervisors_down"), ("disabled", "hypervisors_disabled")):
            if getattr(host, word) and name in results:
                state = max(state, results[name].state.code)
        return state

    def host_line(self, results, host: Host) -> str:
        details = []
        for resource in RESOURCES:
            amount = host.amounts.get(resource)
            if amount is not None:
                details.append(f"{WORDS[resource]} {human(resource, amount.used)}/"
                               f"{human(resource, amount.capacity)} "
                               f"({sizes.percent(amount.percent)})")
        rooms = self.cloud.rooms.get(id(host))
        if rooms:
            details.append(", ".join(f"room for {n} {name}" for name, n in rooms.items()))
        problems = self.cloud.host_problems.get(id(host))
        text = f"{plugin.STATE_NAMES[self._line_state(results, host)]}: {host.name} " \
               f"[{host.condition()}]"
        if problems:
            text += ": " + ", ".join(t for _, t in problems) + " -"
        return text + (": " if not problems else " ") + (
            ", ".join(details) or (f"no usable data ({host.unusable})" if host.unusable
                                   else "no usage reported"))

    def verbose(self, results) -> list[str]:
        cloud = self.cloud
        reading, t = cloud.reading, cloud.totals
        if reading is None:
            return []
        conn, verbose = reading.conn, self.verbose_level
        lines = []
        if reading.usable:
            for resource in RESOURCES:
                if resource in t:
                    a = t[resource]
                    lines.append(f"cloud {WORDS[resource]}: {human(resource, a.used)} used of "
                                 f"{human(resource, a.capacity)} ({sizes.percent(a.percent)}), "
                                 f"{human(resource, a.free)} free")
        for name in reading.flavors:
            need = ", ".join(f"{rc} {n}" for rc, n in sorted(reading.needs[name].items()))
            hosts = sum(1 for rooms in cloud.rooms.values() if rooms.get(name))
            lines.append(f"flavor {name} ({need}): room for {cloud.fits[name]} more, "
                         f"on {sizes.plural(hosts, 'hypervisor')}")
        shown = reading.hosts if verbose else [
            h for h in reading.hosts if cloud.host_problems.get(id(h)) or not h.usable]
        lines.extend(self.host_line(results, h) for h in shown)
        if verbose:
            ratio_note = ("capacity = (total - reserved) x allocation ratio; free = sum over "
                          "hypervisors of max(0, capacity - used)" if reading.source == "placement"
                          else "legacy fields: no allocation ratio, memory used includes the "
                               "host reservation")
            lines.append(f"source: {reading.source} ({ratio_note}); Nova microversion "
                         f"{reading.microversion}; {sizes.plural(len(conn.requests), 'HTTP request')}"
                         f" in {reading.elapsed:.3f} s")
            lines.append("connection: " + conn.describe())
        lines.extend(conn.notes)
        if verbose >= 2:
            for method, url, status, seconds in list(conn.requests):
                lines.append(f"request: {method} {url} -> {status} in {seconds * 1000:.0f} ms")
        return lines


# ---------------------------------------------------------------- the check

def make_check(args: argparse.Namespace) -> nagiosplugin.Check:
    for option in ("flavor_warning", "flavor_critical"):
        if getattr(args, option) is not None and not args.flavor:
            raise plugin.UsageError(f"argument --{option.replace('_', '-')}: needs --flavor NAME "
                                    f"(the flavor whose room it limits)")
    cloud = Hypervisors(args)
    return nagiosplugin.Check(cloud, *contexts(args), HypervisorsSummary(cloud, args.verbose))


def lighter_perfdata(args: argparse.Namespace, pairs: list) -> list:
    """Over --max-output: the cloud's perfdata alone, before long output lines are dropped."""
    if not args.perfdata_per_hypervisor:
        return []
    return [([tok for metric, tok in pairs if not metric.context.startswith("host ")],
             f"(per-hypervisor perfdata left out to stay under {args.max_output} bytes)")]


def timeout_message(args: argparse.Namespace) -> str:
    from .openstack import where
    return (f"no answer from OpenStack within {args.timeout:g} s ({where(args)}, Nova, "
            f"Placement)")


def main(argv: Optional[list] = None) -> None:
    import sys
    argv = sys.argv[1:] if argv is None else argv
    plugin.run(NAME, build_parser(argv), make_check, argv, timeout_state=plugin.UNKNOWN,
               timeout_message=timeout_message, lighter_perfdata=lighter_perfdata)
