"""check_libvirt_instances: per-instance CPU, disk and network I/O, named as the cloud knows them.

The story of one run, on nagiosplugin's model: the `Instances` Resource samples every domain's
counters (one bulk call on QEMU), names each domain from its Nova metadata (cached between
runs), turns counters into rates against an earlier sample (the state file) and yields each
selected instance's state and values as Metrics; Contexts compare them with the limits
(`InstanceRate`, `StateLimits`, `Rate` for the host totals); `Offenders` counts who broke them;
`InstancesSummary` tells who, worst first.
"""
import argparse
import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import nagiosplugin

from . import metadata, plugin, sizes
from .connection import DOMAIN_STATES, STATE_WORDS, call_error, default_uri, libvirt_module, open_connection
from .domstats import JOB_HELD, REASONS, Sampler
from .metadata import NovaInstance
from .perfdata import labels_with_ids
from .rates import METRICS, baseline, gauges, rates, remember, slowest_disk, to_state
from .state import StateError, StateFile, boot_id, file_for
from .thresholds import COUNT_UNITS, MILLISECOND_UNITS, PLAIN_UNITS, SIZE_UNITS, OncePerName, named_range_type

NAME = "INSTANCES"
STATE_NAMES = tuple(DOMAIN_STATES.values())
STATE_VERSION = 1
# a guest that cannot run until someone acts: CRITICAL unless --state-critical says otherwise
DEFAULT_STATE_CRITICAL = ("paused:ioerror", "paused:watchdog", "paused:crashed", "paused:postcopy_failed",
                          "crashed", "shutoff:crashed")
# paused by libvirt for a job that resumes it: told in the long output, never an alarm by default
PASSING_PAUSES = ("migration", "save", "dump", "snapshot", "from_snapshot", "starting_up",
                  "shutting_down", "postcopy")
REASON_WORDS = {"ioerror": "I/O error", "postcopy": "post-copy", "postcopy_failed": "post-copy failed",
                "api_error": "API error"}


