"""Per-second rates from two counter samples, and the metrics a check can put limits on.

A rate needs two samples of the same run of the same domain: when the domain was restarted
in between (its libvirt id changed), or any counter went backwards (re-created or migrated
back under the same id - libvirtd hands out ids from 1 again after its own restart -, a device
unplugged and another plugged under the same name), the domain has no rates this time, and
the next run compares with this sample: never a negative rate, never a spike made of a whole
counter's value, never a half set of metrics.

Each domain keeps a short history of samples (state file, shared by every run on the URI
whatever its selection), so that a rate always covers at least --min-window seconds, even when
another run stored a sample a moment ago.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str          # perfdata UOM
    text: str          # for people
    kind: str          # "bytes" (B/s), "count" (/s) or "percent"
    device: str = ""   # "disk" or "net": summed over the domain's devices of that kind
    fields: tuple = ()


METRICS = {m.name: m for m in (
    Metric("cpu", "%", "CPU", "percent"),
    Metric("memory", "%", "memory", "percent"),
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
)}


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
    counter gone backwards), taken earlier, with at least one counter in common."""
    if not previous or previous.get("id") != sample.id or sample.time - previous.get("t", sample.time) <= 0:
        return False
    old = previous.get("c") or {}
    shared = [(old[key], value) for key, value in sample.counters.items() if isinstance(old.get(key), int)]
    return bool(shared) and all(value >= before for before, value in shared)


def rates(previous, sample, vcpus):
    """{metric: value per second (cpu in % of the vCPUs)} between a stored sample (to_state)
    and a new one; {} when the two do not belong to the same run of the domain."""
    if not comparable(previous, sample):
        return {}
    elapsed = sample.time - previous["t"]
    old = previous["c"]
    deltas = {key: value - old[key] for key, value in sample.counters.items()
              if isinstance(old.get(key), int)}
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
    return result


def gauges(sample):
    """The metrics that need no previous sample."""
    total = sample.gauges.get("memory_kib")
    if total:
        return {"memory": sample.gauges["memory_used_kib"] / total * 100}
    return {}
