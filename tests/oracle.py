"""An independent measurement of every number check_libvirt_instances prints.

While a test runs the check, a `CounterRecorder` reads the same domains' counters itself, in a
background thread, many times a second (real QEMU guests: virConnectGetAllDomainStats over the
read-only socket; the test driver: per-domain calls on a connection of its own), each reading
stamped with time.monotonic() at the middle of its call - the clock the check stamps its own
samples with. The check records, in its state file, the time of the sample each rate ends with
and (before the run) of the one it starts from: that window, read from the state file
(`recorded_sample_times`), is what the test measures over; the check's own counter values are
never used.

Counters only grow, so for a check's sample stamped t the test knows its counter lay between
the last reading whose call ended by t - slack and the first one whose call began at t + slack
or later (libvirtd read the counters somewhere within the call: a call that waited out a hung
daemon spans seconds). Over the window [t1, t2]
the check's delta therefore lies in [C(before t2) - C(after t1), C(after t2) - C(before t1)]:
a bracket, exact for any burstiness of the guest's I/O, a few % wide for steady counters at a
5 s window (2 x (slack + the reading period + a call) / window). The slack covers the check's stamp
being the middle of a stats call, not the instant libvirtd read the counter: SLACK_S (a call
takes ~40 ms here, 150 ms when busy), or the longest of the test's own calls around t when the machine is loaded
(at a load average of 20 on 2 cores calls took up to 1.2 s and the check's stamps lay up to
0.44 s after its counters were read): the bracket widens with the load, honestly. Where a test
held the check's call itself (tests/test_faults_libvirt.py's RpcProxy), the stamp is the middle
of the wait and libvirtd read the counters after it: `read_between` runs the bracket to the end
of the hold. `assert_rates_match` then allows only the rounding of the
printed value (and 0.5 % for float sums) beyond the bracket. A rate 10 % off lies outside the
bracket of every steady counter (CPU, network).
"""
from __future__ import annotations

import glob
import json
import os
import threading
import time

SLACK_S = 0.15
REL_SLACK = 0.005

# metric -> how it is read from a getAllDomainStats record (sums over devices)
_BLOCK = {"disk_read_bytes": ("rd.bytes",), "disk_write_bytes": ("wr.bytes",),
          "disk_read_ops": ("rd.reqs",), "disk_write_ops": ("wr.reqs",)}
_NET = {"net_rx_bytes": ("rx.bytes",), "net_tx_bytes": ("tx.bytes",),
        "net_rx_packets": ("rx.pkts",), "net_tx_packets": ("tx.pkts",),
        "net_errors": ("rx.errs", "tx.errs"), "net_drops": ("rx.drop", "tx.drop")}
RATE_METRICS = ("cpu", *_BLOCK, *_NET)
# cpu_delay: bulk stats only (vcpu.N.delay), so not in the per-domain readings of RATE_METRICS
ALL_METRICS = (*RATE_METRICS, "cpu_delay", "memory")
# measured against their own independent readings in tests/test_instances_pressure.py (ratios
# of two deltas, rates over the guest's own reporting window): left out here
MEASURED_ELSEWHERE = ("disk_read_latency", "disk_write_latency", "disk_flush_latency",
                      "mem_swap_in", "mem_swap_out", "mem_major_faults")


def counters_from_record(record):
    """{metric: counter} (cpu in ns; "memory": % in use, a gauge) of one getAllDomainStats
    record; a group the record lacks (NOWAIT: another client held the domain's job) is left out."""
    out = {}
    if "cpu.time" in record:
        out["cpu"] = record["cpu.time"]
    online = [i for i in range(record.get("vcpu.maximum", 0)) if f"vcpu.{i}.state" in record]
    if online and all(f"vcpu.{i}.delay" in record for i in online):
        out["cpu_delay"] = sum(record[f"vcpu.{i}.delay"] for i in online)
    blocks = record.get("block.count", 0)
    if blocks and all(f"block.{i}.rd.reqs" in record for i in range(blocks)):
        for metric, fields in _BLOCK.items():
            out[metric] = sum(record.get(f"block.{i}.{f}", 0) for i in range(blocks) for f in fields)
    nets = record.get("net.count", 0)
    if nets:
        for metric, fields in _NET.items():
            out[metric] = sum(record.get(f"net.{i}.{f}", 0) for i in range(nets) for f in fields)
    available = record.get("balloon.available")
    usable = record.get("balloon.usable", record.get("balloon.unused"))
    if available and usable is not None and "balloon.rss" in record:
        out["memory"] = (available - usable) / available * 100
    return out


