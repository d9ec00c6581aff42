"""Per-second rates from two counter samples, and the metrics a check can put limits on.

Besides rates: disk latency (ms per request) and CPU delay (% of the window), which are ratios
of two deltas over the same window (pressure()).

A rate needs two samples of the same run of the same domain: when the domain was restarted
in between (its libvirt id changed), or any counter went backwards (re-created or migrated
back under the same id - libvirtd hands out ids from 1 again after its own restart -, a device
unplugged and another plugged under the same name), the domain has no rates from that sample:
the run takes its own baseline (samples twice, --interval apart), as on a first run: never a negative rate, never a spike made of a whole
counter's value, never a half set of metrics.

Each domain keeps a short history of samples (state file, shared by every run on the URI
whatever its selection), so that a rate always covers at least --min-window seconds, even when
another run stored a sample a moment ago.
"""
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str          # perfdata UOM
    text: str          # for people
    kind: str          # "bytes" (B/s), "count" (/s), "percent" or "ms" (per request)
    device: str = ""   # "disk" or "net": summed over the domain's devices of that kind
    fields: tuple = ()
    total: str = "sum"  # host total: "sum", "host_cpus" (% of the host's CPUs) or "" (none)


METRICS = {m.name: m for m in (
    Metric("cpu", "%", "CPU", "percent", total="host_cpus"),
    Metric("memory", "%", "memory", "percent", total=""),
    Metric("disk_read_bytes", "B", "disk read", "bytes", "disk", ("rd_bytes",)),
    Metric("disk_write_bytes", "B", "disk write", "bytes", "disk", ("wr_bytes",)),
    Metric("disk_read_ops", "", "disk read ops", "count", "disk", ("rd_ops",)),
    Metric("disk_write_ops", "", "disk write ops", "count", "disk", ("wr_ops",)),
    Metric("net_rx_bytes", "B", "net rx", "bytes", "net", ("rx_bytes",)),
    Metric("net_tx_bytes", "B", "net tx", "bytes", "net", ("tx_bytes",)),
    Metric("net_rx_packets", "", "net rx packets", "count", "net", ("rx_packets",)),
    Metric("net_tx_packets", "", "net tx packets", "count", "net", ("tx_packets",)),
    Metric("net_errors", "", "net errors", "count", "net", ("rx_errors", "tx_errors")),
    Metric("net_drops", "", "net drops", "count", "net", ("rx_drops", "tx_drops")),
    # pressure: how an instance suffers rather than how much it does (see pressure())
    Metric("disk_read_latency", "ms", "disk read latency", "ms", total=""),
    Metric("disk_write_latency", "ms", "disk write latency", "ms", total=""),
    Metric("disk_flush_latency", "ms", "disk flush latency", "ms", total=""),
    Metric("cpu_delay", "%", "CPU delay", "percent", total="host_cpus"),
    Metric("mem_swap_in", "B", "swap in", "bytes"),
    Metric("mem_swap_out", "B", "swap out", "bytes"),
    Metric("mem_major_faults", "", "major faults", "count"),
)}

# memory metric -> the guest's counter (mem:<field>), a rate over the guest's own window
GUEST_MEMORY = {"mem_swap_in": "swap_in", "mem_swap_out": "swap_out", "mem_major_faults": "major_fault"}
# guest statistics last received longer ago than this (s) are not live: a balloon without a
# stats period keeps showing the figures the guest sent at boot (Nova's default period: 10 s)
STALE_GUEST_STATS = 60

# latency metric -> (counter field of the time spent, ns; of the requests), per disk
LATENCIES = {"disk_read_latency": ("rd_times", "rd_ops"), "disk_write_latency": ("wr_times", "wr_ops"),
             "disk_flush_latency": ("fl_times", "fl_ops")}


# (device kind, counter field) -> the metric it adds to
_BY_FIELD = {(m.device, f): m.name for m in METRICS.values() for f in m.fields}


def to_state(sample):
    """What a later run needs of a sample."""
    return {"t": sample.time, "id": sample.id, "c": sample.counters}


def baseline(history, sample, min_window, max_age):
    """The sample of `history` (oldest first) to compute rates against: the newest taken at
    least `min_window` seconds before `sample` and within `max_age`, if it belongs to the same
    run of the domain; else None. Whatever other runs (other selections, an operator's manual
    run) stored meanwhile, a rate so covers at least `min_window` seconds."""
    for entry in reversed(history or ()):
        age = sample.time - entry["t"]
        if age >= min_window:
            return entry if age <= max_age and comparable(entry, sample) else None
    return None


def remember(history, new, now, min_window, max_age):
    """The history to keep for one domain: `history` and the `new` entries (to_state), oldest
    first, of the newest one's run (libvirt id). Kept: the newest entry already `min_window`
    old (later runs can always use it), the ones after it at least min_window / 4 apart, and
    the newest; nothing from the future (a faked clock), nothing older than `max_age`."""
    entries = sorted({e["t"]: e for e in list(history or ()) + list(new) if 0 <= now - e["t"] <= max_age}.values(),
                     key=lambda e: e["t"])
    if not entries:
        return []
    entries = [e for e in entries if e["id"] == entries[-1]["id"]]
    old_enough = [i for i, e in enumerate(entries) if now - e["t"] >= min_window]
    entries = entries[old_enough[-1]:] if old_enough else entries
    kept = [entries[0]]
    for entry in entries[1:-1]:
        if entry["t"] - kept[-1]["t"] >= min_window / 4:
            kept.append(entry)
    if len(entries) > 1:
        kept.append(entries[-1])
    return kept


