"""check_libvirtd: is libvirtd answering, how fast, and in what state are its domains?

One run: connect (read-only by default), ask the libvirt and hypervisor versions, the host
name and every domain's state, and time it all (`Libvirtd.probe`, which yields the response
time and the domain counts as Metrics). Each Metric is judged by its ThresholdContext (-w/-c
for the time, --domains-warning/--domains-critical per state); `LibvirtdSummary` words the
status line: the breaches, worst first, then what the daemon said. A daemon that cannot be
reached is CRITICAL, one that refuses us is UNKNOWN with a hint (connection.py).
"""
from __future__ import annotations

import argparse
import time
from typing import Iterator, NoReturn, Optional, Sequence

import nagiosplugin

from . import plugin, sizes
from .connection import (DOMAIN_STATES, STATE_WORDS, call_error, default_uri, libvirt_module,
                         open_connection, version_string)
from .thresholds import NUMBERS, TIME_UNITS, OncePerName, named_range_type, range_type

NAME = "LIBVIRTD"
COUNTED = list(DOMAIN_STATES.values()) + ["total"]


def build_parser() -> plugin.ArgumentParser:
    parser = plugin.ArgumentParser(
        "check_libvirtd",
        "Check that libvirtd answers: connect (read-only by default), ask the libvirt and "
        "hypervisor versions, count domains by state, and time it all.",
        epilog="Ranges use the Nagios syntax (10, 10:, ~:10, 10:20, @10:20); times take s, ms, us.\n"
               "Examples:\n"
               "  check_libvirtd -w 1 -c 5\n"
               "  check_libvirtd -U qemu+ssh://nagios@compute1/system --domains-critical crashed=0\n"
               "  check_libvirtd --domains-warning paused=0 --domains-critical running=1:")
    parser.add_argument("-U", "--connect", metavar="URI", default=None,
                        help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    parser.add_argument("--read-write", action="store_true",
                        help="open a read-write connection (default read-only, which needs fewer rights)")
    parser.add_argument("-w", "--warning", type=range_type(TIME_UNITS), metavar="RANGE",
                        help="warning range for the response time in seconds")
    parser.add_argument("-c", "--critical", type=range_type(TIME_UNITS), metavar="RANGE",
                        help="critical range for the response time in seconds")
    counts = named_range_type(set(COUNTED), lambda _name: NUMBERS)
    parser.add_argument("--domains-warning", type=counts, action=OncePerName, default=[],
                        metavar="STATE=RANGE",
                        help="warning range for the number of domains in STATE (" + ", ".join(COUNTED)
                        + "); repeatable, e.g. paused=0")
    parser.add_argument("--domains-critical", type=counts, action=OncePerName, default=[],
                        metavar="STATE=RANGE", help="critical range, as --domains-warning; e.g. crashed=0")
    return parser


def count_label(state: str) -> str:
    """The perfdata label (and Metric name) of the count of domains in `state`."""
    return "domains" if state == "total" else f"domains_{state}"


class Libvirtd(nagiosplugin.Resource):
    """libvirtd as one client sees it; after probe() it also knows what the daemon said."""

    def __init__(self, uri: str, read_write: bool = False) -> None:
        self.uri = uri
        self.read_write = read_write
        self.lib_version = self.hv_type = self.hv_version = self.host = ""
        self.elapsed = 0.0
        self.counts = dict.fromkeys(COUNTED, 0)

    def probe(self) -> Iterator[nagiosplugin.Metric]:
        libvirt = libvirt_module()
        started = time.perf_counter()
        conn = open_connection(self.uri, read_only=not self.read_write)
        try:
            self.lib_version = version_string(conn.getLibVersion())
            self.hv_type = conn.getType()
            self.hv_version = version_string(conn.getVersion())
            self.host = conn.getHostname()
            stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
        except libvirt.libvirtError as exc:
            raise call_error(exc, f"asking {self.uri}") from None
        self.elapsed = time.perf_counter() - started
        for _dom, record in stats:
            self.counts[DOMAIN_STATES.get(record.get("state.state"), "nostate")] += 1
        self.counts["total"] = len(stats)

        yield nagiosplugin.Metric("time", round(self.elapsed, 6), "s", min=0)
        for state in COUNTED:
            yield nagiosplugin.Metric(count_label(state), self.counts[state], min=0)


class LibvirtdSummary(nagiosplugin.Summary):
    """The status line: breaches worst first, then what the daemon said; at -v the connection."""

    def __init__(self, daemon: Libvirtd, verbose: int = 0) -> None:
        self.daemon = daemon
        self.verbose_level = verbose

    def ok(self, results: nagiosplugin.Results) -> str:
        d = self.daemon
        by_state = ", ".join(f"{d.counts[s]} {STATE_WORDS.get(s, s)}"
                             for s in DOMAIN_STATES.values() if d.counts[s])
        return (f"{d.uri} answered in {d.elapsed:.3f} s: libvirt {d.lib_version}, {d.hv_type} "
                f"{d.hv_version} on {d.host}, {sizes.plural(d.counts['total'], 'domain')}"
                + (f" ({by_state})" if by_state else ""))

    def problem(self, results: nagiosplugin.Results) -> str:
        breaches = [str(result) for result in results if result.state != nagiosplugin.Ok]
        return "; ".join(breaches) + " - " + self.ok(results)

    def verbose(self, results: nagiosplugin.Results) -> list[str]:
        if not self.verbose_level:
            return []
        d = self.daemon
        return [f"connection: {'read-write' if d.read_write else 'read-only'}, "
                f"hypervisor {d.hv_type} {d.hv_version}, libvirt {d.lib_version}, host {d.host}"]


def make_check(args: argparse.Namespace) -> nagiosplugin.Check:
    daemon = Libvirtd(args.connect or default_uri(), args.read_write)
    warning, critical = dict(args.domains_warning), dict(args.domains_critical)
    contexts = [plugin.ThresholdContext("time", args.warning, args.critical,
                                        what="response time", show=sizes.seconds)]
    contexts += [plugin.ThresholdContext(
        count_label(state), warning.get(state), critical.get(state),
        what="domains" if state == "total" else f"{STATE_WORDS.get(state, state)} domains")
        for state in COUNTED]
    return nagiosplugin.Check(daemon, *contexts, LibvirtdSummary(daemon, args.verbose))


def timeout_message(args: argparse.Namespace) -> str:
    uri = args.connect or default_uri()
    return f"{uri}: libvirtd did not answer within {args.timeout:g} s (hung daemon?)"


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    plugin.run(NAME, build_parser(), make_check, argv, timeout_state=plugin.CRITICAL,
               timeout_message=timeout_message)