def _states(text):
    """STATE[:REASON],... with libvirt's names (e.g. paused:ioerror,crashed); a state alone
    means any reason."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"no domain state in {text!r} (one of: {', '.join(STATE_NAMES)})")
    for spec in specs:
        state, _, reason = spec.partition(":")
        if state not in STATE_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown domain state {state!r} in {text!r} (one of: {', '.join(STATE_NAMES)})")
        if ":" in spec and reason not in REASONS[state]:
            raise argparse.ArgumentTypeError(
                f"unknown reason {reason!r} for {state} in {text!r} (one of: {', '.join(REASONS[state])})")
    return specs


def _state_matches(specs, inst):
    return any(spec in (inst.state, f"{inst.state}:{inst.reason}") for spec in specs)


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number, not negative: {text!r}")
    return value


def _units_of(metric):
    return {"percent": PLAIN_UNITS, "bytes": SIZE_UNITS, "count": COUNT_UNITS,
            "ms": MILLISECOND_UNITS}[METRICS[metric].kind]


def build_parser():
    metric_names = ", ".join(METRICS)
    parser = plugin.ArgumentParser(
        "check_libvirt_instances",
        "Per-instance CPU, disk and network I/O rates from libvirt, and what an instance "
        "suffers (disk latency, CPU delay, swapping), with limits, naming each instance by its "
        "Nova name and tenant (from Nova's <nova:instance> domain metadata).",
        default_timeout=10,
        epilog="Metrics (per second; cpu, memory and cpu_delay in %; *_latency in ms per request): "
               + metric_names + ".\n"
               "No limits by default; README suggests starting values for the pressure metrics.\n"
               "Sizes take K M G T (x1000) or Ki Mi Gi Ti (x1024), e.g. 50M = 50,000,000 B/s.\n"
               "Examples:\n"
               "  check_libvirt_instances -w disk_write_bytes=50M -c disk_write_bytes=100M -c cpu=95\n"
               "  check_libvirt_instances --tenant '^acme$' -w net_rx_bytes=10M --state-warning paused:user\n"
               "Rates compare with an earlier run's sample at least --min-window old, kept in a state\n"
               "file shared by all runs on the URI; with none (first runs, restarted instance), the\n"
               "check samples twice, --interval apart." + "\n"
               "State reasons (libvirt's names, for STATE:REASON):\n" + "".join(
                   f"  {state}: {' '.join(reasons)}\n" for state, reasons in REASONS.items() if len(reasons) > 1)
               + "Paused for " + ", ".join(PASSING_PAUSES) + " (libvirt resumes it) is never an alarm by default.")
    parser.add_argument("-U", "--connect", metavar="URI", default=None,
                        help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system); read-only")
    limits = named_range_type(set(METRICS), _units_of)
    parser.add_argument("-w", "--warning", type=limits, action=OncePerName, default=[],
                        metavar="METRIC=RANGE",
                        help=f"warning range per instance, METRIC one of: {metric_names}; repeatable")
    parser.add_argument("-c", "--critical", type=limits, action=OncePerName, default=[],
                        metavar="METRIC=RANGE", help="critical range per instance; repeatable")
    total_limits = named_range_type({m for m, spec in METRICS.items() if spec.total}, _units_of)
    parser.add_argument("--total-warning", type=total_limits, action=OncePerName, default=[],
                        metavar="METRIC=RANGE",
                        help="warning range for the sum over the selected instances (cpu: %% of the "
                             "host's CPUs, so is cpu_delay; not for memory and the latencies); repeatable")
    parser.add_argument("--total-critical", type=total_limits, action=OncePerName, default=[],
                        metavar="METRIC=RANGE", help="critical range for the sum; repeatable")
    parser.add_argument("--state-warning", type=_states, action="append", default=[],
                        metavar="STATE[:REASON],...",
                        help="instances in these states are WARNING (comma list, libvirt's state and "
                             "reason names, e.g. paused:user,blocked; a state alone: any reason)")
    parser.add_argument("--state-critical", type=_states, action="append", default=[],
                        metavar="STATE[:REASON],...",
                        help="instances in these states are CRITICAL (default: "
                             + ",".join(DEFAULT_STATE_CRITICAL) + "; given, it replaces the default)")
    select = parser.add_argument_group("selection (regular expressions, searched; excludes win)")
    for option, what in (("tenant", "tenant (project) name or uuid"), ("name", "Nova name"),
                         ("domain", "libvirt domain name or uuid")):
        select.add_argument(f"--{option}", type=plugin.regex, action="append", default=[], metavar="REGEX",
                            help=f"only instances whose {what} matches; repeatable")
        select.add_argument(f"--exclude-{option}", type=plugin.regex, action="append", default=[],
                            metavar="REGEX", help=f"leave out instances whose {what} matches")
    select.add_argument("--skip-non-nova", action="store_true",
                        help="leave out domains without Nova metadata (default: named by libvirt name)")
    output = parser.add_argument_group("output")
    output.add_argument("--top", type=plugin.positive_int, default=10, metavar="N",
                        help="long output: the N worst instances, one line each (default 10)")
    output.add_argument("--perfdata", choices=("all", "offenders", "totals", "none"), default="all",
                        help="per-instance perfdata for all instances (default), only those over a "
                             "limit, or only host totals and counts")
    output.add_argument("--max-output", type=plugin.positive_int, default=60000, metavar="BYTES",
                        help="keep the output under this size, dropping per-instance perfdata of "
                             "instances within limits first (default 60000, under NRPE's 64 KB; "
                             "1000 for NRPE v2 clients)")
    measuring = parser.add_argument_group("measuring")
    measuring.add_argument("--stats-mode", choices=("auto", "bulk", "per-domain"), default="auto",
                           help="bulk stats call (QEMU), per-domain calls (LXC, test driver), or "
                                "auto: bulk where it has counters (default)")
    measuring.add_argument("--interval", type=_non_negative, default=None, metavar="SECONDS",
                           help="with no usable previous sample, sample twice this far apart within "
                                "the run (default 1); 0: report 'collecting baseline' instead")
    measuring.add_argument("--min-window", type=_non_negative, default=30, metavar="SECONDS",
                           help="a rate covers at least this long: an earlier run's sample younger than "
                                "this is not used, whatever selection stored it (default 30, for check "
                                "intervals of 1-5 minutes)")
    measuring.add_argument("--max-age", type=_non_negative, default=1800, metavar="SECONDS",
                           help="a previous sample older than this is not used (default 1800)")
    measuring.add_argument("--metadata-ttl", type=_non_negative, default=900, metavar="SECONDS",
                           help="re-read a domain's Nova metadata after about this long; a restarted "
                                "domain is always re-read (default 900)")
    measuring.add_argument("--state-dir", metavar="DIR", default=None,
                           help="directory for the state file (default $NOVA_LIBVIRT_CHECKS_STATE_DIR, "
                                "else /var/tmp/nova-libvirt-checks-UID)")
    return parser


# ---------------------------------------------------------------- naming (metadata cache)

class Names:
    """Nova metadata and device names of each domain, read once and kept in the state file.

    Metadata changes rarely (resize, rename): an entry is re-read when the domain restarted
    or after about `ttl` seconds (spread by uuid so that not all expire in the same run).
    """

    def __init__(self, libvirt, cached, ttl, now):
        self.libvirt = libvirt
        self.entries = {}
        self.cached = cached if isinstance(cached, dict) else {}
        self.ttl = ttl
        self.now = now

    def _fresh(self, uuid, entry, dom_id):
        if not isinstance(entry, dict) or entry.get("id") != dom_id:
            return False
        spread = 0.75 + int(hashlib.sha256(uuid.encode()).hexdigest()[:4], 16) / 0xffff / 2
        return 0 <= self.now - entry.get("t", -1e18) <= self.ttl * spread

    def entry(self, uuid, dom):
        if uuid not in self.entries:
            cached = self.cached.get(uuid)
            if self._fresh(uuid, cached, dom.ID()):
                self.entries[uuid] = cached
            else:
                nova, disks, nics = metadata.describe(dom.XMLDesc(0))
                self.entries[uuid] = {"id": dom.ID(), "t": self.now, "disks": disks, "nics": nics,
                                      "nova": nova.to_dict() if nova else None}
        return self.entries[uuid]

    def devices(self, dom):
        return self.entry(dom.UUIDString(), dom)

    def nova(self, uuid, dom):
        return NovaInstance.from_dict(self.entry(uuid, dom)["nova"])


# ---------------------------------------------------------------- instances

@dataclass
class Instance:
    uuid: str
    domain: str
    state: str
    reason: str
    nova: Optional[NovaInstance]
    vcpus: Optional[int]
    values: Dict[str, float] = field(default_factory=dict)
    problems: List[tuple] = field(default_factory=list)     # (state, text, how far over)
    note: Optional[str] = None                               # why not (fully) measured
    slowest_disk: Optional[tuple] = None                     # (disk, {latency metric: ms})
    label: str = ""
    disk_errors: Dict[str, str] = field(default_factory=dict)
    window: Optional[float] = None                           # seconds the rates cover

    @property
    def name(self):
        return _collapse(self.nova.name if self.nova else self.domain)

    @property
    def tenant(self):
        if not self.nova:
            return "not Nova"
        return _collapse(self.nova.project_name or self.nova.project_uuid or "no owner")

    @property
    def title(self):
        return f"{self.name} ({self.tenant})"

    def short_title(self, chars):
        """The title within about `chars` characters: the name is clipped, never the tenant
        (a name must not be able to push its tenant out of sight)."""
        tenant = f" ({self.tenant})"
        return _clip(self.name, max(chars - len(tenant), 12)) + tenant

    @property
    def state_text(self):
        """As virsh says it: `paused (I/O error)`, `shut off (crashed)`, `running`."""
        words = STATE_WORDS.get(self.state, self.state)
        if self.reason in ("unknown", "booted", "unpaused"):       # nothing an operator needs
            return words
        return f"{words} ({REASON_WORDS.get(self.reason, self.reason.replace('_', ' '))})"

    @property
    def state_problem(self):
        """A state that is an alarm, in the status line's words: `paused: I/O error on vda: no space`."""
        words, _, reason = self.state_text.partition(" (")
        text = f"{words}: {reason[:-1]}" if reason else words
        if self.disk_errors:
            text += " on " + ", ".join(f"{disk}: {error}" for disk, error in self.disk_errors.items())
        return text

    @property
    def ranked_problems(self):
        """Worst first: by state, then by how far over its limit (a state alarm first)."""
        return sorted(self.problems, key=lambda p: (-p[0], -p[2]))

    @property
    def worst(self):
        return max((state for state, _, _ in self.problems), default=plugin.OK)

    @property
    def severity(self):
        """For "worst first": the state, then how far over its limit (relative to the limit)."""
        return (self.worst, max((excess for state, _, excess in self.problems if state == self.worst),
                                default=0))


