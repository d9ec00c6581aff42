"""check_libvirtd: is libvirtd answering, how fast, and in what state are its domains?"""
import time

from . import plugin
from .connection import (DOMAIN_STATES, STATE_WORDS, call_error, default_uri, libvirt_module,
                         open_connection, version_string)
from .perfdata import token
from .thresholds import NUMBERS, TIME_UNITS, breach, describe_breach, named_range_type, range_type

NAME = "LIBVIRTD"
COUNTED = list(DOMAIN_STATES.values()) + ["total"]


def build_parser():
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
    parser.add_argument("--domains-warning", type=counts, action="append", default=[],
                        metavar="STATE=RANGE",
                        help="warning range for the number of domains in STATE (" + ", ".join(COUNTED)
                        + "); repeatable, e.g. paused=0")
    parser.add_argument("--domains-critical", type=counts, action="append", default=[],
                        metavar="STATE=RANGE", help="critical range, as --domains-warning; e.g. crashed=0")
    return parser


def measure(args):
    uri = args.connect or default_uri()
    libvirt = libvirt_module()
    started = time.perf_counter()
    conn = open_connection(uri, read_only=not args.read_write)
    try:
        lib_version = version_string(conn.getLibVersion())
        hv_type = conn.getType()
        hv_version = version_string(conn.getVersion())
        host = conn.getHostname()
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
    except libvirt.libvirtError as exc:
        raise call_error(exc, f"asking {uri}") from None
    elapsed = time.perf_counter() - started

    counts = dict.fromkeys(COUNTED, 0)
    for _dom, record in stats:
        counts[DOMAIN_STATES.get(record.get("state.state"), "nostate")] += 1
    counts["total"] = len(stats)

    warn = dict(args.domains_warning)
    crit = dict(args.domains_critical)
    problems = []
    state, limit = breach(elapsed, args.warning, args.critical)
    if state:
        problems.append((state, "response time " + describe_breach(
            elapsed, limit, lambda s: f"{s:g} s" if s == int(s) or s >= 1 else f"{s:.3f} s")))
    for state_name in COUNTED:
        state, limit = breach(counts[state_name], warn.get(state_name), crit.get(state_name))
        if state:
            words = "domains" if state_name == "total" else f"{STATE_WORDS.get(state_name, state_name)} domains"
            problems.append((state, f"{words} {describe_breach(counts[state_name], limit)}"))
    overall = max([state for state, _ in problems], default=plugin.OK)

    by_state = ", ".join(f"{counts[s]} {STATE_WORDS.get(s, s)}"
                         for s in DOMAIN_STATES.values() if counts[s])
    summary = (f"{uri} answered in {elapsed:.3f} s: libvirt {lib_version}, {hv_type} {hv_version}"
               f" on {host}, {counts['total']} domains" + (f" ({by_state})" if by_state else ""))
    if problems:
        worst = sorted(problems, key=lambda p: -p[0])
        summary = "; ".join(text for _, text in worst) + " - " + summary

    perfdata = [token("time", round(elapsed, 6), "s", args.warning, args.critical, 0)]
    perfdata += [token(f"domains_{s}" if s != "total" else "domains", counts[s], "",
                       warn.get(s), crit.get(s), 0) for s in COUNTED]
    long_output = []
    if args.verbose:
        long_output.append(f"connection: {'read-write' if args.read_write else 'read-only'}, "
                           f"hypervisor {hv_type} {hv_version}, libvirt {lib_version}, host {host}")
    return plugin.Report(overall, summary, long_output, perfdata)


def timeout_message(args):
    uri = args.connect or default_uri()
    return f"{uri}: libvirtd did not answer within {args.timeout:g} s (hung daemon?)"


def main(argv=None):
    plugin.main(NAME, build_parser(), measure, argv, timeout_state=plugin.CRITICAL,
                timeout_message=timeout_message)
