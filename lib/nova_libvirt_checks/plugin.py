"""The plugin protocol on nagiosplugin's model, and the few things nagiosplugin does not do for us.

A check is `nagiosplugin.Check(resource, contexts..., summary)`: the Resource's `probe()`
yields Metrics, Contexts judge them, the Summary words the status line and long output. The
check hands its argument parser and a `make_check(args)` to `run()`, which does the rest: parse
the arguments, arm the deadline, call the Check, print, exit. Anything raised on the way becomes
one line of output with the right exit code (a `CheckError` carries its own state).

We do not use nagiosplugin's Runtime (`Check.main`, `guarded`): each place below where we part
from it says why in one comment. A `Report` is the answer as it will be printed, taken from the
Check (`report_of`) or from an error.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Callable, Iterable, NoReturn, Optional, Sequence

import nagiosplugin

from . import __version__
from .perfdata import token
from .thresholds import breach, describe_breach, format_number

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
STATES = {OK: nagiosplugin.Ok, WARNING: nagiosplugin.Warn, CRITICAL: nagiosplugin.Critical,
          UNKNOWN: nagiosplugin.Unknown}     # our codes as nagiosplugin's states

# Without Runtime nobody gives nagiosplugin's logger a handler, and Python's last-resort one
# writes to stderr, which Icinga 2 appends to the plugin output.
logging.getLogger("nagiosplugin").addHandler(logging.NullHandler())


class CheckError(Exception):
    """Ends the check with `state` and a one-line `message` (UNKNOWN unless said otherwise).

    Raised from a Resource's probe() it ends the whole check with that state, where
    nagiosplugin's own CheckError would only add an UNKNOWN result and carry on.
    """

    def __init__(self, message: str, state: int = UNKNOWN) -> None:
        super().__init__(message)
        self.state = state


class UsageError(CheckError):
    """A bad command-line argument: always UNKNOWN."""

    def __init__(self, message: str) -> None:
        super().__init__(f"invalid argument: {message}", UNKNOWN)


class Report:
    """The answer as it will be printed: state, status line text, long output lines and
    perfdata tokens (`render` prints it, `fit` keeps it within a size)."""

    def __init__(self, state: int, summary: str, long_output: Iterable[str] = (),
                 perfdata: Iterable[str] = ()) -> None:
        self.state = state
        self.summary = summary
        self.long_output = list(long_output)
        self.perfdata = list(perfdata)


# ---------------------------------------------------------------- judging

class ThresholdContext(nagiosplugin.ScalarContext):
    """A ScalarContext for our ranges, worded as the operator reads them.

    `what` names the quantity in a breach ("paused domains 1 > 0", "response time 0.612 s >
    0.500 s"); `show` formats its values. Where the words need more than the metric (the
    hypervisors a count stands for), `hint(metric, broken range, resource)` words the breach
    instead. We override ScalarContext because its hint reads "outside range 0:0.5" and its
    missing threshold becomes Range('0:'), which a negative value would break; here a missing
    threshold judges nothing.
    """

    def __init__(self, name: str, warning: Optional[nagiosplugin.Range] = None,
                 critical: Optional[nagiosplugin.Range] = None, what: Optional[str] = None,
                 show: Callable[[float], str] = format_number,
                 hint: Optional[Callable[[nagiosplugin.Metric, nagiosplugin.Range,
                                          nagiosplugin.Resource], str]] = None) -> None:
        super().__init__(name, warning, critical, fmt_metric=None)
        self.limits = (warning, critical)
        self.what = what or name
        self.show = show
        self.hint = hint

    def evaluate(self, metric: nagiosplugin.Metric, resource: nagiosplugin.Resource) -> nagiosplugin.Result:
        state, limit = breach(metric.value, *self.limits)
        hint = self.breached(metric, state, limit, resource) if state else None
        return self.result_cls(STATES[state], hint, metric)

    def breached(self, metric: nagiosplugin.Metric, state: int, limit: nagiosplugin.Range,
                 resource: nagiosplugin.Resource) -> str:
        """The words of a breach of `limit` (state WARNING or CRITICAL); a subclass may also
        note it where it needs it."""
        if self.hint:
            return self.hint(metric, limit, resource)
        return f"{self.what} {describe_breach(metric.value, limit, self.show)}"

    def performance(self, metric: nagiosplugin.Metric,
                    resource: nagiosplugin.Resource) -> nagiosplugin.Performance:
        warning, critical = self.limits
        return nagiosplugin.Performance(metric.name, metric.value, metric.uom or "", warning,
                                        critical, metric.min, metric.max)


def perfdata_of(check: nagiosplugin.Check) -> list[tuple[nagiosplugin.Metric, str]]:
    """(metric, token) for each metric with perfdata, in the order the resources yielded them.

    Not `check.perfdata`: nagiosplugin sorts it (PNP4Nagios numbers its data sources in output
    order), quotes labels with `.` or `-`, and prints floats and ranges with exponents.
    """
    pairs, previous = [], None
    for result in check.results.results:
        # a CheckError from probe() adds a result carrying the last metric again: skip it
        if result.metric is None or result.metric is previous:
            continue
        previous = result.metric
        perf = result.metric.performance()
        if perf:
            pairs.append((result.metric, token(perf.label, perf.value, perf.uom, perf.warn,
                                               perf.crit, perf.min, perf.max)))
    return pairs


def report_of(name: str, check: nagiosplugin.Check, args: argparse.Namespace,
              lighter_perfdata: Optional[Callable[[argparse.Namespace, list], Iterable]] = None) -> Report:
    """Run the check (nagiosplugin probes each resource and judges each metric) and collect
    its answer: state, the Summary's status line and long output, perfdata; within
    `args.max_output` where the parser has it (`fit`), trying `lighter_perfdata(args,
    [(metric, token), ...])`'s `(tokens, note)` choices first.

    The Summary's verbose() is asked at every -v level, not only from -v 1 on as nagiosplugin
    does: our checks name each offending instance or hypervisor at -v 0. A Summary that needs
    the level takes it in its constructor.
    """
    check()
    pairs = perfdata_of(check)      # once: the answer's, and the lighter choices' source
    long_output = check.verbose_str
    if isinstance(long_output, str):
        long_output = long_output.splitlines()
    report = Report(check.exitcode, check.summary_str, long_output, [tok for _metric, tok in pairs])
    max_bytes = getattr(args, "max_output", None)
    if not max_bytes:
        return report

    def lighter():      # a generator: run only when the output is too large
        if lighter_perfdata:
            yield from lighter_perfdata(args, pairs)
    return fit(name, report, max_bytes, lighter())


# ---------------------------------------------------------------- output

def plain(text: object) -> str:
    """Make any text (a Nova name, a libvirt message) safe inside plugin output.

    A newline would end the status line and a `|` would start forged perfdata; control
    characters confuse web UIs. They become `?`; a `|` becomes `¦`. (nagiosplugin only drops
    `|`, and adds a warning line about it.)
    """
    text = str(text).replace("|", "\u00a6")
    return "".join(c if c.isprintable() else "?" for c in text)


def render(name: str, report: Report) -> str:
    """The plugin output: `NAME STATE - summary | perfdata`, then the long output lines.

    The perfdata stays on the status line at every -v (nagiosplugin moves it to the last line):
    NRPE v2 and some tools keep only the first line.
    """
    line = f"{name} {STATE_NAMES[report.state]} - {plain(report.summary)}"
    if report.perfdata:
        line += " | " + " ".join(report.perfdata)
    return "\n".join([line] + [plain(extra) for extra in report.long_output]) + "\n"


def fit(name: str, report: Report, max_bytes: int,
        lighter_perfdata: Iterable[tuple[Sequence[str], str]] = ()) -> Report:
    """Keep the rendered output within `max_bytes` (NRPE carries 64 KB, v2 clients 1 KB,
    Nagios Core keeps about 8 KB; nagiosplugin has no limit): try each `(perfdata, note)` of
    `lighter_perfdata` in turn (an iterable, consumed only while needed), then drop long output
    lines from the end, then all perfdata, then clip the status line."""
    def size():
        return len(render(name, report).encode("utf-8"))
    if size() <= max_bytes:
        return report
    for perfdata, note in lighter_perfdata:
        report.perfdata = list(perfdata)
        if size() + len(note) + 1 <= max_bytes:
            report.long_output.append(note)
            return report
    # drop long output lines from the end: sizes summed once, not the output re-rendered per line
    excess = size() - max_bytes
    while report.long_output and excess > 0:
        excess -= len(plain(report.long_output.pop()).encode("utf-8")) + 1
    if size() > max_bytes:
        report.perfdata = []
    excess = size() - max_bytes
    if excess > 0:
        encoded = plain(report.summary).encode("utf-8")
        report.summary = encoded[:max(0, len(encoded) - excess - 3)].decode("utf-8", "ignore") + "\u2026"
    return report


_emit_lock = threading.RLock()
_emitted = False


def emit(text: str, code: int) -> NoReturn:
    """Write the output and end the process; the first caller wins (main path or watchdog).

    os._exit, not sys.exit (as nagiosplugin's Runtime does): interpreter shutdown would run
    libvirt's and requests' finalisers, which may block on a hung peer after the answer has
    been given.
    """
    global _emitted
    with _emit_lock:
        if not _emitted:
            _emitted = True
            # UTF-8 whatever the locale: Nova names may be any Unicode, and NRPE runs plugins
            # with an empty environment
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("utf-8", "replace"))
            sys.stdout.buffer.flush()
            os._exit(code)
    # another thread emitted first and is exiting the process
    while True:
        time.sleep(1)


# ---------------------------------------------------------------- the deadline

class Watchdog:
    """Gives the check's verdict on a timeout after `seconds`, even if the main thread hangs.

    A thread, not only nagiosplugin's SIGALRM: a Python signal handler runs between bytecodes,
    and a thread blocked inside a libvirt C call (a daemon that accepts and never answers)
    never gets there (tests/test_libvirtd_driver.py shows nagiosplugin's timeout missing it).
    libvirt-python releases the GIL during its calls, so the watchdog can print its verdict and
    end the process with os._exit() whatever the main thread is doing. The SIGALRM timer armed
    beside it covers the opposite case, work that holds the GIL (a backtracking regex).
    """

    def __init__(self, seconds: float, name: str, state: int, message: str) -> None:
        self.seconds = seconds
        self.name = name
        self.state = state
        self.message = message

    def start(self) -> None:
        threading.Thread(target=self._expire, name="watchdog", daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGALRM, lambda *_: self._fire())
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def _expire(self) -> None:
        time.sleep(self.seconds)
        self._fire()

    def _fire(self) -> None:
        if not _emitted:
            emit(render(self.name, Report(self.state, self.message)), self.state)


# ---------------------------------------------------------------- arguments

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the options every plugin has, and errors that end as UNKNOWN.

    argparse exits 2 (CRITICAL to a scheduler) on a bad argument; here it is UNKNOWN, and
    -h/--help and -V/--version exit 3, as the Monitoring Plugins do.
    """

    def __init__(self, prog: str, description: str, default_timeout: float = 10,
                 epilog: Optional[str] = None) -> None:
        super().__init__(prog=prog, description=description, epilog=epilog, add_help=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.add_argument("-h", "--help", action="help", help="show this help and exit")
        self.add_argument("-V", "--version", action="version",
                          version=f"{prog} (nova-libvirt-checks) {__version__}",
                          help="show the version and exit")
        self.add_argument("-t", "--timeout", type=seconds, default=default_timeout, metavar="SECONDS",
                          help=f"hard deadline for the whole check (default {default_timeout})")
        self.add_argument("-v", "--verbose", action="count", default=0,
                          help="more detail in the long output; -vvv shows tracebacks")

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            sys.stdout.write(message)
        sys.stdout.flush()
        os._exit(UNKNOWN if status == 0 else status)


def seconds(text: str) -> float:
    """A positive number of seconds (for -t)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400: {text!r}")
    return value


def regex(text: str) -> re.Pattern:
    """An argparse type: a regular expression. One Python only warns about (FutureWarning:
    "Possible nested set") is refused too: the warning would go to stderr, which Icinga 2
    appends to the plugin output."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(text)
    except (re.error, Warning) as exc:
        raise argparse.ArgumentTypeError(f"not a valid regular expression {text!r}: {exc}") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


# ---------------------------------------------------------------- running a check

def _traceback() -> list[str]:
    import traceback    # only on the -vvv error path
    return traceback.format_exc().splitlines()


def run(name: str, parser: argparse.ArgumentParser,
        make_check: Callable[[argparse.Namespace], nagiosplugin.Check],
        argv: Optional[Sequence[str]] = None, timeout_state: int = UNKNOWN,
        timeout_message: Optional[Callable[[argparse.Namespace], str]] = None,
        lighter_perfdata: Optional[Callable[[argparse.Namespace, list], Iterable]] = None) -> NoReturn:
    """Parse arguments, arm the deadline, run `make_check(args)`'s Check, print, exit.

    `name` is the status line's prefix (LIBVIRTD). `timeout_message(args)` words what a timeout
    means for this check, said with `timeout_state`. The answer is `report_of`'s, kept within
    `--max-output` with `lighter_perfdata`'s help. Never returns.
    """
    verbose = 0
    try:
        args = parser.parse_args(argv)
        verbose = args.verbose
        message = (timeout_message(args) if timeout_message
                   else f"no result within the timeout of {args.timeout:g} s")
        Watchdog(args.timeout, name, timeout_state, message).start()
        report = report_of(name, make_check(args), args, lighter_perfdata)
    except CheckError as exc:
        report = Report(exc.state, str(exc))
        # tracebacks only at -vvv: nagiosplugin prints them from -v on, and -v is for operators
        if verbose >= 3:
            report.long_output = _traceback()
    except Exception as exc:  # the one place where any failure becomes a plugin answer
        report = Report(UNKNOWN, f"internal error: {type(exc).__name__}: {exc}")
        if verbose >= 3:
            report.long_output = _traceback()
    emit(render(name, report), report.state)