def _collapse(text):
    """Runs of spaces (Unicode's space separators: U+0020, no-break, em, ideographic...) as
    one space. Tab, newline and the other control characters stay, for plugin.plain() to
    show as `?`."""
    return _SPACES.sub(" ", text).strip()


_SPACES = re.compile("[\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")


def _selecting(args, inst):
    _doing(args, "selection")
    chosen = selected(args, inst)
    _doing(args, "libvirtd")
    return chosen


def selected(args, inst):
    nova = inst.nova
    fields = {"tenant": [nova.project_name, nova.project_uuid] if nova else [],
              "name": [nova.name] if nova else [],
              "domain": [inst.domain, inst.uuid]}
    if args.skip_non_nova and not nova:
        return False
    for option, values in fields.items():
        values = [v for v in values if v]
        includes = getattr(args, option)
        if includes and not any(rx.search(v) for rx in includes for v in values):
            return False
        if any(rx.search(v) for rx in getattr(args, f"exclude_{option}") for v in values):
            return False
    return True


def instance_labels(instances):
    """Per-instance perfdata label base (perfdata.labels_with_ids): the Nova (or libvirt) name
    and 8 hex of the uuid, unique and unchanged while the instance lives."""
    labels = labels_with_ids((inst.uuid, inst.name) for inst in instances)
    for inst in instances:
        inst.label = labels[inst.uuid]


