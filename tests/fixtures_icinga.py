"""Harness for the real monitoring daemons: Icinga 2, Nagios 4 and NRPE (pytest plugin).

Everything runs privately under BASE_DIR (/var/tmp/nlc-test/icinga/<name>-XXXX), bound to 127.0.0.1
on free ports; nothing under /etc/icinga2, /etc/nagios*, /var/cache/icinga2 or /var/lib is used.
The object/command files and plugin directories under test are PARAMETERS, so the same harness
proves our icinga/ files and checks/ end to end.

Python API (all functions install a missing binary via apt first; if that is impossible they call
tests.conftest.service_unavailable, i.e. fail in CI, skip elsewhere; harness failures raise HarnessError
with the daemon's log tail):

    icinga2_validate(conf_dirs, constants=None) -> CompletedProcess     `icinga2 daemon -C`
    icinga2_host_conf(path, name="compute-test", ...) -> str             writes a Host object
    icinga2_daemon(conf_dirs, constants=None, ...)  (context manager)   -> Icinga2Daemon:
        .force_check(host, service) -> dict   .force_checks([(h, s), ...]) -> {"h!s": dict}
        .submit_plugin_output(host, service, rc, text) -> dict   (Icinga's own output splitter)
        .perfdata_lines(service, host) -> [str]   .metrics(host, service) -> [dict]
        .perfdata_warnings(host, service) -> [str]   .log_text() -> str   .log_warnings() -> [str]
        .services(host) -> [str]   .api(method, path, body) -> dict   .send_command(line)
    icinga2_parse_perfdata(token) -> dict | None                        Icinga's own parser
    icinga2_parse_perfdata_many(tokens) -> list[dict | None]            same, one process
    split_perfdata(text) -> list[str]                                   token splitter
    nagios_validate(cfg_files, resource=None) -> CompletedProcess       `nagios4 -v`
    nagios_host_cfg(path, name="compute-test", ...) -> str              writes a host definition
    nagios_daemon(cfg_files, resource=None, ...)  (context manager)     -> NagiosDaemon:
        .force_check(host, service) -> dict   .force_checks(pairs)   .perfdata_lines(service, host)
        .status(host, service) -> [dict]   .log_text()   .send_command(line)
    nrpe_daemon(command_file, port=None, ...)  (context manager)        -> NrpeDaemon:
        .check(command, extra_args=()) -> CompletedProcess   .port   .pid   .log_text()
    check_nrpe(command, port, extra_args=()) -> CompletedProcess
    run_as_nagios(argv) -> CompletedProcess                             a plugin run as NRPE runs it
    parse_pnp_line(line) -> dict                                        PNP4Nagios bulk line -> dict
    parse_influx_line(line) -> dict                                     InfluxDB line protocol -> dict
    cleanup_stale() -> [str]                                            dirs/daemons of dead test runs

Fixtures: icinga_tools (session: packages + nagios user + cleanup_stale; yields this module),
nrpe (session: one NRPE serving the NRPE file `make install` wrote, see installed_nrpe_file),
nagios_tmp_path (a fresh directory the nagios user can read/execute; pytest's tmp_path is mode 0700
and NOT usable for plugins or object files), monitoring_daemons (factory .nrpe()/.icinga2()/.nagios()
whose daemons are stopped at test teardown).

Daemons run as user nagios (as in production) with a minimal environment (DAEMON_ENV), so a check
that works as root but not as nagios fails here too.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import grp
import http.server
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import (APT_INSTALL, DAEMON_ENV, NAGIOS_USER,  # noqa: F401 - fi.* for tests
                           SYSTEM_PATH as SBIN_PATH, apt_install, run_as_nagios, split_perfdata)

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "harness", "icinga")
BASE_DIR = os.environ.get("NLC_ICINGA_TEST_BASE", "/var/tmp/nlc-test/icinga")
KEEP_DIRS = os.environ.get("NLC_TEST_KEEP", "").lower() in ("1", "true", "yes")

SYSTEM_PLUGIN_DIR = "/usr/lib/nagios/plugins"
CHECK_NRPE = SYSTEM_PLUGIN_DIR + "/check_nrpe"
ICINGA2_INCLUDE_DIR = "/usr/share/icinga2/include"
# what a stock /etc/icinga2/icinga2.conf includes; only those present are used
ICINGA2_LIBS = ("itl", "plugins", "plugins-contrib", "manubulon", "windows-plugins", "nscp")

# tool -> (probe path or command name, Debian packages)
TOOLS = {
    "icinga2": ("icinga2", ["icinga2-bin", "icinga2-common"]),
    "itl": (ICINGA2_INCLUDE_DIR + "/itl", ["icinga2-common"]),
    "nagios4": ("nagios4", ["nagios4-core"]),
    "nrpe": ("nrpe", ["nagios-nrpe-server"]),
    "check_nrpe": (CHECK_NRPE, ["nagios-nrpe-plugin"]),
    "plugins": (SYSTEM_PLUGIN_DIR + "/check_dummy", ["monitoring-plugins-basic"]),
    "runuser": ("runuser", ["util-linux"]),
}


class HarnessError(RuntimeError):
    """The harness itself failed (daemon did not start, no result in time, ...)."""


# --------------------------------------------------------------------------------------------
# installation, users, directories
# --------------------------------------------------------------------------------------------
_tools_ok: set[str] = set()


def _tool_present(probe: str) -> bool:
    if probe.startswith("/"):
        return os.path.exists(probe)
    return shutil.which(probe, path=SBIN_PATH) is not None


def _unavailable(reason: str):
    from tests.conftest import service_unavailable  # late: conftest imports this plugin

    service_unavailable(reason)
    raise HarnessError(reason)  # service_unavailable always raises; keep the type checker honest


def ensure_tools(*tools: str) -> None:
    """Make sure the named TOOLS (default: all) and the nagios user exist; apt-get install if not."""
    wanted = [t for t in (tools or TOOLS) if t not in _tools_ok]
    missing = [t for t in wanted if not _tool_present(TOOLS[t][0])]
    if missing:
        pkgs = sorted({p for t in missing for p in TOOLS[t][1]})
        if os.geteuid() != 0:
            _unavailable(f"missing {missing} (packages {pkgs}) and not root to apt-get install them")
        r = apt_install(*pkgs)
        still = [t for t in missing if not _tool_present(TOOLS[t][0])]
        if r.returncode != 0 or still:
            _unavailable(f"apt-get install {' '.join(pkgs)} failed (rc {r.returncode}): "
                         f"{(r.stderr or r.stdout)[-500:]}")
    ensure_nagios_user()
    _tools_ok.update(wanted)


def ensure_nagios_user() -> None:
    """Create the nagios user/group (as the Debian packages do) when missing."""
    try:
        pwd.getpwnam(NAGIOS_USER)
        return
    except KeyError:
        pass
    if os.geteuid() != 0:
        _unavailable("user 'nagios' is missing and we are not root")
    try:
        grp.getgrnam(NAGIOS_USER)
    except KeyError:
        subprocess.run(["groupadd", "--system", NAGIOS_USER], check=True, capture_output=True)
    subprocess.run(["useradd", "--system", "-g", NAGIOS_USER, "-d", "/var/lib/nagios", "-s",
                    "/usr/sbin/nologin", NAGIOS_USER], check=True, capture_output=True)


def _daemon_user() -> tuple[str, str]:
    """(user, group) the daemons drop to: nagios when we are root, else ourselves."""
    if os.geteuid() == 0:
        return NAGIOS_USER, NAGIOS_USER
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


def _chown_daemon(*paths: str) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(NAGIOS_USER)
    for p in paths:
        os.chown(p, pw.pw_uid, pw.pw_gid)


OWNER_FILE = ".nlc-owner"    # "<pid> <starttime>" of the test process that owns a private dir
DAEMON_FILE = ".nlc-daemon"  # "<pid> <starttime> <comm>" of the daemon started in it


def private_dir(name: str) -> str:
    """A fresh directory BASE_DIR/<name>-XXXXXX, mode 0755 (parents traversable), readable by nagios.
    It records its owner (this process) so that cleanup_stale() can remove it after a crash."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "x"
    os.makedirs(BASE_DIR, exist_ok=True)
    p = BASE_DIR
    while p not in ("/", ""):  # nagios must be able to traverse /var/tmp/nlc-test/icinga
        st = os.stat(p)
        if st.st_mode & 0o005 != 0o005 and st.st_uid == os.geteuid():
            os.chmod(p, (st.st_mode & 0o7777) | 0o755)
        p = os.path.dirname(p)
    d = tempfile.mkdtemp(prefix=safe + "-", dir=BASE_DIR)
    os.chmod(d, 0o755)
    me = _proc_stat(os.getpid())
    with open(os.path.join(d, OWNER_FILE), "w") as f:
        f.write(f"{os.getpid()} {me[2] if me else 0}\n")
    return d


