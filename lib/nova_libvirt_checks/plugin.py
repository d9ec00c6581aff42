"""The plugin protocol: arguments, a hard deadline, one status line, exit codes.

Every check hands its argument parser and a `measure(args)` function to `main()`. `measure`
returns a `Report`; anything it raises becomes one line of output with the right exit code.

The deadline is a watchdog thread, not SIGALRM: a Python signal handler only runs between
bytecodes, and a thread blocked inside a libvirt C call (a daemon that accepts and never
answers) never gets there. libvirt-python releases the GIL during its calls, so the watchdog
can print its verdict and end the process with os._exit() whatever the main thread is doing.
"""
import argparse
import os
import signal
import sys
import threading
import time

from . import __version__

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


class CheckError(Exception):
    """Ends the check with `state` and a one-line `message` (UNKNOWN unless said otherwise)."""

    def __init__(self, message, state=UNKNOWN):
        super().__init__(message)
        self.state = state


class UsageError(CheckError):
    """A bad command-line argument: always UNKNOWN."""

    def __init__(self, message):
        super().__init__(f"invalid argument: {message}", UNKNOWN)


class Report:
    """What a check found: state, status line text, long output lines and perfdata tokens."""

    def __init__(self, state, summary, long_output=(), perfdata=()):
        self.state = state
        self.summary = summary
        self.long_output = list(long_output)
        self.perfdata = list(perfdata)


def plain(text):
    """Make any text (a Nova name, a libvirt message) safe inside plugin output.

    A newline would end the status line and a `|` would start forged perfdata; control
    characters confuse web UIs. They become `?`; a `|` becomes `¦`.
    """
    text = str(text).replace("|", "\u00a6")
    return "".join(c if c.isprintable() else "?" for c in text)


def render(name, report):
    """The plugin output: `NAME STATE - summary | perfdata`, then the long output lines."""
    line = f"{name} {STATE_NAMES[report.state]} - {plain(report.summary)}"
    if report.perfdata:
        line += " | " + " ".join(report.perfdata)
    return "\n".join([line] + [plain(extra) for extra in report.long_output]) + "\n"


def fit(name, report, max_bytes, lighter_perfdata=()):
    """Keep the rendered output within `max_bytes` (NRPE carries 64 KB, v2 clients 1 KB,
    Nagios Core keeps about 8 KB): try each `(perfdata, note)` of `lighter_perfdata` in turn,
    (an iterable, consumed only while needed), then drop long output lines from the end, then all perfdata, then clip the status line."""
    def size():
        return len(render(name, report).encode("utf-8"))
    if size() <= max_bytes:
        return report
    for perfdata, note in lighter_perfdata:
        report.perfdata = perfdata
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


def emit(text, code):
    """Write the output and end the process; the first caller wins (main path or watchdog).

    os._exit, not sys.exit: interpreter shutdown would run libvirt's and requests' finalisers,
    which may block on a hung peer after the answer has been given.
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


class Watchdog:
    """Gives the check's verdict on a timeout after `seconds`, even if the main thread hangs."""

    def __init__(self, seconds, name, state, message):
        self.seconds = seconds
        self.name = name
        self.state = state
        self.message = message

    def start(self):
        threading.Thread(target=self._expire, name="watchdog", daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGALRM, lambda *_: self._fire())
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def _expire(self):
        time.sleep(self.seconds)
        self._fire()

    def _fire(self):
        if not _emitted:
            emit(render(self.name, Report(self.state, self.message)), self.state)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the options every plugin has, and errors that end as UNKNOWN.

    -h/--help and -V/--version exit 3, as the Monitoring Plugins do.
    """

    def __init__(self, prog, description, default_timeout=10, epilog=None):
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

    def error(self, message):
        raise UsageError(message)

    def exit(self, status=0, message=None):
        if message:
            sys.stdout.write(message)
        sys.stdout.flush()
        os._exit(UNKNOWN if status == 0 else status)


def seconds(text):
    """A positive number of seconds (for -t)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400: {text!r}")
    return value


def regex(text):
    """An argparse type: a regular expression. One Python only warns about (FutureWarning:
    "Possible nested set") is refused too: the warning would go to stderr, which Icinga 2
    appends to the plugin output."""
    import re
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(text)
    except (re.error, Warning) as exc:
        raise argparse.ArgumentTypeError(f"not a valid regular expression {text!r}: {exc}") from None


def positive_int(text):
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _traceback():
    import traceback    # only on the -vvv error path
    return traceback.format_exc().splitlines()


def main(name, parser, measure, argv=None, timeout_state=UNKNOWN, timeout_message=None):
    """Parse arguments, arm the deadline, run `measure(args)`, print and exit. Never returns.

    `timeout_message(args)` words what a timeout means for this check.
    """
    verbose = 0
    try:
        args = parser.parse_args(argv)
        verbose = args.verbose
        message = (timeout_message(args) if timeout_message
                   else f"no result within the timeout of {args.timeout:g} s")
        Watchdog(args.timeout, name, timeout_state, message).start()
        report = measure(args)
    except CheckError as exc:
        report = Report(exc.state, str(exc))
        if verbose >= 3:
            report.long_output = _traceback()
    except Exception as exc:  # the one place where any failure becomes a plugin answer
        report = Report(UNKNOWN, f"internal error: {type(exc).__name__}: {exc}")
        if verbose >= 3:
            report.long_output = _traceback()
    emit(render(name, report), report.state)
