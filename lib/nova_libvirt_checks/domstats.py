"""Samples of every domain's counters, in one bulk call where the driver has it.

QEMU/KVM: one virConnectGetAllDomainStats with the NOWAIT flag, so a domain that holds its
job lock (migration, shutdown, a stuck QEMU monitor) does not stall the whole check; it comes
back with fewer fields. Drivers without bulk stats (LXC, the test driver) answer the bulk call
with the state alone: then each domain is asked in turn (info, blockStats, interfaceStats,
memoryStats). Both paths give the same counter keys:

    cpu                      total CPU time, ns
    disk:<dev>:<field>       rd_bytes rd_ops wr_bytes wr_ops
    net:<dev>:<field>        rx_bytes rx_packets rx_errors rx_drops, tx_... the same
and the gauges `memory_kib` / `memory_used_kib` where the balloon driver reports them.
Where the driver reports them (see pressure_counters):
    disk:<dev>:<field>       rd_times wr_times fl_times (ns spent), fl_ops
    cpu_delay                ns the vCPUs were runnable but waited for a host CPU (bulk only)
    mem:<field>              swap_in swap_out (bytes), major_fault: the guest's own counters,
                             last_update: host time (s) at which QEMU last received them

Each sample also carries the state's reason (why a domain is paused or shut off: bulk
`state.reason`, `dom.state()` per domain) and, for a domain paused on an I/O error, which disks
failed and how (virDomainGetDiskErrors, allowed on a read-only connection).
"""
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

from .connection import DOMAIN_STATES

ACTIVE_STATES = {1, 2, 3, 7}        # running, blocked, paused, pmsuspended: have live counters
# NOWAIT leaves out what needs the domain's job while another client holds it (nova-compute,
# ceilometer, collectd asking block or balloon stats: milliseconds): such domains are asked
# again after these pauses (many chances to find the job free), so that a run keeps every
# counter and every perfdata label; all the re-asks of one sample stop within the sampler's
# budget (RETRY_BUDGET at most; 0.25 s lost labels under a client polling in a tight loop). A
# domain whose job (or monitor call) began HELD_FOR_MS ago or more (a migration, a hung
# monitor, a dump) is not waited for at all: it stays partial, as NOWAIT intends, so a domain
# that stays busy does not tax every run with the whole ladder.
RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
HELD_FOR_MS = 1000
RETRY_BUDGET = 0.8
JOB_HELD = "block and memory counters unavailable: its job is held by another libvirt client"

# virDomain<State>Reason, as libvirt names them (lower case): stable numbers of libvirt's ABI
REASONS = {
    "nostate": ("unknown",),
    "running": ("unknown", "booted", "migrated", "restored", "from_snapshot", "unpaused",
                "migration_canceled", "save_canceled", "wakeup", "crashed", "postcopy",
                "postcopy_failed"),
    "blocked": ("unknown",),
    "paused": ("unknown", "user", "migration", "save", "dump", "ioerror", "watchdog",
               "from_snapshot", "shutting_down", "snapshot", "crashed", "starting_up",
               "postcopy", "postcopy_failed", "api_error"),
    "shutdown": ("unknown", "user"),
    "shutoff": ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                "from_snapshot", "daemon"),
    "crashed": ("unknown", "panicked"),
    "pmsuspended": ("unknown",),
}
PAUSED, PAUSED_IOERROR = 3, REASONS["paused"].index("ioerror")
DISK_ERRORS = {1: "unspecified error", 2: "no space"}     # virDomainDiskErrorCode (0: none)

_BLOCK_FIELDS = (("rd.bytes", "rd_bytes"), ("rd.reqs", "rd_ops"),
                 ("wr.bytes", "wr_bytes"), ("wr.reqs", "wr_ops"))
# bulk block.N.* and per-domain blockStatsFlags() names of the latency counters
_LATENCY_FIELDS = (("rd.times", "rd_total_times", "rd_times"), ("wr.times", "wr_total_times", "wr_times"),
                   ("fl.times", "flush_total_times", "fl_times"), ("fl.reqs", "flush_operations", "fl_ops"))