def bulk_reader(conn, uuids):
    """Reads the domains `uuids` with one domainListGetStats call (NOWAIT: never holds up the
    check's own call for long). Only these domains: a call over every domain of a busy host
    (other test sessions' domains) took seconds here. While libvirtd is down (fault tests)
    there is no reading; a new connection is made when it is back."""
    import libvirt
    from tests.fixtures_libvirt import open_ro
    groups = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
              | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_INTERFACE
              | libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_VCPU)
    uri = conn.getURI()
    state = {"conn": conn}

    def read():
        try:
            if state["conn"] is None:
                state["conn"] = open_ro(uri)
            doms = [state["conn"].lookupByUUIDString(u) for u in uuids]
            records = state["conn"].domainListGetStats(
                doms, groups, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
        except libvirt.libvirtError:
            state["conn"] = None
            return None
        return {dom.UUIDString(): counters_from_record(record) for dom, record in records}
    return read


def per_domain_reader(conn, uuids):
    """Reads the domains `uuids` with per-domain calls (drivers without bulk stats: the test
    driver), devices taken from each domain's XML."""
    from lxml import etree
    layout = {}
    for uuid in uuids:
        dom = conn.lookupByUUIDString(uuid)
        xml = etree.fromstring(dom.XMLDesc(0))
        layout[uuid] = (dom, [t.get("dev") for t in xml.findall("devices/disk/target")],
                        [t.get("dev") for t in xml.findall("devices/interface/target")])

    def read():
        out = {}
        for uuid, (dom, disks, nics) in layout.items():
            values = dict.fromkeys(RATE_METRICS, 0)
            values["cpu"] = dom.info()[4]
            for disk in disks:
                rd_ops, rd_bytes, wr_ops, wr_bytes, _ = dom.blockStats(disk)
                for metric, value in (("disk_read_ops", rd_ops), ("disk_read_bytes", rd_bytes),
                                      ("disk_write_ops", wr_ops), ("disk_write_bytes", wr_bytes)):
                    values[metric] += value
            for nic in nics:
                rxb, rxp, rxe, rxd, txb, txp, txe, txd = dom.interfaceStats(nic)
                for metric, value in (("net_rx_bytes", rxb), ("net_rx_packets", rxp),
                                      ("net_tx_bytes", txb), ("net_tx_packets", txp),
                                      ("net_errors", rxe + txe), ("net_drops", rxd + txd)):
                    values[metric] += value
            if not disks:
                for metric in _BLOCK:
                    del values[metric]
            if not nics:
                for metric in _NET:
                    del values[metric]
            out[uuid] = values
        return out
    return read


class CounterRecorder:
    """Readings [(monotonic time, {uuid: {metric: counter}})] taken by `read` every `period`
    seconds in a thread, from __enter__ to __exit__. A reading is stamped at the middle of its
    call; `spans` holds each call's (start, end): libvirtd read the counters somewhere in there
    (a call that waited out a hung daemon spans seconds: its stamp alone says little)."""

    def __init__(self, read, period=0.03, min_slack=SLACK_S):
        """read() -> {uuid: {metric: counter}}, or None: no reading this time."""
        self.read = read
        self.min_slack = min_slack
        self.period = period
        self.readings = []
        self.spans = []
        self.held_calls = []        # (start, end) of the check's calls a test held (RpcProxy)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error = None

    def _run(self):
        while not self._stop.is_set():
            before = time.monotonic()
            try:
                values = self.read()
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
                self.error = exc
                return
            after = time.monotonic()
            if values is not None:
                self.spans.append((before, after))
                self.readings.append(((before + after) / 2, values))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        self.wait_past(time.monotonic() + 4 * SLACK_S)    # readings before the check's first
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def wait_past(self, t, timeout=30):
        """Return once a reading whose call started after t exists (the bracket's upper end)."""
        deadline = time.monotonic() + timeout
        while not self.spans or self.spans[-1][0] <= t:
            assert self.error is None, f"the test's own stats reading failed: {self.error!r}"
            assert time.monotonic() < deadline, f"no stats reading after t={t} in {timeout} s"
            time.sleep(self.period / 2)

    def slack(self, t):
        """How far from t a stats call's read may lie: SLACK_S, or under load the longest call
        of the test's own next to t (the check's call to the same daemon takes as long): the
        three that ended before t, any going on at t, the three that started after t."""
        spans = list(self.spans)
        before = [end - start for start, end in spans if end <= t][-3:]
        during = [end - start for start, end in spans if start < t < end]
        after = [end - start for start, end in spans if start >= t][:3]
        return max([self.min_slack, *before, *during, *after])

    def read_between(self, t):
        """(earliest, latest) time the counters of a check's sample stamped t may have been
        read: t -+ slack; but within a call the test held (held_calls), a stamp of that call is
        the middle of the wait and libvirtd read the counters only after it: up to its end
        + slack."""
        slack = self.slack(t)
        released = [end for start, end in self.held_calls if start <= t <= end]
        return t - slack, max([t, *released]) + slack

    def _around(self, uuid, metric, t):
        """The counter's lowest and highest possible value at t: the last reading whose call
        ended by the earliest moment it may have been read, the first whose call started at the
        latest such moment or later."""
        earliest, latest = self.read_between(t)
        readings = list(zip(self.spans, self.readings))
        before = [v[uuid][metric] for (_, end), (_, v) in readings
                  if end <= earliest and metric in v.get(uuid, {})]
        after = [v[uuid][metric] for (start, _), (_, v) in readings
                 if start >= latest and metric in v.get(uuid, {})]
        assert before and after, (f"no reading of {metric} of {uuid} on both sides of t={t} "
                                  f"({earliest - t:.3f}, +{latest - t:.3f}): "
                                  f"{[(round(a - t, 3), round(b - t, 3)) for a, b in self.spans]}")
        return before[-1], after[0]

    def rate_bracket(self, uuid, metric, t1, t2):
        """(lowest, highest) per-second rate the check's samples at t1 and t2 allow. t1 may be
        a range (earliest, latest) where the check did not record its window's start (two
        samples within one run): the bracket is then as wide as that uncertainty."""
        t1a, t1b = t1 if isinstance(t1, tuple) else (t1, t1)
        low1a, _ = self._around(uuid, metric, t1a)
        _, high1b = self._around(uuid, metric, t1b)
        low2, high2 = self._around(uuid, metric, t2)
        return (low2 - high1b) / (t2 - t1a), (high2 - low1a) / (t2 - t1b)

    def gauge_bracket(self, uuid, metric, t):
        """(lowest, highest) value of a gauge (memory %) over the readings near t: the balloon
        figures change only when the guest reports (its stats period)."""
        earliest, latest = self.read_between(t)
        near = [v[uuid][metric] for when, v in self.readings
                if earliest - 2 * self.period <= when <= latest + 2 * self.period
                and metric in v.get(uuid, {})]
        assert near, f"no reading of {metric} of {uuid} near t={t}"
        return min(near), max(near)


def read_state(state_dir):
    """The check's state document in state_dir (of the URI it ran with last)."""
    paths = glob.glob(os.path.join(state_dir, "instances-*.json"))
    assert paths, f"no state file in {state_dir}"
    with open(max(paths, key=os.path.getmtime)) as handle:
        return json.load(handle)


def recorded_sample_times(state_dir):
    """{uuid: time.monotonic() of the latest sample the check recorded} (its rates end there,
    and the next run's rates start there). A history of samples per domain: the latest."""
    times = {}
    for uuid, entry in (read_state(state_dir).get("samples") or {}).items():
        entries = entry if isinstance(entry, list) else [entry]
        stamps = [e["t"] for e in entries if isinstance(e, dict) and "t" in e]
        if stamps:
            times[uuid] = max(stamps)
    return times


def _printed_rounding(metric):
    return 0.005 if metric in ("cpu", "cpu_delay", "memory") else 0.05   # 2 decimals / 1 decimal


def label_base(nova_name, uuid):
    """The per-instance perfdata label base the check promises: Nova name, 8 hex of the uuid."""
    return f"{nova_name}_{uuid.replace('-', '')[:8]}"


def bases_by_uuid(result, uuids):
    """{uuid: perfdata label base} found by the 8 hex of the uuid that end each base (for
    domains whose uuids differ in their first 8 hex digits)."""
    bases = {lab.rpartition(".")[0] for lab in result.perfdata}
    found = {u: [b for b in bases if b.endswith("_" + u.replace("-", "")[:8])] for u in uuids}
    assert all(len(b) <= 1 for b in found.values()), found
    return {u: b[0] for u, b in found.items() if b}


def assert_rates_match(result, recorder, bases, starts, ends, vcpus, host_cpus, not_on_this_path=()):
    """Every per-instance value and every total.* the check printed (perfdata) lies within the
    bracket of the test's own readings over the check's recorded window [starts[u], ends[u]];
    every instance measured by the recorder has every metric it has, and the totals are there.
    A start may be a range (see CounterRecorder.rate_bracket). bases: {uuid: perfdata label base} of the instances the check selected; vcpus: {uuid:
    vCPUs the CPU % is of}; not_on_this_path: metrics the check's stats path cannot give (the
    per-domain path has no cpu_delay). Returns {label: (low, printed, high)}."""
    values = result.values()
    checked, totals, failures = {}, {}, []
    for uuid, base in bases.items():
        expected = {m for m in ALL_METRICS if any(m in v.get(uuid, {}) for _, v in recorder.readings)
                    and m not in not_on_this_path}
        printed = {lab.rpartition(".")[2] for lab in values
                   if lab.rpartition(".")[0] == base} - set(MEASURED_ELSEWHERE)
        if printed != expected:
            failures.append(f"{base}: metrics printed {sorted(printed)}, measured {sorted(expected)}")
            expected &= printed
        t1, t2 = starts[uuid], ends[uuid]
        assert t2 > max(t1) if isinstance(t1, tuple) else t2 > t1, (uuid, t1, t2)
        for metric in sorted(expected):
            if metric == "memory":
                low, high = recorder.gauge_bracket(uuid, metric, t2)
            else:
                low, high = recorder.rate_bracket(uuid, metric, t1, t2)
                if metric in ("cpu", "cpu_delay"):
                    low, high = (x / 1e9 / vcpus[uuid] * 100 for x in (low, high))
                    weight = vcpus[uuid] / host_cpus
                else:
                    weight = 1
                total = totals.setdefault(metric, [0.0, 0.0])
                total[0] += low * weight
                total[1] += high * weight
            checked[f"{base}.{metric}"] = (low, values[f"{base}.{metric}"], high)
    for metric, (low, high) in totals.items():
        printed = values.get(f"total.{metric}")
        if printed is None:
            failures.append(f"total.{metric} missing")
            continue
        checked[f"total.{metric}"] = (low, printed, high)
    for label_, (low, value, high) in checked.items():
        metric = label_.rpartition(".")[2]
        slack = _printed_rounding(metric) + REL_SLACK * max(abs(low), abs(high))
        if not low - slack <= value <= high + slack:
            failures.append(f"{label_}={value} outside the test's own measurement "
                            f"[{low:.6g}, {high:.6g}]")
    assert not failures, "\n".join(failures) + "\n" + result.stdout
    return checked


def measure_twice(run, state_dir, recorder, window=5.0):
    """Run the check once to leave a sample (`run("--interval", "0")`), again `window` seconds
    later (its rates are over that window, against the first run's sample), while `recorder`
    reads the counters. Returns (second result, {uuid: window start}, {uuid: window end})."""
    run("--interval", "0")
    starts = recorded_sample_times(state_dir)
    assert starts, "the first run recorded no sample"
    # the measurement window itself, not a wait for something to happen
    time.sleep(max(0.0, min(starts.values()) + window - time.monotonic()))
    result = run()
    ends = recorded_sample_times(state_dir)
    recorder.wait_past(max(ends.values()) + 2)
    return result, starts, ends


def in_run_starts(ends, started, interval):
    """Window starts of a run that sampled twice itself (no usable previous sample): not
    recorded, but after the process started and at least `interval` before the end."""
    return {uuid: (started, t - interval) for uuid, t in ends.items()}