# ---------------------------------------------------------------- the Resource

class Instances(nagiosplugin.Resource):
    """The selected domains of one libvirtd. probe() measures them (`measure`) and yields, per
    instance, a Metric for its state and one per value, then the host totals and the count, each
    for the Context of its name to judge. `owner` maps an instance's Metrics to it: the Contexts
    note its breaches on it, and its line and rank (worst first) come from them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.uri = args.connect or default_uri()
        self.instances: List[Instance] = []
        self.totals: Dict[str, float] = {}
        self.host_cpus = 0
        self.mode = ""
        self.notes: List[str] = []
        self.owner: Dict[str, Instance] = {}

    def probe(self):
        self.measure()
        instance_labels(self.instances)
        for inst in sorted(self.instances, key=lambda i: i.label):
            yield self._owned(nagiosplugin.Metric(f"{inst.label}.state", inst.state, context="state"), inst)
            for metric, spec in METRICS.items():
                if metric in inst.values:
                    yield self._owned(nagiosplugin.Metric(f"{inst.label}.{metric}", inst.values[metric],
                                                          spec.unit, **_bounds(metric), context=metric), inst)
        self.totals = totals(self.instances, self.host_cpus)
        for metric, value in self.totals.items():
            yield nagiosplugin.Metric(f"total.{metric}", value, METRICS[metric].unit, **_bounds(metric),
                                      context=f"total.{metric}")
        yield nagiosplugin.Metric("instances", len(self.instances), min=0, context="count")
        yield nagiosplugin.Metric("instances_unmeasured", len(self.unmeasured), context="unmeasured")

    def _owned(self, metric: nagiosplugin.Metric, inst: Instance) -> nagiosplugin.Metric:
        self.owner[metric.name] = inst
        return metric

    @property
    def unmeasured(self) -> List[Instance]:
        return [i for i in self.instances if i.note and i.note.startswith(("not measured", "vanished"))]

    def measure(self) -> None:
        """Sample every domain (one bulk call on QEMU), name each from its Nova metadata (cached
        in the state file), select, and turn counters into rates against a stored sample at least
        --min-window old, or else against a first sample taken --interval earlier in this run."""
        args, uri = self.args, self.uri
        libvirt = libvirt_module()
        conn = open_connection(uri, read_only=True, unreachable=plugin.UNKNOWN)
        store = StateFile(file_for("instances", uri, args.state_dir))
        memory = _this_boot(store.load())
        names = Names(libvirt, memory.get("names"), args.metadata_ttl, time.monotonic())
        asked = [spec for group in args.state_warning + args.state_critical for spec in group]
        sampler = Sampler(libvirt, conn, args.stats_mode, devices=names.devices,
                          running_reasons=any(spec.startswith(("running:", "blocked:")) for spec in asked),
                          retry_budget=args.timeout / 10)

        def sample():
            try:
                return sampler.sample()
            except libvirt.libvirtError as exc:
                raise call_error(exc, f"reading domain stats from {uri}", plugin.UNKNOWN) from None

        samples, domains = sample()
        try:
            self.host_cpus = conn.getInfo()[2]
            known = (_instance(libvirt, names, uuid, domains[uuid], s) for uuid, s in samples.items())
            chosen = [inst for inst in known if inst and _selecting(args, inst)]
            _doing(args, "libvirtd")
        except libvirt.libvirtError as exc:
            raise call_error(exc, f"reading domains from {uri}", plugin.UNKNOWN) from None

        history = memory.get("history") or {}
        previous = {i.uuid: baseline(history.get(i.uuid), samples[i.uuid], args.min_window, args.max_age)
                    for i in chosen}
        without_baseline = [i for i in chosen if samples[i.uuid].active and not samples[i.uuid].error
                            and not previous[i.uuid]]
        baseline_in_run = bool(without_baseline) and 0 < args.interval < args.timeout / 2
        first = {}
        if baseline_in_run:
            first = samples
            time.sleep(args.interval)
            samples, _ = sample()
            previous.update((i.uuid, to_state(first[i.uuid])) for i in without_baseline)

        for inst in chosen:
            _measure(inst, samples.get(inst.uuid), previous.get(inst.uuid), baseline_in_run)
        self.instances, self.mode = chosen, sampler.used_mode
        self.notes = list(dict.fromkeys(store.notes + _save(store, [first, samples], names, args)))


class Offenders(nagiosplugin.Resource):
    """How many instances are WARNING and how many CRITICAL, counted once the Contexts have
    judged every instance (nagiosplugin probes and evaluates its resources in order)."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    def probe(self):
        for state in (nagiosplugin.Warn, nagiosplugin.Critical):
            count = sum(1 for i in self.instances.instances if i.worst == state.code)
            yield nagiosplugin.Metric(f"instances_{state.text}", count, min=0, context="count")