# balloon guest statistics (KiB, KiB, count; bulk name of the last, per-domain name, factor),
# absent unless the guest's driver reports them; last_update: when QEMU last received them
_MEMORY_FIELDS = (("swap_in", "swap_in", 1024), ("swap_out", "swap_out", 1024),
                  ("major_fault", "major_fault", 1), ("last-update", "last_update", 1))
_NET_FIELDS = (("rx.bytes", "rx_bytes"), ("rx.pkts", "rx_packets"), ("rx.errs", "rx_errors"),
               ("rx.drop", "rx_drops"), ("tx.bytes", "tx_bytes"), ("tx.pkts", "tx_packets"),
               ("tx.errs", "tx_errors"), ("tx.drop", "tx_drops"))


@dataclass
class DomainSample:
    uuid: str
    name: str
    id: int                          # changes whenever the domain is (re)started
    state: int
    time: float                      # time.monotonic() when the counters were read
    vcpus: Optional[int] = None
    counters: Dict[str, int] = field(default_factory=dict)
    gauges: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None      # why this domain could not be measured
    job_held: bool = False           # NOWAIT left out the fields that need its job, even re-asked
    reason: int = 0                  # why it is in its state (REASONS)
    disk_errors: Dict[str, str] = field(default_factory=dict)   # paused on I/O error: disk -> error

    @property
    def state_name(self):
        return DOMAIN_STATES.get(self.state, "nostate")

    @property
    def reason_name(self):
        reasons = REASONS.get(self.state_name, ())
        return reasons[self.reason] if 0 <= self.reason < len(reasons) else f"reason{self.reason}"

    @property
    def active(self):
        return self.state in ACTIVE_STATES


