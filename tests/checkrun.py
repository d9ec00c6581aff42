"""Run a check as the operator's scheduler does (a separate process) and read its output."""
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from tests.helpers import split_perfdata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_XML = os.path.join(ROOT, "tests", "data", "nova-node.xml")
NODE_URI = "test://" + NODE_XML

_NUM = r"-?\d+(?:\.\d+)?"
_RANGE = rf"@?(?:(?:~|{_NUM})?:)?(?:{_NUM})?"
# the Monitoring Plugins Development Guidelines' perfdata token
PERFDATA_TOKEN = re.compile(
    rf"(?:'[^'=]+'|[^'= ]+)={_NUM}(?:us|ms|s|%|B|KB|MB|GB|TB|c)?"
    rf"(?:;{_RANGE}(?:;{_RANGE}(?:;(?:{_NUM})?(?:;(?:{_NUM})?)?)?)?)?")
STATUS = re.compile(r"^(?P<name>[A-Z_]+) (?P<state>OK|WARNING|CRITICAL|UNKNOWN) - (?P<text>.+)$")
CODES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def lines(self):
        return self.stdout.splitlines()

    @property
    def status_line(self):
        return self.lines[0] if self.lines else ""

    @property
    def text(self):
        """The status text, without perfdata."""
        return self.status_line.split(" | ", 1)[0]

    @property
    def perfdata(self):
        """{label: token} of the first line's perfdata."""
        if " | " not in self.status_line:
            return {}
        tokens = split_perfdata(self.status_line.split(" | ", 1)[1])
        return {t.split("=", 1)[0].strip("'").replace("''", "'"): t for t in tokens}

    def values(self):
        return {k: float(re.match(rf"[^=]+=({_NUM})", t).group(1)) for k, t in self.perfdata.items()}


def run_check(check, *args, env=None, timeout=60, python=None, prefix=()):
    """Run checks/<check> with `args`; env is added to a clean copy of os.environ."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    argv = list(prefix) + [python or sys.executable, os.path.join(ROOT, "checks", check), *args]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def assert_plugin_output(result, expected_code=None):
    """The plugin protocol: a well-formed status line whose state matches the exit code,
    valid perfdata, no traceback, nothing on stderr."""
    assert result.lines, f"no output (exit {result.returncode}, stderr {result.stderr!r})"
    match = STATUS.match(result.text)
    assert match, f"malformed status line: {result.status_line!r}"
    assert CODES[match["state"]] == result.returncode, (result.returncode, result.status_line)
    if expected_code is not None:
        assert result.returncode == expected_code, result.stdout
    for tok in result.perfdata.values():
        assert PERFDATA_TOKEN.fullmatch(tok), f"invalid perfdata token {tok!r}"
    assert "Traceback" not in result.stdout, result.stdout
    assert result.stderr == "", result.stderr
    return match