def _bounds(metric: str) -> dict:
    return {"min": 0, "max": 100 if METRICS[metric].kind == "percent" else None}


def totals(instances: List[Instance], host_cpus: int) -> Dict[str, float]:
    """The sums over the instances, for the metrics that have one; cpu and cpu_delay as % of
    the host's CPUs."""
    found = {}
    for metric, spec in METRICS.items():
        per_cpu = spec.total == "host_cpus"
        values = [i.values[metric] * (i.vcpus or 1) if per_cpu else i.values[metric]
                  for i in instances if metric in i.values]
        if values and spec.total:
            found[metric] = sum(values) / host_cpus if per_cpu and host_cpus else sum(values)
    return found

def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _text(value):
    return isinstance(value, str) and len(value) <= 4096


# what a state file may hold, field by field: it may be damaged or edited by hand, and a value
# of the wrong type or range must never reach the arithmetic (TypeError, OverflowError, CPU -100%)
_NOVA_TEXT = ("project_name", "project_uuid", "user_name", "user_uuid", "flavor", "created", "namespace")
_NOVA_NUMBERS = ("vcpus", "memory_mb")


def _valid_sample(entry):
    return (isinstance(entry, dict) and _number(entry.get("t")) and _int(entry.get("id"), -1, 2**31)
            and isinstance(entry.get("c"), dict)
            and all(_text(k) and _int(v, 0, 2**64) for k, v in entry["c"].items()))


def _valid_nova(nova):
    return (isinstance(nova, dict) and set(nova) <= set(NovaInstance.__dataclass_fields__)
            and isinstance(nova.get("name"), str) and 0 < len(nova["name"]) <= 4096
            and all(nova.get(k) is None or _text(nova[k]) for k in _NOVA_TEXT)
            and all(nova.get(k) is None or _int(nova[k], 0, 10**9) for k in _NOVA_NUMBERS))


def _valid_name(entry):
    return (isinstance(entry, dict) and _number(entry.get("t")) and _int(entry.get("id"), -1, 2**31)
            and all(isinstance(entry.get(k), list) and all(_text(d) for d in entry[k])
                    for k in ("disks", "nics"))
            and isinstance(entry.get("balloon", True), bool)
            and (entry.get("nova") is None or _valid_nova(entry["nova"])))


def _this_boot(document):
    """The stored document if it was written in this boot by this version, else nothing:
    time.monotonic() values of another boot cannot be compared. Entries of the wrong shape
    are dropped."""
    if document.get("version") != STATE_VERSION or document.get("boot") != boot_id():
        return {}
    samples, older, names = document.get("samples"), document.get("history"), document.get("names")
    samples = samples if isinstance(samples, dict) else {}
    older = older if isinstance(older, dict) else {}
    # "samples": each domain's latest sample; "history": the earlier ones kept for --min-window
    document["history"] = {
        uuid: sorted((e for e in (older.get(uuid) if isinstance(older.get(uuid), list) else [])
                      + [samples.get(uuid)] if _valid_sample(e)), key=lambda e: e["t"])
        for uuid in set(samples) | set(older)}
    document["names"] = {u: e for u, e in names.items() if _valid_name(e)} \
        if isinstance(names, dict) else {}
    return document


def _measure(inst, sample, previous, baseline_in_run):
    """Fill in the instance's rates (and gauges) from its latest sample."""
    if sample is None:
        inst.note = "vanished during the check"
        return
    inst.state, inst.reason, inst.disk_errors = sample.state_name, sample.reason_name, sample.disk_errors
    if sample.error:
        inst.note = f"not measured: {sample.error}"
        return
    if not sample.active:
        return
    inst.values = rates(previous, sample, sample.vcpus or inst.vcpus)
    if inst.values:
        inst.window = sample.time - previous["t"]
    if not inst.values:
        inst.note = ("no rates (restarted or counters reset during the check)" if baseline_in_run
                     else "collecting baseline, rates from the next run")
    if sample.job_held:
        inst.note = f"{inst.note}; {JOB_HELD}" if inst.note else JOB_HELD
    inst.values.update(gauges(sample))
    inst.slowest_disk = slowest_disk(previous, sample)