def comparable(previous, sample):
    """Whether a stored sample gives rates with this one: same run of the domain (same id, no
    counter gone backwards), taken earlier, with at least one counter in common. The guest's
    own counters (mem:*) do not count: they start again when the guest reboots inside the same
    QEMU, which loses only the swap rates (see pressure())."""
    if not previous or previous.get("id") != sample.id or sample.time - previous.get("t", sample.time) <= 0:
        return False
    old = previous.get("c") or {}
    shared = [(old[key], value) for key, value in sample.counters.items()
              if isinstance(old.get(key), int) and not key.startswith("mem:")]
    return bool(shared) and all(value >= before for before, value in shared)


def rates(previous, sample, vcpus):
    """{metric: value per second (cpu in % of the vCPUs)} between a stored sample (to_state)
    and a new one; {} when the two do not belong to the same run of the domain."""
    if not comparable(previous, sample):
        return {}
    elapsed = sample.time - previous["t"]
    deltas = _deltas(previous, sample)
    result = {}
    if "cpu" in deltas and vcpus:
        result["cpu"] = deltas.pop("cpu") / (elapsed * 1e9 * vcpus) * 100
    for key, delta in deltas.items():
        device, _, field = key.partition(":")
        metric = _BY_FIELD.get((device, field.rpartition(":")[2]))
        if metric:
            result[metric] = result.get(metric, 0) + delta
    for metric in result:
        if metric != "cpu":
            result[metric] /= elapsed
    result.update(pressure(deltas, elapsed, vcpus, _live_guest_statistics(sample)))
    return result


def _live_guest_statistics(sample):
    updated = sample.counters.get("mem:last_update")
    return updated is not None and 0 <= time.time() - updated <= STALE_GUEST_STATS


def _deltas(previous, sample):
    old = previous["c"]
    return {key: value - old[key] for key, value in sample.counters.items() if isinstance(old.get(key), int)}


def _per_disk(deltas):
    """{disk: {field: delta}} of the disk counters."""
    disks = {}
    for key, delta in deltas.items():
        device, _, rest = key.partition(":")
        if device == "disk":
            disk, _, field = rest.rpartition(":")
            disks.setdefault(disk, {})[field] = delta
    return disks


def _latency(fields, times, requests):
    """(ns spent, requests) of one disk's fields; nothing where the driver gives no times."""
    return (fields[times], fields[requests]) if times in fields and requests in fields else (0, 0)


def pressure(deltas, elapsed, vcpus, live_guest_statistics):
    """The metrics that are not plain rates over the window, from counter deltas: average ms
    per request over all disks, absent (not 0) when there was no request; CPU delay (time the
    vCPUs were runnable but waited for a host CPU) in % of the window and vCPUs; swap and major
    faults per second between the two times the guest sent its balloon statistics (0 when it
    sent none in the window: nothing new reported), only while they are live and none of them
    went backwards (the guest rebooted)."""
    result = {}
    disks = _per_disk(deltas).values()
    for metric, (times, requests) in LATENCIES.items():
        pairs = [_latency(fields, times, requests) for fields in disks]
        count = sum(n for _, n in pairs)
        if count:
            result[metric] = sum(spent for spent, _ in pairs) / count / 1e6
    if "cpu_delay" in deltas and vcpus:
        result["cpu_delay"] = deltas["cpu_delay"] / (elapsed * 1e9 * vcpus) * 100
    guest = {key: delta for key, delta in deltas.items() if key.startswith("mem:")}
    if live_guest_statistics and "mem:last_update" in guest and min(guest.values()) >= 0:
        seconds = guest["mem:last_update"]
        for metric, field in GUEST_MEMORY.items():
            if f"mem:{field}" in guest:
                result[metric] = guest[f"mem:{field}"] / seconds if seconds else 0.0
    return result


def slowest_disk(previous, sample):
    """(disk, {latency metric: ms}) of the disk with the longest average request in the window
    (reads, writes and flushes together), or None without requests."""
    if not comparable(previous, sample):
        return None
    worst = None
    for disk, fields in _per_disk(_deltas(previous, sample)).items():
        pairs = {metric: _latency(fields, t, r) for metric, (t, r) in LATENCIES.items()}
        requests = sum(n for _, n in pairs.values())
        if requests:
            average = sum(spent for spent, _ in pairs.values()) / requests
            if worst is None or average > worst[0]:
                worst = (average, disk, {m: spent / n / 1e6 for m, (spent, n) in pairs.items() if n})
    return worst[1:] if worst else None


def gauges(sample):
    """The metrics that need no previous sample."""
    total = sample.gauges.get("memory_kib")
    if total:
        return {"memory": sample.gauges["memory_used_kib"] / total * 100}
    return {}