def _record_daemon(base: str, pid: int) -> None:
    st = _proc_stat(pid)
    if st:
        with open(os.path.join(base, DAEMON_FILE), "w") as f:
            f.write(f"{pid} {st[2]} {st[3]}\n")


def cleanup_stale() -> list[str]:
    """Remove private dirs whose owning test process is gone (killed test run), stopping the daemon
    recorded in them first (by pid, only if pid, start time and name still match). Returns the dirs."""
    removed = []
    if not os.path.isdir(BASE_DIR):
        return removed
    for name in sorted(os.listdir(BASE_DIR)):
        d = os.path.join(BASE_DIR, name)
        try:
            with open(os.path.join(d, OWNER_FILE)) as f:
                opid, ostart = (int(x) for x in f.read().split()[:2])
        except (OSError, ValueError):
            continue  # not ours (e.g. certcache) or being created right now
        if _alive(opid, ostart):
            continue
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(d, DAEMON_FILE)) as f:
                dpid, dstart, comm = f.read().split()[:3]
            if _alive(int(dpid), int(dstart)):
                stop_process_tree(int(dpid), (comm,), timeout=5)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _rmtree(path: str) -> None:
    if not KEEP_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nagios_can_access(path: str, mode: str = "r") -> bool:
    """Can the daemon user read ('r') or execute ('x') PATH (all parent directories included)?"""
    user, _ = _daemon_user()
    if user == pwd.getpwuid(os.geteuid()).pw_name:
        return os.access(path, os.R_OK if mode == "r" else os.X_OK)
    ensure_tools("runuser")
    return subprocess.run(["runuser", "-u", user, "--", "test", "-" + mode, path],
                          capture_output=True).returncode == 0


def _require_readable(paths: list[str], what: str) -> None:
    """Fail early and clearly when the daemon user cannot read PATHS (or enter them, if directories)."""
    if os.geteuid() != 0:
        return
    bad = [p for p in paths if not nagios_can_access(p, "r")
           or (os.path.isdir(p) and not nagios_can_access(p, "x"))]
    if bad:
        raise HarnessError(f"{what} not accessible to user {_daemon_user()[0]!r} (check parent directory "
                           f"modes; pytest's tmp_path is 0700, use the nagios_tmp_path fixture): {bad}")


def _paths(one_or_many) -> list[str]:
    """A path or a list of paths (str or PathLike), as absolute paths."""
    many = [one_or_many] if isinstance(one_or_many, (str, os.PathLike)) else one_or_many
    return [os.path.abspath(os.fspath(p)) for p in many]


def _include_lines(paths, for_dir: str, for_file: str, what: str, quote=str) -> list[str]:
    """The config lines that take in PATHS (one or a list): FOR_DIR + path for a directory,
    FOR_FILE + path for a file (each path through QUOTE); HarnessError naming WHAT for a path
    that does not exist."""
    lines = []
    for p in _paths(paths):
        if "\n" in p:
            raise ValueError("newline in path")
        if os.path.isdir(p):
            lines.append(for_dir + quote(p))
        elif os.path.isfile(p):
            lines.append(for_file + quote(p))
        else:
            raise HarnessError(f"{what} does not exist: {p}")
    return lines


def _path_values(values) -> list[str]:
    """Values that look like existing absolute paths (plugin dirs in constants/resource macros)."""
    return [v for v in values if isinstance(v, str) and v.startswith("/") and os.path.exists(v)]


# --------------------------------------------------------------------------------------------
# processes: zombie-aware, by pid (+ start time against pid reuse), never by name
# --------------------------------------------------------------------------------------------
def _proc_stat(pid: int):
    """(state, ppid, starttime, comm) of PID, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rp = data.rindex(b")")
    fields = data[rp + 2:].split()
    comm = data[data.index(b"(") + 1:rp].decode(errors="replace")
    return fields[0].decode(), int(fields[1]), int(fields[19]), comm


def _alive(pid: int, starttime: int | None = None) -> bool:
    """Running (a zombie counts as gone: PID 1 here reaps orphans only every ~2 s)."""
    st = _proc_stat(pid)
    if st is None or st[0] == "Z":
        return False
    return starttime is None or st[2] == starttime


def _process_tree(pid: int) -> dict[int, int]:
    """{pid: starttime} of PID and all its descendants."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st:
                children.setdefault(st[1], []).append(int(name))
                starts[int(name)] = st[2]
    tree, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in starts and p not in tree:
            tree[p] = starts[p]
            todo.extend(children.get(p, []))
    return tree


def _wait_gone(procs: dict[int, int], timeout: float) -> dict[int, int]:
    end = time.monotonic() + timeout
    while True:
        left = {p: s for p, s in procs.items() if _alive(p, s)}
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.02)


def _signal(procs: dict[int, int], sig: int) -> None:
    for p, s in procs.items():
        if _alive(p, s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)


def stop_process_tree(pid: int, expect_comm: tuple[str, ...], popen: subprocess.Popen | None = None,
                      timeout: float = 10) -> float:
    """SIGTERM PID (if its name is one of expect_comm), wait (zombie-aware), SIGKILL what is left of it
    and of its descendants (e.g. a hanging plugin). Returns the seconds it took."""
    t0 = time.monotonic()
    st = _proc_stat(pid)
    if st is not None and st[0] != "Z" and st[3] not in expect_comm:
        raise HarnessError(f"pid {pid} is {st[3]!r}, not one of {expect_comm}; not killing it")
    tree = _process_tree(pid) if st is not None else {}
    main = {pid: tree[pid]} if pid in tree else {}
    _signal(main, 15)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)
    if _wait_gone(main, timeout):
        _signal(main, 9)
        _wait_gone(main, 5)
    rest = {p: s for p, s in tree.items() if p != pid}
    if _wait_gone(rest, 2):
        _signal(rest, 15)
        if _wait_gone(rest, 3):
            _signal(rest, 9)
            _wait_gone(rest, 3)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)
    return time.monotonic() - t0