def _instance(libvirt, names, uuid, dom, sample):
    try:
        nova = names.nova(uuid, dom)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None                      # vanished between listing and naming
        nova = None
    # CPU time is spent on the vCPUs the domain has now (hot-plug, a flavor's count edited
    # by hand): the flavor's count only where libvirt gives none
    return Instance(uuid, sample.name, sample.state_name, sample.reason_name, nova,
                    sample.vcpus or (nova.vcpus if nova else None),
                    note=f"not measured: {sample.error}" if sample.error else None,
                    disk_errors=sample.disk_errors)


def _less_complete(sample, stored, max_age):
    """Whether `sample` lacks counters that the newest stored sample of the same domain run has
    (NOWAIT left out a busy domain's block stats): not storing it gives the next run all its
    rates. Only within half --max-age, so an unplugged device does not pin an old sample."""
    return (bool(stored) and stored["id"] == sample.id and 0 <= sample.time - stored["t"] <= max_age / 2
            and not set(stored["c"]) <= set(sample.counters))


def _save(store, runs, names, args):
    """Add this run's samples (`runs`: the in-run baseline's, if any, and the last) to each
    domain's history; merge with what concurrent runs stored meanwhile (under the lock)."""
    def change(current):
        current = _this_boot(current) or {"version": STATE_VERSION, "boot": boot_id()}
        stored = current.get("history") or {}
        now = time.monotonic()
        history = {}
        for uuid in runs[-1]:
            mine = [run[uuid] for run in runs if uuid in run and run[uuid].counters]
            theirs = stored.get(uuid) or []
            new = [to_state(s) for s in mine
                   if not _less_complete(s, theirs[-1] if theirs else None, args.max_age)]
            history[uuid] = remember(theirs, new, now, args.min_window, args.max_age)
        current["samples"] = {uuid: entries[-1] for uuid, entries in history.items() if entries}
        current["history"] = {uuid: entries[:-1] for uuid, entries in history.items() if len(entries) > 1}
        known = current.get("names") or {}
        current["names"] = {uuid: names.entries.get(uuid) or known.get(uuid)
                            for uuid in runs[-1] if names.entries.get(uuid) or known.get(uuid)}
        return current
    try:
        store.update(change)
    except StateError as exc:
        return [str(exc)]
    return []


# ---------------------------------------------------------------- the Contexts

def _human(metric: str, value: float) -> str:
    kind = METRICS[metric].kind
    if kind == "ms":
        return sizes.milliseconds(value)
    if kind == "percent":
        return sizes.percent(value)
    return sizes.decimal(value, "B/s") if kind == "bytes" else sizes.decimal(value) + "/s"


class Rate(plugin.ThresholdContext):
    """A value (an instance's or the host total's) against its range, worded as the long output
    shows it ("disk write 59 MB/s > 10 MB/s"); perfdata unless --perfdata none, rounded."""

    def __init__(self, name: str, metric: str, warning=None, critical=None, shown: bool = True) -> None:
        super().__init__(name, warning, critical, what=METRICS[metric].text,
                         show=lambda value: _human(metric, value))
        self.digits = {"percent": 2, "ms": 3}.get(METRICS[metric].kind, 1)
        self.shown = shown

    def performance(self, metric, resource):
        if not self.shown:
            return None
        return nagiosplugin.Performance(metric.name, round(metric.value, self.digits), metric.uom or "",
                                        *self.limits, metric.min, metric.max)


class InstanceRate(Rate):
    """One value of one instance against -w/-c METRIC=RANGE. A breach is noted on the instance
    with how far over its limit it is (the rank, worst first); perfdata per --perfdata."""

    def __init__(self, metric: str, warning, critical, perfdata: str) -> None:
        super().__init__(metric, metric, warning, critical, shown=perfdata in ("all", "offenders"))
        self.offenders_only = perfdata == "offenders"

    def breached(self, metric, state, limit, resource):
        text = super().breached(metric, state, limit, resource)
        resource.owner[metric.name].problems.append((state, text, _excess(metric.value, limit)))
        return text

    def performance(self, metric, resource):
        if self.offenders_only and not resource.owner[metric.name].problems:
            return None
        return super().performance(metric, resource)


class StateLimits(nagiosplugin.Context):
    """An instance's state and reason against --state-critical (default DEFAULT_STATE_CRITICAL)
    and --state-warning; a match is noted on the instance, ahead of its value breaches."""

    def __init__(self, warning: set, critical: set) -> None:
        super().__init__("state")
        self.warning, self.critical = warning, critical

    def evaluate(self, metric, resource):
        inst = resource.owner[metric.name]
        for state, specs in ((nagiosplugin.Critical, self.critical), (nagiosplugin.Warn, self.warning)):
            if _state_matches(specs, inst):
                inst.problems.append((state.code, inst.state_problem, math.inf))
                return self.result_cls(state, inst.state_problem, metric)
        return self.result_cls(nagiosplugin.Ok, None, metric)


