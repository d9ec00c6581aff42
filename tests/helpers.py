"""Helpers shared by the test files, one of each, here: polling instead of sleeping, the apt
installer for tools a test needs, running a command as the nagios user (as NRPE does), the
perfdata token splitter, and the option-fuzz kit. Elsewhere, one place each: the check runner
and plugin-output checks in tests/checkrun.py, the independent measurement of rates in
tests/oracle.py, the state_dir fixture in tests/conftest.py, the services in the
tests/fixtures_*.py plugins."""
import os
import pwd
import re
import subprocess
import time
import warnings

APT_GET = ["apt-get", "-o", "DPkg::Lock::Timeout=900"]
APT_INSTALL = [*APT_GET, "install", "-y", "-qq", "--no-install-recommends"]


def wait_until(predicate, timeout, what, interval=0.05):
    """Poll `predicate()` until it returns something true (returned); fail after `timeout` s
    saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(interval)


def wait_for_growth(harness, keys, names=None, timeout=30):
    """Poll the guests' getAllDomainStats until each of `keys` grew in each guest (`names`,
    default all); returns (stats before, stats after)."""
    before = harness.domain_stats()
    names = names or list(before)

    def grown():
        after = harness.domain_stats()
        return after if all(after[n][k] > before[n][k] for n in names for k in keys) else None
    return before, wait_until(grown, timeout, f"counters {keys} of {names} growing", interval=0.1)


def apt_install(*packages):
    """apt-get install the Debian packages (as root), updating the lists once if the first try
    fails; returns the CompletedProcess of the last try."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run([*APT_INSTALL, *packages], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        subprocess.run([*APT_GET, "update", "-qq"], capture_output=True, env=env)
        proc = subprocess.run([*APT_INSTALL, *packages], capture_output=True, text=True, env=env)
    return proc


NAGIOS_USER = "nagios"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# what NRPE and the daemons give a plugin: a small, production-like environment
DAEMON_ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}


def run_as_nagios(argv, env=None, timeout=60, cwd="/"):
    """Run argv as the unprivileged user nagios (NRPE's) with the daemon environment (plus
    env), stdin /dev/null, text output captured. As root through runuser; as nagios directly."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me != NAGIOS_USER:
        if os.geteuid() != 0:
            raise PermissionError("run_as_nagios needs root (runuser) or the nagios user")
        argv = ["runuser", "-u", NAGIOS_USER, "--", *argv]
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=dict(DAEMON_ENV, **(env or {})), cwd=cwd, stdin=subprocess.DEVNULL)


def split_perfdata(text):
    """Split a perfdata string into tokens as the Nagios plugin guidelines define it: tokens are
    separated by whitespace; a single-quoted label may contain spaces ('' is an escaped quote).
    (Icinga 2's own splitter differs on malformed input: it takes everything up to '=' as label,
    so `a b=1` is one token there. Use the daemon's performance_data to see Icinga's split.)"""
    tokens, i, n = [], 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        if text[i] == "'":
            i += 1
            while i < n:
                if text[i] == "'":
                    if i + 1 < n and text[i + 1] == "'":
                        i += 2
                        continue
                    i += 1
                    break
                i += 1
        while i < n and not text[i].isspace():
            i += 1
        tokens.append(text[start:i])
    return tokens


# ---------------------------------------------------------------- option-fuzz kit
# values that have broken option parsers before, or could
OPTION_SPECIALS = ["", " ", "0", "-0", "1", "-1", "+5", ".5", "5.", "1e3", "0x10", "1_000",
                   "\u0661\u0662", "\u00b2", "\u00bd", "inf", "-inf", "Infinity", "nan", "NaN",
                   "1e999", "9" * 400, "10:5", "@", "~", ":", "~:", "5:", "@~:", "@10:20", "1:2:3",
                   "5%", "5B", "5/s", "5MiB/s", "500ms", "[[a]", "(", "(?i)x", "a(?i)b", "\\",
                   "a\nb", "|", "x" * 5000, "running,", ",", "paused,blocked", "all", "bulk", "=5",
                   "\x00"]


def steady_labels(labels):
    """Perfdata labels, in order, without the disk latencies: those exist only for a window in
    which the disk had requests of that kind (issue 13), so two runs a moment apart may differ."""
    return [label for label in labels if not label.endswith("_latency")]


def parse_option(parser, option, attribute, value):
    """Parse `option=value` as the check does: the accepted value, or None when refused with a
    UsageError naming the option in one line; never a warning (it would reach stderr, which
    Icinga 2 appends to the plugin output)."""
    from nova_libvirt_checks import plugin
    re.purge()                  # re caches compiled patterns, and warns only when compiling
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            namespace = parser.parse_args([f"{option}={value}"])
        except plugin.UsageError as exc:
            error = exc
        else:
            error = None
    assert not caught, f"{option}={value!r} printed a warning: {caught[0].message}"
    if error is not None:
        message = str(error)
        assert option in message, (option, value, message)
        assert plugin.plain(message).count("\n") == 0
        return None
    return getattr(namespace, attribute)


def option_value_failures(parser, cases):
    """Every value of every case (option, attribute, valid, values) through parse_option: a
    value must be refused naming the option, or accepted as one that `valid` takes. Returns a
    line for each value that failed that, all of them (one report, not the first failure)."""
    failures = []
    for option, attribute, valid, values in cases:
        for value in values:
            try:
                accepted = parse_option(parser, option, attribute, value)
                if accepted is not None:
                    valid(accepted)
            except Exception as exc:  # noqa: BLE001 - collect them all: one report
                first = str(exc).splitlines()[0] if str(exc) else ""
                failures.append(f"{option}={value[:50]!r}: {type(exc).__name__}: {first[:150]}")
    return failures