def _read_text(path: str) -> str:
    """A daemon's log, "" before it wrote one."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"<{path}: {e}>"


def _wait_until(pred, timeout: float, what: str, interval: float = 0.02, on_timeout=None):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            extra = on_timeout() if on_timeout else ""
            raise HarnessError(f"timeout after {timeout}s waiting for {what}\n{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# perfdata helpers
# --------------------------------------------------------------------------------------------
def icinga2_literal(value) -> str:
    """A Python value as an Icinga 2 DSL literal (str, bool, int, float, None, list, dict)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        esc = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
        return f'"{esc}"'
    if isinstance(value, (list, tuple)):
        return "[ " + ", ".join(icinga2_literal(v) for v in value) + " ]"
    if isinstance(value, dict):
        return "{ " + "; ".join(f"{icinga2_literal(str(k))} = {icinga2_literal(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"no Icinga 2 literal for {type(value).__name__}")


def _icinga2_env() -> dict:
    user, group = ("root", "root") if os.geteuid() == 0 else _daemon_user()
    return dict(DAEMON_ENV, ICINGA2_USER=user, ICINGA2_GROUP=group)


def icinga2_parse_perfdata_many(tokens: list[str]) -> list[dict | None]:
    """Parse each token with Icinga 2's parse_performance_data() in ONE `icinga2 console` run.
    Returns per token the PerfdataValue as a dict (label, value, unit, warn, crit, min, max, counter;
    values normalised by Icinga: 1.5MB -> 1500000 'bytes'), or None when Icinga rejects it."""
    ensure_tools("icinga2", "itl")
    if not tokens:
        return []
    parts = [f"try {{ r.add(parse_performance_data({icinga2_literal(str(t))})) }} except {{ r.add(null) }}"
             for t in tokens]
    expr = "var r = []; " + "; ".join(parts) + "; r"
    p = subprocess.run(["icinga2", "console", "--eval", expr], capture_output=True, text=True,
                       env=_icinga2_env(), timeout=60, stdin=subprocess.DEVNULL, cwd="/")
    if p.returncode != 0:
        raise HarnessError(f"icinga2 console failed rc={p.returncode}: {p.stdout}{p.stderr}")
    return json.loads(p.stdout)


def icinga2_parse_perfdata(token: str) -> dict | None:
    """Icinga 2's own parser for ONE perfdata token; None if Icinga rejects it."""
    return icinga2_parse_perfdata_many([token])[0]


def parse_pnp_line(line: str) -> dict:
    """'DATATYPE::SERVICEPERFDATA\\tTIMET::...' -> {'DATATYPE': 'SERVICEPERFDATA', 'TIMET': ...}."""
    out = {}
    for field in line.rstrip("\n").split("\t"):
        k, sep, v = field.partition("::")
        if sep:
            out[k] = v
    return out


def _filter_pnp(lines: list[str], host: str | None, service: str | None) -> list[str]:
    res = []
    for line in lines:
        d = parse_pnp_line(line)
        if host is not None and d.get("HOSTNAME") != host:
            continue
        if service is not None and d.get("SERVICEDESC") != service:
            continue
        res.append(line)
    return res


# --------------------------------------------------------------------------------------------
# Icinga 2
# --------------------------------------------------------------------------------------------
_CONST_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _icinga2_main_config(conf_dirs, constants: dict | None, harness: dict | None = None,
                         daemon_conf: str | None = None) -> str:
    consts = {
        "PluginDir": SYSTEM_PLUGIN_DIR,
        "PluginContribDir": SYSTEM_PLUGIN_DIR,
        "ManubulonPluginDir": SYSTEM_PLUGIN_DIR,
        "NodeName": "nlc-test",
        "TicketSalt": "",
    }
    consts.update(constants or {})
    consts.update(harness or {})
    lines = ["/* generated by tests/fixtures_icinga.py */"]
    for k, v in consts.items():
        if not _CONST_RE.match(k):
            raise ValueError(f"invalid Icinga 2 constant name {k!r}")
        lines.append(f"const {k} = {icinga2_literal(v)}")
    if "ZoneName" not in consts:
        lines.append("const ZoneName = NodeName")
    for lib in ICINGA2_LIBS:
        if os.path.exists(os.path.join(ICINGA2_INCLUDE_DIR, lib)):
            lines.append(f"include <{lib}>")
    if daemon_conf:
        lines.append(f"include {icinga2_literal(daemon_conf)}")
    # a directory: include_recursive, *.conf only
    lines += _include_lines(conf_dirs, "include_recursive ", "include ", "Icinga 2 config path",
                            icinga2_literal)
    return "\n".join(lines) + "\n"


def _icinga2_defines(var: str) -> list[str]:
    # MUST come after the `daemon` sub-command; before it they are silently ignored
    return [f"-DConfiguration.DataDir={var}/lib", f"-DConfiguration.CacheDir={var}/cache",
            f"-DConfiguration.LogDir={var}/log", f"-DConfiguration.SpoolDir={var}/spool",
            f"-DConfiguration.InitRunDir={var}/run"]


def icinga2_validate(conf_dirs, constants: dict | None = None, *, log_level: str | None = None,
                     timeout: float = 120) -> subprocess.CompletedProcess:
    """`icinga2 daemon -C` of CONF_DIRS (directories: include_recursive, *.conf; files: include) together
    with the ITL libraries present (itl, plugins, plugins-contrib, manubulon, windows-plugins, nscp) and
    the global CONSTANTS, e.g. {"NovaLibvirtChecksPluginDir": "/x/plugins"}. Runs as root (no privilege
    drop), all state in a temporary dir. rc 0 valid, 1 invalid (stdout names file, line, attribute)."""
    ensure_tools("icinga2", "itl")
    work = private_dir("i2-validate")
    try:
        main = os.path.join(work, "icinga2.conf")
        with open(main, "w") as f:
            f.write(_icinga2_main_config(conf_dirs, constants))
        for sub in ("lib", "cache", "log", "spool", "run"):
            os.makedirs(os.path.join(work, "var", sub))
        argv = ["icinga2", "daemon", "-C", "-c", main] + _icinga2_defines(os.path.join(work, "var"))
        if log_level:
            argv += ["-x", log_level]
        return subprocess.run(argv, capture_output=True, text=True, env=_icinga2_env(), timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd="/")
    finally:
        _rmtree(work)


def icinga2_host_conf(path: str, name: str = "compute-test", address: str = "127.0.0.1", *,
                      nrpe_port: int | None = None, vars: dict | None = None, os_name: str = "Linux",
                      nova_compute: bool = True) -> str:
    """Write a minimal Host object (ITL 'dummy' host check, always UP) that apply rules can match:
    vars.os, vars.nova_compute, vars.nrpe_port (if given; the ITL 'nrpe' command picks $nrpe_port$
    up from the host) plus VARS. PATH may be a directory (host-<name>.conf is created in it).
    Returns the file path."""
    if os.path.isdir(path):
        path = os.path.join(path, f"host-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.conf")
    hv = {"os": os_name, "nova_compute": nova_compute}
    if nrpe_port is not None:
        hv["nrpe_port"] = int(nrpe_port)
    hv.update(vars or {})
    body = [f"object Host {icinga2_literal(name)} {{",
            '  check_command = "dummy"',
            "  vars.dummy_state = 0",
            '  vars.dummy_text = "host up (harness dummy)"',
            f"  address = {icinga2_literal(address)}",
            "  max_check_attempts = 1",
            "  check_interval = 1h"]
    for k, v in hv.items():
        if not _CONST_RE.match(k):
            raise ValueError(f"invalid host var name {k!r}")
        body.append(f"  vars.{k} = {icinga2_literal(v)}")
    body.append("}")
    with open(path, "w") as f:
        f.write("\n".join(body) + "\n")
    os.chmod(path, 0o644)
    return path


def _icinga2_cert(node: str, certs_dir: str) -> None:
    """Copy a self-signed cert for NODE (also used as ca.crt) into CERTS_DIR. `icinga2 pki new-cert`
    makes a 4096-bit key (0.5-2.5 s), so certs are cached in BASE_DIR/certcache (renewed after 300 days)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", node)
    cache = os.path.join(BASE_DIR, "certcache")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    key, crt = os.path.join(cache, safe + ".key"), os.path.join(cache, safe + ".crt")
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions
        fresh = os.path.exists(crt) and os.path.exists(key) and time.time() - os.path.getmtime(crt) < 300 * 86400
        if not fresh:
            for f in (key, crt):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)
            r = subprocess.run(["icinga2", "pki", "new-cert", "--cn", node, "--key", key, "--cert", crt],
                               capture_output=True, text=True, env=_icinga2_env(), stdin=subprocess.DEVNULL,
                               cwd="/")
            if r.returncode != 0:
                raise HarnessError(f"icinga2 pki new-cert failed: {r.stdout}{r.stderr}")
    shutil.copyfile(key, os.path.join(certs_dir, f"{node}.key"))
    shutil.copyfile(crt, os.path.join(certs_dir, f"{node}.crt"))
    shutil.copyfile(crt, os.path.join(certs_dir, "ca.crt"))
    os.chmod(os.path.join(certs_dir, f"{node}.key"), 0o600)


class MetricSink:
    """An HTTP server on 127.0.0.1:<free port> in a thread that plays InfluxDB for Icinga's InfluxdbWriter:
    it answers every POST with 204 and records the body lines (InfluxDB line protocol).
    Attributes: port, requests (int). snapshot() -> list of lines so far."""

    def __init__(self):
        self._lines: list[str] = []
        self.requests = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._lock:
                    sink.requests += 1
                    sink._lines.extend(ln for ln in body.decode("utf-8", "replace").splitlines() if ln)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="nlc-metric-sink")
        self._thread.start()

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _influx_split(text: str, seps: str) -> list[str]:
    """Split at any char of SEPS outside double quotes, keeping backslash escapes."""
    out, cur, i, quoted = [], [], 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c in seps and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _influx_unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _influx_value(v: str):
    if v.startswith('"') and v.endswith('"'):
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if v in ("true", "false"):
        return v == "true"
    with contextlib.suppress(ValueError):
        return int(v[:-1]) if v.endswith("i") else float(v)
    return v


def parse_influx_line(line: str) -> dict:
    """InfluxDB line protocol -> {'measurement', 'tags' (dict), 'fields' (dict; numbers as float,
    booleans, strings), 'timestamp' (int or None)}. As the InfluxdbWriter writes it: measurement =
    check command, tags hostname/service/metric (metric = perfdata label; absent on metadata lines)."""
    parts = _influx_split(line, " ")
    key, fields = parts[0], parts[1] if len(parts) > 1 else ""
    kparts = _influx_split(key, ",")
    tags = {}
    for t in kparts[1:]:
        k, _, v = t.partition("=")
        tags[_influx_unescape(k)] = _influx_unescape(v)
    fdict = {}
    for f in _influx_split(fields, ","):
        if f:
            k, _, v = f.partition("=")
            fdict[_influx_unescape(k)] = _influx_value(v)
    ts = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    return {"measurement": _influx_unescape(kparts[0]), "tags": tags, "fields": fdict, "timestamp": ts}


_IGNORED_WARNINGS = ("warning/ExternalCommandListener: This feature is DEPRECATED",)


class Icinga2Daemon:
    """A running private Icinga 2 (see icinga2_daemon). Attributes: base, pid, api_url, api_port,
    api_user, api_password, log_path (FileLogger), stdout_path (console log), perfdata_dir,
    command_pipe, ca_path, metric_sink (MetricSink)."""

    def __init__(self, base: str, api_port: int, api_user: str, api_password: str):
        self.base = base
        self.var = os.path.join(base, "var")
        self.api_port = api_port
        self.api_url = f"https://127.0.0.1:{api_port}/v1"
        self.api_user = api_user
        self.api_password = api_password
        self.log_path = os.path.join(self.var, "log", "icinga2.log")
        self.stdout_path = os.path.join(self.var, "log", "stdout.log")
        self.perfdata_dir = os.path.join(self.var, "spool", "perfdata")
        self.command_pipe = os.path.join(self.var, "run", "cmd", "icinga2.cmd")
        self.ca_path = os.path.join(self.var, "lib", "certs", "ca.crt")
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None
        self.stop_seconds: float | None = None
        self.metric_sink: MetricSink | None = None
        self._ctx = None

    # ---- REST API ----
    def _ssl(self):
        if self._ctx is None:
            ctx = ssl.create_default_context(cafile=self.ca_path)
            ctx.check_hostname = False  # the self-signed cert is for NodeName, we connect to 127.0.0.1
            self._ctx = ctx
        return self._ctx

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict:
        """Call the REST API (path relative to /v1, e.g. '/objects/services'); returns the JSON answer.
        Raises HarnessError with the API's message on HTTP errors."""
        headers = {"Accept": "application/json",
                   "Authorization": "Basic " + base64.b64encode(
                       f"{self.api_user}:{self.api_password}".encode()).decode()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if method == "GET" and body is not None:  # filters travel in the body
            method, headers["X-HTTP-Method-Override"] = "POST", "GET"
        req = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise HarnessError(f"Icinga 2 API {method} {path}: HTTP {e.code}: "
                               f"{e.read().decode(errors='replace')[:2000]}") from None

    def services(self, host: str | None = None) -> list[str]:
        """Names 'host!service' of all services (of HOST)."""
        body = {"attrs": ["__name"]}
        if host is not None:
            body.update(filter="host.name == h", filter_vars={"h": host})
        return sorted(r["name"] for r in self.api("GET", "/objects/services", body)["results"])

    def force_checks(self, pairs: list[tuple[str, str]], timeout: float = 60) -> dict[str, dict]:
        """Force checks of several (host, service) at once; {'host!service': last_check_result}."""
        if not pairs:
            return {}
        fv, parts = {}, []
        for i, (h, s) in enumerate(pairs):
            fv[f"h{i}"], fv[f"s{i}"] = h, s
            parts.append(f"(host.name == h{i} && service.name == s{i})")
        flt = " || ".join(parts)
        want = {f"{h}!{s}" for h, s in pairs}
        t0 = time.time()
        try:
            self.api("POST", "/actions/reschedule-check",
                     {"type": "Service", "filter": flt, "filter_vars": fv, "force": True})
        except HarnessError as e:
            if "404" in str(e):
                known = self.services()
                raise HarnessError(f"no such service(s) {sorted(want)}; known: {known}") from None
            raise
        found = {r["name"] for r in self.api("GET", "/objects/services",
                                             {"filter": flt, "filter_vars": fv, "attrs": ["__name"]})["results"]}
        if found != want:
            raise HarnessError(f"no such service(s) {sorted(want - found)}; known: {self.services()}")
        results: dict[str, dict] = {}
        seen_old: dict[str, float] = {}
        end = time.monotonic() + timeout
        while True:
            rows = self.api("GET", "/objects/services",
                            {"filter": flt, "filter_vars": fv, "attrs": ["last_check", "last_check_result"]})
            for r in rows["results"]:
                cr = r["attrs"].get("last_check_result")
                if r["name"] in results or not cr:
                    continue
                if cr.get("execution_start", 0) >= t0 - 0.001:
                    results[r["name"]] = cr
                elif r["attrs"]["last_check"] >= t0 and seen_old.get(r["name"]) != r["attrs"]["last_check"]:
                    # a check that was already running when we forced ours finished (and rescheduled
                    # the checkable normally): force again
                    seen_old[r["name"]] = r["attrs"]["last_check"]
                    h, s = r["name"].split("!", 1)
                    self.api("POST", "/actions/reschedule-check",
                             {"type": "Service", "filter": "host.name == h && service.name == s",
                              "filter_vars": {"h": h, "s": s}, "force": True})
            if len(results) == len(want):
                return results
            if time.monotonic() > end:
                raise HarnessError(f"no check result within {timeout}s for {sorted(want - set(results))}\n"
                                   + self.log_tail())
            self.assert_running()
            time.sleep(0.02)

    def force_check(self, host: str, service: str, timeout: float = 60) -> dict:
        """POST /v1/actions/reschedule-check (force) and wait for a result that started after the POST.
        Returns Icinga's last_check_result: exit_status, state, output, performance_data (list of
        strings as Icinga split them), command (final argv), execution_start/end, ..."""
        return self.force_checks([(host, service)], timeout)[f"{host}!{service}"]

    def send_command(self, line: str) -> None:
        """Write one external command (without the [timestamp] prefix) to the command pipe."""
        if "\n" in line:
            raise ValueError("an external command is one line")
        _write_pipe(self.command_pipe, f"[{int(time.time())}] {line}\n")

    def _last_result(self, host: str, service: str):
        rows = self.api("GET", "/objects/services", {"filter": "host.name == h && service.name == s",
                                                     "filter_vars": {"h": host, "s": service},
                                                     "attrs": ["last_check_result"]})["results"]
        if not rows:
            raise HarnessError(f"no such service {host}!{service}; known: {self.services()}")
        return rows[0]["attrs"]["last_check_result"]

    def submit_plugin_output(self, host: str, service: str, exit_status: int, output: str,
                             timeout: float = 15) -> dict:
        """Feed OUTPUT (what a plugin would print, newlines allowed) as a passive result through the
        command pipe (PROCESS_SERVICE_CHECK_RESULT), i.e. through Icinga's own output/perfdata splitter,
        and return the resulting last_check_result (output, performance_data, state, ...). Any service
        with passive checks enabled (the default) works. Note: exit_status is always 0 in a pipe result,
        use 'state'; results in the same second as the previous one wait for the next second."""
        if ";" in host or ";" in service or "\n" in host + service:
            raise ValueError("unusable host/service name")
        before = self._last_result(host, service)
        if before and int(before.get("execution_end") or 0) >= int(time.time()):
            # pipe results carry whole-second times: make the new one distinguishable
            time.sleep(int(before["execution_end"]) + 1 - time.time() + 0.01)
        # Icinga turns a literal backslash-n back into a newline and leaves other backslashes alone
        # (so a plugin's own literal "\\n" cannot be submitted this way)
        text = output.rstrip("\n").replace("\n", "\\n")
        self.send_command(f"PROCESS_SERVICE_CHECK_RESULT;{host};{service};{int(exit_status)};{text}")
        return _wait_until(lambda: (lambda r: r if r and r != before else None)(self._last_result(host, service)),
                           timeout, f"passive result for {host}!{service}", on_timeout=self.log_tail)

    # ---- files ----
    def perfdata_lines(self, service: str | None = None, host: str | None = None,
                       timeout: float = 15.0) -> list[str]:
        """Lines (PNP4Nagios bulk format) of the rotated service-perfdata files. With SERVICE/HOST:
        wait until at least one matching line is there (rotation happens every rotation_interval)
        and return only the matching lines. Without: return what is there now."""
        def read():
            lines = []
            if os.path.isdir(self.perfdata_dir):
                for fn in sorted(os.listdir(self.perfdata_dir)):
                    if fn.startswith("service-perfdata"):
                        with open(os.path.join(self.perfdata_dir, fn), encoding="utf-8",
                                  errors="surrogateescape") as f:
                            lines.extend(line.rstrip("\n") for line in f if line.strip())
            return _filter_pnp(lines, host, service)
        if service is None and host is None:
            return read()
        return _wait_until(read, timeout, f"PerfdataWriter line for {host}!{service}", interval=0.1,
                           on_timeout=self.log_tail)

    def log_text(self) -> str:
        """The daemon's log (severity information). This is the console log (stdout of the foreground
        daemon), written immediately; the FileLogger copy at log_path is flushed only about once per
        second, so it is not used for 'X is NOT logged' assertions."""
        return _read_text(self.stdout_path)

    def log_warnings(self) -> list[str]:
        """Log lines of severity warning or critical (without the harness's own known noise: the
        ExternalCommandListener deprecation warning)."""
        return [ln for ln in self.log_text().splitlines()
                if re.search(r"\] (warning|critical)/", ln) and not any(i in ln for i in _IGNORED_WARNINGS)]

    def metrics(self, host: str | None = None, service: str | None = None, timeout: float = 15.0,
                perfdata_only: bool = True) -> list[dict]:
        """What Icinga's InfluxdbWriter sent, parsed (see parse_influx_line): the perfdata values as Icinga
        understood them (label in tags['metric'], fields value/warn/crit/min/max; 1.5MB -> 1500000).
        perfdata_only=False adds the metadata points (state, current_attempt, ...). With HOST (and
        SERVICE): wait until at least one matching point is there."""
        def get():
            res = []
            for ln in self.metric_sink.snapshot():
                p = parse_influx_line(ln)
                t = p["tags"]
                if perfdata_only and "metric" not in t:
                    continue
                if host is not None and t.get("hostname") != host:
                    continue
                if service is not None and t.get("service") != service:
                    continue
                res.append(p)
            return res
        if host is None and service is None:
            return get()
        return _wait_until(get, timeout, f"InfluxdbWriter points for {host}!{service}", interval=0.02,
                           on_timeout=self.log_tail)

    def sync_writers(self, host: str, timeout: float = 15.0) -> None:
        """Wait until the metric writer has processed every check result so far: submit a passive UP
        result for HOST and wait for its metadata point at the sink (the writer's queue is FIFO)."""
        def host_points():
            return sum(1 for ln in self.metric_sink.snapshot()
                       if (lambda t: t.get("hostname") == host and "service" not in t)(parse_influx_line(ln)["tags"]))
        n0 = host_points()
        self.api("POST", "/actions/process-check-result",
                 {"type": "Host", "filter": "host.name == h", "filter_vars": {"h": host},
                  "exit_status": 0, "plugin_output": "UP - harness writer sync"})
        _wait_until(lambda: host_points() > n0, timeout, f"InfluxdbWriter sync via host {host}",
                    on_timeout=self.log_tail)

    def perfdata_warnings(self, host: str, service: str | None = None) -> list[str]:
        """Icinga's 'Ignoring invalid perfdata for checkable ...' warnings (the InfluxdbWriter parses every
        token) for HOST!SERVICE (or all services of HOST), after sync_writers(HOST). Empty list = Icinga
        could parse all perfdata of the checks done so far."""
        self.sync_writers(host)
        what = f"checkable '{host}!{service}'" if service is not None else f"checkable '{host}"
        return [ln for ln in self.log_text().splitlines() if "Ignoring invalid perfdata" in ln and what in ln]

    def log_tail(self, n: int = 40) -> str:
        return ("--- icinga2.log ---\n" + _tail(self.log_path, n) + "--- stdout ---\n"
                + _tail(self.stdout_path, n))

    def assert_running(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise HarnessError(f"icinga2 exited with rc {self.popen.returncode}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.pid is not None and self.stop_seconds is None:
            self.stop_seconds = stop_process_tree(self.pid, ("icinga2",), self.popen)
        if self.metric_sink is not None:
            self.metric_sink.close()
            self.metric_sink = None


@contextlib.contextmanager
def icinga2_daemon(conf_dirs, constants: dict | None = None, *, name: str = "icinga2",
                   rotation_interval: int = 1, active_checks: bool = False, hosts_up: bool = True,
                   start_timeout: float = 60):
    """A private Icinga 2 daemon (foreground process, runs as nagios) with REST API on 127.0.0.1:<free
    port> (self-signed cert, random ApiUser password), CheckerComponent, PerfdataWriter (rotation every
    ROTATION_INTERVAL s), InfluxdbWriter (to an in-process MetricSink), ExternalCommandListener and a
    FileLogger; config = ITL + CONF_DIRS + CONSTANTS (see icinga2_validate).
    active_checks=False: only forced checks run. hosts_up=True: every host gets a passive UP result at
    start (so HOSTSTATE is UP, not the initial DOWN). Yields an Icinga2Daemon; stops it (and any
    plugin it still runs) and removes its directory on exit."""
    ensure_tools("icinga2", "itl", "plugins")
    base = private_dir(name)
    d = None
    try:
        var = os.path.join(base, "var")
        dirs = [var] + [os.path.join(var, s) for s in
                        ("lib", "lib/certs", "cache", "log", "spool", "spool/perfdata", "spool/tmp",
                         "run", "run/cmd")]
        for p in dirs:
            os.makedirs(p, exist_ok=True)
        consts = dict(constants or {})
        _icinga2_cert(str(consts.get("NodeName", "nlc-test")), os.path.join(var, "lib", "certs"))
        port, user, password = free_port(), "nlc-harness", secrets.token_hex(16)
        d = Icinga2Daemon(base, port, user, password)
        d.metric_sink = MetricSink()
        main = os.path.join(base, "icinga2.conf")
        with open(main, "w") as f:
            f.write(_icinga2_main_config(
                conf_dirs, consts,
                {"NlcApiPort": port, "NlcApiUser": user, "NlcApiPassword": password,
                 "NlcPerfdataRotation": int(rotation_interval), "NlcActiveChecks": bool(active_checks),
                 "NlcMetricSinkPort": d.metric_sink.port},
                daemon_conf=os.path.join(TEMPLATES, "icinga2-daemon.conf")))
        os.chmod(main, 0o640)
        for root, _subdirs, files in os.walk(var):
            _chown_daemon(root, *[os.path.join(root, x) for x in files])
        _chown_daemon(main)
        _require_readable(_paths(conf_dirs) + _path_values(consts.values()),
                          "Icinga 2 config or constant path")
        user_, group_ = _daemon_user()
        env = dict(DAEMON_ENV, ICINGA2_USER=user_, ICINGA2_GROUP=group_)
        with open(d.stdout_path, "wb") as out:
            d.popen = subprocess.Popen(["icinga2", "daemon", "-c", main] + _icinga2_defines(var),
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd="/", start_new_session=True)
        d.pid = d.popen.pid
        _record_daemon(base, d.pid)

        def api_up():
            d.assert_running()
            try:
                d.api("GET", "/status/IcingaApplication", timeout=5)
                return True
            except (HarnessError, OSError):
                return False
        _wait_until(api_up, start_timeout, "the Icinga 2 REST API", interval=0.02, on_timeout=d.log_tail)
        if hosts_up:
            hosts = [r["name"] for r in d.api("GET", "/objects/hosts", {"attrs": ["__name"]})["results"]]
            if hosts:
                d.api("POST", "/actions/process-check-result",
                      {"type": "Host", "filter": "true", "exit_status": 0, "plugin_output": "UP - harness"})
        yield d
    finally:
        if d is not None:
            d.stop()
            if d.metric_sink is not None:  # daemon never started
                d.metric_sink.close()
        _rmtree(base)


# --------------------------------------------------------------------------------------------
# Nagios 4
# --------------------------------------------------------------------------------------------
_RES_RE = re.compile(r"^\$?USER([1-9][0-9]{0,2})\$?$")


def _fill(template: str, values: dict) -> str:
    with open(os.path.join(TEMPLATES, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise HarnessError(f"unfilled placeholders {left} in {template}")
    return text


def _nagios_setup(base: str, cfg_files, resource: dict | None, active_checks: bool,
                  service_check_timeout: int) -> str:
    for sub in ("var", "var/rw", "var/tmp", "var/spool", "var/spool/checkresults", "var/archives"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    res = {1: SYSTEM_PLUGIN_DIR}
    for k, v in (resource or {}).items():
        m = _RES_RE.match(str(k))
        if not m or int(m.group(1)) > 256:
            raise ValueError(f"invalid Nagios resource macro {k!r} (want USERn / $USERn$)")
        if "\n" in str(v):
            raise ValueError(f"newline in resource value for {k!r}")
        res[int(m.group(1))] = str(v)
    with open(os.path.join(base, "resource.cfg"), "w") as f:
        f.writelines(f"$USER{n}$={v}\n" for n, v in sorted(res.items()))
    lines = [f"cfg_file={os.path.join(TEMPLATES, 'nagios-base.cfg')}"]
    lines += _include_lines(cfg_files, "cfg_dir=", "cfg_file=", "Nagios object path")
    user, group = _daemon_user()
    main = os.path.join(base, "nagios.cfg")
    with open(main, "w") as f:
        f.write(_fill("nagios-main.cfg.in", {
            "BASE": base, "USER": user, "GROUP": group, "ACTIVE": 1 if active_checks else 0,
            "SERVICE_CHECK_TIMEOUT": int(service_check_timeout), "CFG_LINES": "\n".join(lines)}))
    for root, _subdirs, files in os.walk(os.path.join(base, "var")):
        _chown_daemon(root, *[os.path.join(root, x) for x in files])
    return main


def nagios_validate(cfg_files, resource: dict | None = None, *, timeout: float = 60
                    ) -> subprocess.CompletedProcess:
    """`nagios4 -v` of a private main config: the harness base objects (timeperiod 24x7, contact
    nagiosadmin, contactgroup admins, templates generic-host, linux-server, generic-service,
    local-service) + CFG_FILES (files: cfg_file=, directories: cfg_dir=, *.cfg). $USER1$ is
    /usr/lib/nagios/plugins; RESOURCE adds more, e.g. {"USER2": "/x/plugins"}. rc 0 valid."""
    ensure_tools("nagios4", "plugins")
    base = private_dir("nagios-validate")
    try:
        main = _nagios_setup(base, cfg_files, resource, False, 30)
        return subprocess.run(["nagios4", "-v", main], capture_output=True, text=True, timeout=timeout,
                              env=DAEMON_ENV, stdin=subprocess.DEVNULL, cwd="/")
    finally:
        _rmtree(base)


def nagios_host_cfg(path: str, name: str = "compute-test", address: str = "127.0.0.1", *,
                    use: str = "linux-server", hostgroups=(), custom_vars: dict | None = None) -> str:
    """Write a host definition (and the HOSTGROUPS it is in, defined here) for Nagios tests. CUSTOM_VARS
    become _NAME value lines ($_HOSTNAME$ macros). PATH may be a directory. Returns the file path."""
    if os.path.isdir(path):
        path = os.path.join(path, f"host-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.cfg")
    for v in [name, address, use, *hostgroups, *(custom_vars or {}).keys(),
              *map(str, (custom_vars or {}).values())]:
        if "\n" in v or ";" in v:
            raise ValueError(f"unusable character in {v!r}")
    out = ["define host {", f"  use        {use}", f"  host_name  {name}", f"  alias      {name}",
           f"  address    {address}"]
    if hostgroups:
        out.append(f"  hostgroups {','.join(hostgroups)}")
    for k, v in (custom_vars or {}).items():
        out.append(f"  _{k.lstrip('_').upper()} {v}")
    out.append("}")
    for g in hostgroups:
        out += ["define hostgroup {", f"  hostgroup_name {g}", f"  alias          {g}", "}"]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    os.chmod(path, 0o644)
    return path


def _write_pipe(path: str, text: str, timeout: float = 10) -> None:
    """Write to a named pipe without blocking forever when nobody reads it."""
    end = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.ENOENT) or time.monotonic() > end:
                raise HarnessError(f"cannot open command pipe {path}: {e}") from None
            time.sleep(0.02)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _nagios_unescape(s: str) -> str:
    return re.sub(r"\\([\\n])", lambda m: "\n" if m.group(1) == "n" else "\\", s)


def parse_status_dat(path: str) -> list[tuple[str, dict]]:
    """Nagios status.dat -> [(block type, {key: value})]."""
    blocks, cur, kind = [], None, None
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            s = line.strip()
            if cur is None and s.endswith("{"):
                kind, cur = s[:-1].strip(), {}
            elif cur is not None and s == "}":
                blocks.append((kind, cur))
                cur = None
            elif cur is not None and "=" in s:
                k, v = line.lstrip().rstrip("\n").split("=", 1)
                cur[k] = v
    return blocks


class NagiosDaemon:
    """A running private Nagios 4 (see nagios_daemon). Attributes: base, pid, main_cfg, status_path,
    command_file, perfdata_path, log_path."""

    def __init__(self, base: str, main_cfg: str):
        self.base = base
        self.main_cfg = main_cfg
        self.status_path = os.path.join(base, "var", "status.dat")
        self.command_file = os.path.join(base, "var", "rw", "nagios.cmd")
        self.perfdata_path = os.path.join(base, "var", "service-perfdata")
        self.log_path = os.path.join(base, "var", "nagios.log")
        self.stdout_path = os.path.join(base, "stdout.log")
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None
        self.stop_seconds: float | None = None

    def status(self, host: str | None = None, service: str | None = None) -> list[dict]:
        """servicestatus blocks of status.dat (raw strings, long_plugin_output still escaped)."""
        try:
            blocks = parse_status_dat(self.status_path)
        except FileNotFoundError:
            return []
        return [b for k, b in blocks if k == "servicestatus"
                and (host is None or b.get("host_name") == host)
                and (service is None or b.get("service_description") == service)]

    def send_command(self, line: str) -> None:
        """Write one external command (without the [timestamp] prefix) to the command pipe."""
        _write_pipe(self.command_file, f"[{int(time.time())}] {line}\n")

    def force_checks(self, pairs: list[tuple[str, str]], timeout: float = 60) -> dict[str, dict]:
        """SCHEDULE_FORCED_SVC_CHECK for each (host, service), then poll status.dat until last_check
        is at/after the command time and newer than before. {'host!service': result} (see force_check)."""
        for h, s in pairs:
            if any(c in x for x in (h, s) for c in ";\n\r"):
                raise ValueError(f"unusable host/service name {h!r}/{s!r}")
        before = {}
        for h, s in pairs:
            st = self.status(h, s)
            if not st:
                known = sorted(f"{b['host_name']}!{b['service_description']}" for b in self.status())
                raise HarnessError(f"no such service {h}!{s} in status.dat; known: {known}")
            before[(h, s)] = int(st[0].get("last_check") or 0)
        # last_check has 1 s resolution: a new check must be distinguishable from the previous one
        if max(before.values()) >= int(time.time()):
            time.sleep(max(before.values()) + 1 - time.time() + 0.01)
        ts = int(time.time())
        for h, s in pairs:
            self.send_command(f"SCHEDULE_FORCED_SVC_CHECK;{h};{s};{ts}")
        results: dict[str, dict] = {}

        def collect():
            self.assert_running()
            for h, s in pairs:
                key = f"{h}!{s}"
                if key in results:
                    continue
                st = self.status(h, s)
                if st:
                    lc = int(st[0].get("last_check") or 0)
                    if lc >= ts and lc > before[(h, s)]:
                        results[key] = _nagios_result(st[0])
            return len(results) == len(pairs)
        _wait_until(collect, timeout, f"Nagios check results for {pairs}", interval=0.05,
                    on_timeout=lambda: _tail(self.log_path))
        return results

    def force_check(self, host: str, service: str, timeout: float = 60) -> dict:
        """Force one check; returns {state, output, long_output, perfdata, last_check,
        check_execution_time, check_command, status (the raw status.dat block)}."""
        return self.force_checks([(host, service)], timeout)[f"{host}!{service}"]

    def perfdata_lines(self, service: str | None = None, host: str | None = None,
                       timeout: float = 15.0) -> list[str]:
        """Lines of the service perfdata file (PNP4Nagios bulk format; SERVICECHECKCOMMAND is
        'cmd!args'). With SERVICE/HOST: wait for a matching line, return the matching lines."""
        def read():
            try:
                with open(self.perfdata_path, encoding="utf-8", errors="surrogateescape") as f:
                    lines = [ln.rstrip("\n") for ln in f if ln.strip()]
            except FileNotFoundError:
                lines = []
            return _filter_pnp(lines, host, service)
        if service is None and host is None:
            return read()
        return _wait_until(read, timeout, f"Nagios perfdata line for {host}!{service}", interval=0.05)

    def log_text(self) -> str:
        return _read_text(self.log_path)

    def assert_running(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise HarnessError(f"nagios4 exited with rc {self.popen.returncode}\n{_tail(self.stdout_path)}"
                               f"\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.pid is not None and self.stop_seconds is None:
            self.stop_seconds = stop_process_tree(self.pid, ("nagios4",), self.popen)


def _nagios_result(b: dict) -> dict:
    return {"state": int(b.get("current_state", 3)), "output": b.get("plugin_output", ""),
            "long_output": _nagios_unescape(b.get("long_plugin_output", "")),
            "perfdata": b.get("performance_data", ""), "last_check": int(b.get("last_check") or 0),
            "check_execution_time": float(b.get("check_execution_time") or 0),
            "check_command": b.get("check_command", ""), "status": b}


@contextlib.contextmanager
def nagios_daemon(cfg_files, resource: dict | None = None, *, name: str = "nagios",
                  active_checks: bool = False, service_check_timeout: int = 30, start_timeout: float = 30):
    """A private Nagios 4 (`nagios4 CFG` in the foreground as our child; drops to nagios) with the
    config of nagios_validate. active_checks=False: only forced checks run. The main config is
    validated first (HarnessError with the `nagios4 -v` output if invalid). Yields a NagiosDaemon."""
    ensure_tools("nagios4", "plugins")
    base = private_dir(name)
    d = None
    try:
        main = _nagios_setup(base, cfg_files, resource, active_checks, service_check_timeout)
        _require_readable(_paths(cfg_files) + _path_values((resource or {}).values()),
                          "Nagios object config or resource path")
        v = subprocess.run(["nagios4", "-v", main], capture_output=True, text=True, env=DAEMON_ENV,
                           stdin=subprocess.DEVNULL, cwd="/", timeout=60)
        if v.returncode != 0:
            raise HarnessError(f"nagios4 -v failed (rc {v.returncode}):\n{v.stdout}{v.stderr}")
        d = NagiosDaemon(base, main)
        with open(d.stdout_path, "wb") as out:
            d.popen = subprocess.Popen(["nagios4", main], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=DAEMON_ENV, cwd="/",
                                       start_new_session=True)
        d.pid = d.popen.pid
        _record_daemon(base, d.pid)

        def up():
            d.assert_running()
            return os.path.exists(d.command_file) and os.path.exists(d.status_path)
        _wait_until(up, start_timeout, "Nagios status.dat and command pipe", interval=0.02,
                    on_timeout=lambda: _tail(d.log_path))
        yield d
    finally:
        if d is not None:
            d.stop()
        _rmtree(base)


# --------------------------------------------------------------------------------------------
# NRPE
# --------------------------------------------------------------------------------------------
def check_nrpe(command: str | None, port: int, extra_args=(), *, host: str = "127.0.0.1",
               timeout: float = 60) -> subprocess.CompletedProcess:
    """Run check_nrpe -H HOST -p PORT [-c COMMAND] EXTRA_ARGS (command None: version query).
    Returns the CompletedProcess (text). Note: Debian's NRPE refuses any `-a` arguments."""
    ensure_tools("check_nrpe")
    argv = [CHECK_NRPE, "-H", host, "-p", str(int(port))]
    if command is not None:
        argv += ["-c", command]
    argv += [str(a) for a in extra_args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=DAEMON_ENV,
                          stdin=subprocess.DEVNULL)


class NrpeDaemon:
    """A running private NRPE (see nrpe_daemon). Attributes: base, port, pid, cfg_path, log_path."""

    def __init__(self, base: str, port: int):
        self.base = base
        self.port = port
        self.cfg_path = os.path.join(base, "nrpe.cfg")
        self.log_path = os.path.join(base, "nrpe.log")
        self.pid_path = os.path.join(base, "nrpe.pid")
        self.pid: int | None = None
        self.stop_seconds: float | None = None

    def check(self, command: str | None, extra_args=(), timeout: float = 60) -> subprocess.CompletedProcess:
        return check_nrpe(command, self.port, extra_args, timeout=timeout)

    def log_text(self) -> str:
        return _read_text(self.log_path)

    def stop(self) -> None:
        if self.pid is not None and self.stop_seconds is None:
            self.stop_seconds = stop_process_tree(self.pid, ("nrpe",))


@contextlib.contextmanager
def nrpe_daemon(command_file, port: int | None = None, *, command_timeout: int = 60, debug: bool = False,
                name: str = "nrpe", start_timeout: float = 15):
    """A private NRPE (`nrpe -c CFG -d`, nrpe_user nagios, 127.0.0.1:PORT (default: a free port),
    allowed_hosts 127.0.0.1, no syslog, log file in its dir) whose config include=s COMMAND_FILE
    (a file or a list; a directory becomes include_dir=). Waits until check_nrpe gets an answer
    from THIS daemon (a private probe command), yields an NrpeDaemon, stops it afterwards by pid."""
    ensure_tools("nrpe", "check_nrpe")
    includes = _include_lines(command_file, "include_dir=", "include=", "NRPE command file")
    base = private_dir(name)
    d = None
    try:
        port = int(port) if port else free_port()
        token = secrets.token_hex(8)
        ping = f"nlc_harness_ping_{token}"
        user, group = _daemon_user()
        d = NrpeDaemon(base, port)
        with open(d.cfg_path, "w") as f:
            f.write(_fill("nrpe.cfg.in", {
                "BASE": base, "PORT": port, "USER": user, "GROUP": group, "DEBUG": 1 if debug else 0,
                "COMMAND_TIMEOUT": int(command_timeout), "PING_COMMAND": ping, "PING_TOKEN": token,
                "INCLUDES": "\n".join(includes)}))
        open(d.log_path, "a").close()
        _chown_daemon(base, d.log_path)
        r = subprocess.run(["nrpe", "-c", d.cfg_path, "-d"], capture_output=True, text=True,
                           env=DAEMON_ENV, stdin=subprocess.DEVNULL, cwd="/", timeout=30)
        if r.returncode != 0:
            raise HarnessError(f"nrpe -d failed rc={r.returncode}: {r.stdout}{r.stderr}\n{_tail(d.log_path)}")

        def read_pid():
            try:
                with open(d.pid_path) as f:
                    pid = int(f.read().strip() or 0)
            except (FileNotFoundError, ValueError):
                return None
            st = _proc_stat(pid) if pid else None
            return pid if st and st[0] != "Z" and st[3] == "nrpe" else None

        def answered():
            d.pid = d.pid or read_pid()
            p = check_nrpe(ping, port, ["-t", "5"], timeout=15)
            if p.returncode == 0 and token in p.stdout:
                return True
            if d.pid and not _alive(d.pid):
                raise HarnessError(f"nrpe exited\n{_tail(d.log_path)}")
            return False
        _wait_until(answered, start_timeout, f"NRPE on 127.0.0.1:{port}", interval=0.02,
                    on_timeout=lambda: _tail(d.log_path))
        d.pid = d.pid or _wait_until(read_pid, 5, "nrpe pid file")
        _record_daemon(base, d.pid)
        yield d
    finally:
        if d is not None:
            if d.pid is None:  # started but never answered: still stop it
                with contextlib.suppress(Exception):
                    with open(d.pid_path) as f:
                        d.pid = int(f.read().strip())
            d.stop()
        _rmtree(base)


# --------------------------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def icinga_tools():
    """Session: icinga2, ITL, nagios4, nrpe, check_nrpe, monitoring plugins and user nagios are
    present (apt-get install if not; fail in CI / skip elsewhere if impossible). Yields this module."""
    import sys

    ensure_tools()
    cleanup_stale()
    yield sys.modules[__name__]


@pytest.fixture
def nagios_tmp_path(icinga_tools):
    """A fresh directory (0755, parents traversable) that the nagios user can read and execute from:
    put stand-in plugins, NRPE command files and object files here. Removed after the test."""
    d = private_dir("tmp")
    yield d
    _rmtree(d)


def installed_nrpe_file(installed_plugins: str) -> str:
    """The NRPE command file `make install` wrote for the checks in `installed_plugins` (the
    installed_plugins fixture: PREFIX and PLUGINDIR side by side under NLC_TEST_ROOT)."""
    prefix = os.path.join(os.path.dirname(installed_plugins), "install")
    return os.path.join(prefix, "etc", "nrpe.d", "nova-libvirt-checks.cfg")


@pytest.fixture(scope="session")
def nrpe(icinga_tools, installed_plugins):
    """ONE real NRPE daemon for the session, serving the NRPE file `make install` wrote (the
    installed checks, run as nagios): test_icinga.py's Icinga 2, Nagios and direct tests and
    test_debian_operator.py share it. (Debian's own NRPE file names the same commands with other
    paths, so test_debian.py starts its own; the harness's self-tests serve stand-ins.)"""
    with nrpe_daemon(installed_nrpe_file(installed_plugins), command_timeout=60) as daemon:
        yield daemon


class _Daemons:
    def __init__(self, stack: contextlib.ExitStack):
        self._stack = stack

    def nrpe(self, *a, **kw) -> NrpeDaemon:
        return self._stack.enter_context(nrpe_daemon(*a, **kw))

    def icinga2(self, *a, **kw) -> Icinga2Daemon:
        return self._stack.enter_context(icinga2_daemon(*a, **kw))

    def nagios(self, *a, **kw) -> NagiosDaemon:
        return self._stack.enter_context(nagios_daemon(*a, **kw))


@pytest.fixture
def monitoring_daemons(icinga_tools):
    """Factory: monitoring_daemons.nrpe(...), .icinga2(...), .nagios(...) (same arguments as the
    context managers); every daemon started is stopped at test teardown (reverse order)."""
    with contextlib.ExitStack() as stack:
        yield _Daemons(stack)