class Count(nagiosplugin.Context):
    """A count for the graphs (instances, and by state), judged by nothing."""

    def __init__(self, shown: bool) -> None:
        super().__init__("count")
        self.shown = shown

    def performance(self, metric, resource):
        return nagiosplugin.Performance(metric.name, metric.value, "", None, None, 0) if self.shown else None


class Unmeasured(nagiosplugin.Context):
    """UNKNOWN when not one selected instance could be measured and nothing else is wrong: the
    check cannot say that all is well."""

    def evaluate(self, metric, resource):
        everyone = resource.instances
        if everyone and metric.value == len(everyone) and not any(i.problems for i in everyone):
            return self.result_cls(nagiosplugin.Unknown, "no instance measured", metric)
        return self.result_cls(nagiosplugin.Ok, None, metric)


def contexts(args: argparse.Namespace) -> List[nagiosplugin.Context]:
    warning, critical = dict(args.warning), dict(args.critical)
    total_warning, total_critical = dict(args.total_warning), dict(args.total_critical)
    state_warning = {s for group in args.state_warning for s in group}
    state_critical = ({s for group in args.state_critical for s in group} if args.state_critical
                      else set(DEFAULT_STATE_CRITICAL))
    shown = args.perfdata != "none"
    return ([InstanceRate(m, warning.get(m), critical.get(m), args.perfdata) for m in METRICS]
            + [Rate(f"total.{m}", m, total_warning.get(m), total_critical.get(m), shown) for m in METRICS]
            + [StateLimits(state_warning, state_critical), Count(shown), Unmeasured("unmeasured")])


def _excess(value, limit):
    """How far `value` is outside `limit`, relative to the bound it broke: 4.9 for 59 against
    a limit of 10 (0 for a value inside an inverted range); a bound of 0 broken at all counts
    as infinitely far."""
    if limit.invert:
        return 0.0
    bound = limit.end if value > limit.end else limit.start
    distance = abs(value - bound)
    return distance / abs(bound) if bound else math.inf



# ---------------------------------------------------------------- the Summary

class InstancesSummary(nagiosplugin.Summary):
    """The status line: the offenders, worst first (the first three), the host totals over their
    limits, or else the count by state and the totals; what could not be measured; the state
    file's notes. The long output: one line per instance, worst first (--top), and at -v how
    it was measured."""

    def __init__(self, measured: Instances, verbose: int = 0) -> None:
        self.measured = measured
        self.verbose_level = verbose

    def ok(self, results) -> str:
        return self.problem(results)

    def problem(self, results) -> str:
        found = self.measured
        instances, offenders = found.instances, self.offenders()
        total_problems = [r.hint for r in results
                          if r.hint and r.metric and r.metric.name.startswith("total.")]
        if not instances:
            return _with_notes("no instances match the selection", found.notes)
        parts = []
        if offenders:
            shown = "; ".join(f"{i.short_title(60)} " + ", ".join(text for _, text, _ in i.ranked_problems)
                              for i in offenders[:3])
            more = f"; and {len(offenders) - 3} more" if len(offenders) > 3 else ""
            parts.append(f"{len(offenders)} of {_count(len(instances))} over limits: {shown}{more}")
        if total_problems:
            parts.append("host total " + ", ".join(total_problems))
        if not parts:
            states = {}
            for inst in instances:
                states[inst.state] = states.get(inst.state, 0) + 1
            by_state = ", ".join(f"{n} {STATE_WORDS.get(s, s)}" for s, n in sorted(states.items()))
            parts.append(f"{_count(len(instances))} within limits ({by_state})")
            if found.totals:
                shown = [m for m in ("cpu", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes",
                                     "net_tx_bytes") if m in found.totals]
                parts.append("total " + ", ".join(f"{METRICS[m].text} {_human(m, found.totals[m])}"
                                                  for m in shown))
            elif not any(m != "memory" for i in instances for m in i.values) and any(i.note for i in instances):
                parts.append("collecting baseline, rates from the next run")
        unmeasured = found.unmeasured
        if unmeasured:
            parts.append(f"{len(unmeasured)} not measured: " + ", ".join(
                f"{i.title} {i.note}" for i in unmeasured[:3]))
        return _with_notes("; ".join(parts), found.notes)

    def offenders(self) -> List[Instance]:
        """Worst first: by state, then by how far over its limit, so that neither names nor
        --top can hide the worst offender."""
        return sorted((i for i in self.measured.instances if i.problems),
                      key=lambda i: (-i.severity[0], -i.severity[1], i.name, i.uuid))

    def verbose(self, results) -> List[str]:
        found, args = self.measured, self.measured.args
        # within limits: running ones first, then by name, so the lines keep their order run to run
        ordered = self.offenders() + sorted((i for i in found.instances if not i.problems),
                                            key=lambda i: (i.state != "running", i.name, i.uuid))
        lines = [_line(i, self.verbose_level) for i in ordered[:args.top]]
        if len(ordered) > args.top:
            lines.append(f"... and {len(ordered) - args.top} more (--top {args.top})")
        if self.verbose_level:
            windows = [i.window for i in found.instances if i.window]
            span = (f", rates over {min(windows):.1f}-{max(windows):.1f} s (--min-window {args.min_window:g})"
                    if windows else "")
            lines.append(f"stats: {found.mode} path, {len(found.instances)} selected, "
                         f"host CPUs {found.host_cpus}{span}")
        return lines