class Sampler:
    def __init__(self, libvirt, conn, mode="auto", devices=None, running_reasons=False,
                 retry_budget=RETRY_BUDGET):
        """`devices(dom)` describes a domain for the per-domain path: a dict with the target
        names of its "disks" and "nics", in which the sampler notes "balloon": False once the
        domain answered memoryStats with nothing (no balloon driver), so as not to ask again.
        The per-domain path asks a running domain's reason only with `running_reasons`.
        `retry_budget`: seconds the re-asks of one sample may take (RETRY_BUDGET at most)."""
        self.libvirt = libvirt
        self.conn = conn
        self.mode = mode
        self.devices = devices
        self.running_reasons = running_reasons
        self.used_mode = None
        self.retry_budget = min(retry_budget, RETRY_BUDGET)

    def sample(self):
        """{uuid: DomainSample} for every domain on the host, and the virDomain objects."""
        if self.mode in ("auto", "bulk"):
            samples, domains = self._bulk()
            if self.mode == "bulk" or not self._bulk_lacks_counters(samples):
                self.used_mode = "bulk"
                return self._disk_errors(samples, domains), domains
        self.used_mode = "per-domain"
        samples, domains = self._per_domain()
        return self._disk_errors(samples, domains), domains

    def _disk_errors(self, samples, domains):
        for uuid, sample in samples.items():
            if sample.state == PAUSED and sample.reason == PAUSED_IOERROR:
                try:
                    errors = domains[uuid].diskErrors(0)
                except self.libvirt.libvirtError:
                    continue            # gone, or resumed meanwhile: the reason says enough
                sample.disk_errors = {disk: DISK_ERRORS.get(code, f"error {code}")
                                      for disk, code in sorted(errors.items()) if code}
        return samples

    @staticmethod
    def _bulk_lacks_counters(samples):
        return any(s.active and "cpu" not in s.counters for s in samples.values())

    def _bulk(self):
        lv = self.libvirt
        groups = (lv.VIR_DOMAIN_STATS_STATE | lv.VIR_DOMAIN_STATS_CPU_TOTAL | lv.VIR_DOMAIN_STATS_BALLOON
                  | lv.VIR_DOMAIN_STATS_VCPU | lv.VIR_DOMAIN_STATS_INTERFACE | lv.VIR_DOMAIN_STATS_BLOCK)
        try:
            records = self._stamped(self.conn.getAllDomainStats, groups,
                                    lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
        except lv.libvirtError as exc:
            if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
                raise
            records = self._stamped(self.conn.getAllDomainStats, groups, 0)  # older than NOWAIT
        else:
            records = self._complete(records, groups)
        samples, domains = {}, {}
        for dom, record, when in records:
            sample = DomainSample(dom.UUIDString(), dom.name(), dom.ID(), record.get("state.state", 0),
                                  when, record.get("vcpu.current"), reason=record.get("state.reason", 0))
            if sample.active:
                _read_record(record, sample)
                sample.job_held = _skipped_job_fields(record)
            samples[sample.uuid] = sample
            domains[sample.uuid] = dom
        return samples, domains

    @staticmethod
    def _stamped(call, *args):
        """[(dom, record, when)]: `when` the middle of the call, the best guess of when the
        counters were read (a rate over a busy machine's scheduling delay would be a spike)."""
        before = time.monotonic()
        records = call(*args)
        when = (before + time.monotonic()) / 2
        return [(dom, record, when) for dom, record in records]

    def _complete(self, records, groups):
        """Ask the domains whose record lacks its job's fields again (NOWAIT, briefly, within
        the budget), except those in a long job. A record asked again carries the time of its
        own answer."""
        started, held = time.monotonic(), set()
        for delay in RETRY_DELAYS:
            partial = [dom for dom, record, _ in records
                       if _skipped_job_fields(record) and not self._held_long(dom, held)]
            if not partial or time.monotonic() - started + delay > self.retry_budget:
                break
            time.sleep(delay)
            try:
                again = self._stamped(self.conn.domainListGetStats, partial, groups,
                                      self.libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
            except self.libvirt.libvirtError:
                break               # a domain went away meanwhile: keep what we have
            fresher = {dom.UUIDString(): (dom, record, when) for dom, record, when in again}
            records = [fresher.get(dom.UUIDString(), (dom, record, when)) for dom, record, when in records]
        return records

    def _held_long(self, dom, held):
        """Whether libvirt says the domain's job or monitor call began HELD_FOR_MS ago or more
        (virDomainGetControlInfo answers without the job); remembered in `held`."""
        if dom.UUIDString() not in held:
            try:
                state, _details, since_ms = dom.controlInfo()
            except self.libvirt.libvirtError:
                return False
            if state == self.libvirt.VIR_DOMAIN_CONTROL_OK or since_ms < HELD_FOR_MS:
                return False
            held.add(dom.UUIDString())
        return True

    def _per_domain(self):
        lv = self.libvirt
        samples, domains = {}, {}
        for dom in self.conn.listAllDomains(0):
            try:
                uuid, name = dom.UUIDString(), dom.name()
                state, _max_kib, _kib, vcpus, cpu_time = dom.info()
                sample = DomainSample(uuid, name, dom.ID(), state, time.monotonic(), vcpus)
                if state != 1 or self.running_reasons:     # one more call; a reason matters elsewhere
                    sample.state, sample.reason = dom.state(0)
                if sample.active:
                    sample.counters["cpu"] = cpu_time
                    self._read_devices(dom, sample)
                    sample.time = time.monotonic()
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    continue            # gone between listing and asking: not on the host now
                sample = DomainSample(dom.UUIDString(), dom.name(), -1, 0, time.monotonic(),
                                      error=" ".join(str(exc).split()))
            samples[sample.uuid] = sample
            domains[sample.uuid] = dom
        return samples, domains

    def _read_devices(self, dom, sample):
        lv = self.libvirt
        layout = self.devices(dom)
        for disk in layout["disks"]:
            try:
                if layout.get("times", True):
                    rd_ops, rd_bytes, wr_ops, wr_bytes = self._block_stats_flags(dom, disk, layout, sample)
                else:
                    rd_ops, rd_bytes, wr_ops, wr_bytes, _errs = dom.blockStats(disk)
            except lv.libvirtError:
                continue                # unplugged since the XML was read
            for key, value in (("rd_bytes", rd_bytes), ("rd_ops", rd_ops),
                               ("wr_bytes", wr_bytes), ("wr_ops", wr_ops)):
                if value >= 0:
                    sample.counters[f"disk:{disk}:{key}"] = value
        for nic in layout["nics"]:
            try:
                values = dom.interfaceStats(nic)
            except lv.libvirtError:
                continue
            for (_, key), value in zip(_NET_FIELDS, values):
                if value >= 0:
                    sample.counters[f"net:{nic}:{key}"] = value
        memory = {}
        if layout.get("balloon", True):
            try:
                memory = dom.memoryStats()
            except lv.libvirtError:
                pass
            layout["balloon"] = bool(memory)
        _memory_gauges(memory.get("available"), memory.get("usable", memory.get("unused")), sample)
        _memory_counters(memory.get, 1, sample)

    def _block_stats_flags(self, dom, disk, layout, sample):
        """blockStats() plus the latency counters where the driver has them (QEMU; not LXC or
        the test driver: noted in the layout as "times": False, so as not to ask again)."""
        try:
            stats = dom.blockStatsFlags(disk)
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() != self.libvirt.VIR_ERR_NO_SUPPORT:
                raise
            layout["times"] = False
            return dom.blockStats(disk)[:4]
        if "rd_total_times" not in stats:
            layout["times"] = False
        for _, name, key in _LATENCY_FIELDS:
            if stats.get(name, -1) >= 0:
                sample.counters[f"disk:{disk}:{key}"] = stats[name]
        return (stats.get("rd_operations", -1), stats.get("rd_bytes", -1),
                stats.get("wr_operations", -1), stats.get("wr_bytes", -1))


def _skipped_job_fields(record):
    """Whether NOWAIT left out the fields that need the domain's job: the block counters (all
    disks at once) and the balloon figures (balloon.rss is there whenever the job was had)."""
    if record.get("state.state") not in ACTIVE_STATES:
        return False
    blocks = record.get("block.count", 0)
    if blocks and not any(f"block.{i}.rd.reqs" in record for i in range(blocks)):
        return True
    return "balloon.current" in record and "balloon.rss" not in record


def _read_record(record, sample):
    if "cpu.time" in record:
        sample.counters["cpu"] = record["cpu.time"]
    for i in range(record.get("block.count", 0)):
        disk = record.get(f"block.{i}.name")
        for stat, key in _BLOCK_FIELDS:
            value = record.get(f"block.{i}.{stat}")
            if disk and value is not None and value >= 0:
                sample.counters[f"disk:{disk}:{key}"] = value
    for i in range(record.get("net.count", 0)):
        nic = record.get(f"net.{i}.name")
        for stat, key in _NET_FIELDS:
            value = record.get(f"net.{i}.{stat}")
            if nic and value is not None and value >= 0:
                sample.counters[f"net:{nic}:{key}"] = value
    pressure_counters(record, sample)
    _memory_gauges(record.get("balloon.available"),
                   record.get("balloon.usable", record.get("balloon.unused")), sample)


def _memory_gauges(available_kib, free_kib, sample):
    """Guest memory in use, as the balloon driver inside the guest reports it."""
    if available_kib and free_kib is not None and 0 <= free_kib <= available_kib:
        sample.gauges["memory_kib"] = available_kib
        sample.gauges["memory_used_kib"] = available_kib - free_kib


def pressure_counters(record, sample):
    """The counters behind latency, CPU delay and swapping, from a bulk stats record: only
    those the driver and the guest report (vcpu.N.delay: newer libvirt on Linux hosts, e.g. 9.0)."""
    for i in range(record.get("block.count", 0)):
        disk = record.get(f"block.{i}.name")
        for stat, _, key in _LATENCY_FIELDS:
            value = record.get(f"block.{i}.{stat}")
            if disk and value is not None and value >= 0:
                sample.counters[f"disk:{disk}:{key}"] = value
    online = [i for i in range(record.get("vcpu.maximum", 0)) if f"vcpu.{i}.state" in record]
    if online and all(f"vcpu.{i}.delay" in record for i in online):
        sample.counters["cpu_delay"] = sum(record[f"vcpu.{i}.delay"] for i in online)
    _memory_counters(lambda name: record.get(f"balloon.{name}"), 0, sample)


def _memory_counters(get, which, sample):
    for *names, factor in _MEMORY_FIELDS:
        value = get(names[which])
        if value is not None and value >= 0:
            sample.counters[f"mem:{names[1]}"] = value * factor