def _with_notes(text: str, notes: List[str]) -> str:
    return text + (" (" + "; ".join(notes) + ")" if notes else "")


def _count(number):
    return sizes.plural(number, "instance")


def _clip(text, chars):
    return text if len(text) <= chars else text[:chars - 1] + "\u2026"


def _line(inst, verbose=0):
    state = plugin.STATE_NAMES[inst.worst]
    where = f"[{inst.domain} {inst.uuid}, {inst.state_text}]"
    if inst.problems:
        detail = ", ".join(text for _, text, _ in inst.ranked_problems)
    elif inst.values:
        detail = ", ".join(f"{METRICS[m].text} {_human(m, inst.values[m])}" for m in METRICS
                           if m in inst.values)
        if inst.note:
            detail += f" ({inst.note})"
    else:
        detail = inst.note or ("not running" if inst.state not in ("running", "blocked") else "no rates")
    if not inst.problems and inst.state == "paused":
        detail += ("; paused by libvirt for a job that resumes it: not an alarm" if inst.reason in PASSING_PAUSES
                   else "; paused: an alarm only if asked (--state-warning/--state-critical "
                        f"paused:{inst.reason})")
    if verbose and inst.window:
        detail += f"; rates over {inst.window:.2f} s"
    if verbose and inst.slowest_disk:
        disk, latencies = inst.slowest_disk
        detail += f"; slowest disk {disk}: " + ", ".join(
            f"{METRICS[m].text.split()[1]} {_human(m, ms)}" for m, ms in latencies.items())
    return f"{state}: {inst.title} {where}: {detail}"


# ---------------------------------------------------------------- the check

def make_check(args: argparse.Namespace, measured: Optional[Instances] = None) -> nagiosplugin.Check:
    """The check for these arguments; `measured`: the Instances to judge (default: this host's,
    measured when the Check runs)."""
    if args.interval is None:
        args.interval = min(1.0, args.timeout / 4)
    elif args.interval and args.interval >= args.timeout / 2:
        raise plugin.UsageError(f"argument --interval: {args.interval:g} s must be less than half of "
                                f"-t/--timeout ({args.timeout:g} s)")
    measured = measured or Instances(args)
    return nagiosplugin.Check(measured, Offenders(measured), *contexts(args),
                              InstancesSummary(measured, args.verbose))


def lighter_perfdata(args: argparse.Namespace, pairs: list):
    """Over --max-output: per-instance perfdata of the offenders only, then none; the totals
    and counts stay."""
    for mode in ("offenders", "totals"):
        if args.perfdata in ("all", "offenders") and mode != args.perfdata:
            yield ([token for metric, token in pairs if _kept(mode, metric)],
                   f"(perfdata cut to {mode} to stay under {args.max_output} bytes)")


def _kept(mode: str, metric: nagiosplugin.Metric) -> bool:
    inst = getattr(metric.resource, "owner", {}).get(metric.name)
    return inst is None or (mode == "offenders" and bool(inst.problems))


class Activity:
    """What the run is doing, in the words of a timeout: the watchdog renders it (str) when the
    deadline fires, so the verdict names what used up -t, libvirtd or not."""

    def __init__(self, args):
        self.uri = args.connect or default_uri()
        self.timeout = args.timeout
        self.now = "libvirtd"

    def __str__(self):
        if self.now == "selection":
            return (f"{self.uri}: matching the selection's regular expressions (--tenant, --name, "
                    f"--domain, --exclude-*) took longer than {self.timeout:g} s, instances not measured")
        return f"{self.uri}: no answer from libvirtd within {self.timeout:g} s, instances not measured"


def _doing(args, what):
    activity = getattr(args, "activity", None)
    if activity:
        activity.now = what


def timeout_message(args):
    args.activity = Activity(args)
    return args.activity


def main(argv=None):
    plugin.run(NAME, build_parser(), make_check, argv, timeout_state=plugin.UNKNOWN,
               timeout_message=timeout_message, lighter_perfdata=lighter_perfdata)
