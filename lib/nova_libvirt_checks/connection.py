"""The libvirt connection: opened read-only by default, libvirt's errors in plain words.

libvirt prints every error to stderr unless told otherwise; NRPE and Icinga would show that
noise, so the default handler is replaced as soon as the module is loaded.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from .plugin import CRITICAL, UNKNOWN, CheckError

DEFAULT_URI = "qemu:///system"

# virDomainState, as libvirt numbers them; the names are the operator's (virsh) words
DOMAIN_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
                 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
STATE_WORDS = {"nostate": "no state", "shutoff": "shut off", "shutdown": "shutting down",
               "pmsuspended": "suspended"}

# what lets this user in, for each socket (libvirtd.conf settings, polkit actions)
_PERMISSION_HINTS = {
    True: "let this user use the read-only socket: auth_unix_ro (and unix_sock_ro_perms) in "
          "libvirtd.conf, or a polkit rule for org.libvirt.unix.monitor",
    False: "--read-write needs the read-write socket: the libvirt group (unix_sock_group, "
           "auth_unix_rw in libvirtd.conf) or a polkit rule for org.libvirt.unix.manage; "
           "or leave out --read-write",
}


def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def libvirt_module() -> ModuleType:
    """Import libvirt-python, silence its stderr printer; UNKNOWN if it is not installed."""
    try:
        import libvirt
    except ImportError as exc:
        raise CheckError(f"libvirt-python is not installed: {exc}") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def open_connection(uri: str, read_only: bool = True, unreachable: int = CRITICAL) -> Any:
    """An open virConnect, or CheckError with the state and words an operator needs.

    `unreachable` is the state when the daemon is not serving: CRITICAL for check_libvirtd,
    whose question that is; UNKNOWN for checks that then simply cannot measure.
    """
    libvirt = libvirt_module()
    if uri.startswith("test:///") and uri != "test:///default":
        path = uri[len("test://"):]
        if not os.path.isfile(path):       # else libxml2 prints an I/O warning on stderr
            raise CheckError(f"cannot use {uri}: no file {path} for libvirt's test driver", UNKNOWN)
    try:
        return libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise connect_error(exc, uri, unreachable, read_only) from None


def connect_error(exc, uri: str, unreachable: int = CRITICAL, read_only: bool = True) -> CheckError:
    """Map a libvirtError raised while connecting to CheckError.

    Unreachable (no socket, refused, no route) is `unreachable`: the daemon is not serving.
    Refused access (permissions, authentication, polkit) is UNKNOWN: the daemon may be fine,
    we just cannot tell. A URI no driver understands is UNKNOWN too: a configuration error.
    """
    import libvirt
    code = exc.get_error_code()
    message = " ".join((exc.get_error_message() or str(exc)).split())
    lowered = message.lower()
    if "permission denied" in lowered or code in (
            libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_CANCELLED,
            libvirt.VIR_ERR_AUTH_UNAVAILABLE, libvirt.VIR_ERR_OPERATION_DENIED,
            libvirt.VIR_ERR_ACCESS_DENIED) or "system bus" in lowered or "polkit" in lowered:
        return CheckError(f"access to {uri} refused: {message}; {_PERMISSION_HINTS[read_only]}",
                          UNKNOWN)
    if "unable to parse uri" in lowered or uri.startswith("test:"):
        # the test driver runs in this process: its failures are its file's, not a daemon's
        return CheckError(f"cannot use {uri}: {message}", UNKNOWN)
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_ARG) and \
            "failed to connect socket" not in lowered:
        return CheckError(f"cannot use {uri}: {message}", UNKNOWN)
    if "no such file" in lowered:
        reason = "socket missing, libvirtd is not running"
    elif "connection refused" in lowered:
        reason = "connection refused, libvirtd is not running (stale socket)"
    else:
        reason = "libvirtd is not answering"
    return CheckError(f"{uri}: {reason} ({message})", unreachable)


def call_error(exc: Exception, what: str, state: int = CRITICAL) -> CheckError:
    """A libvirtError from a call on an open connection, as one line."""
    message = " ".join((exc.get_error_message() or str(exc)).split())
    return CheckError(f"{what} failed: {message}", state)


def version_string(number: int) -> str:
    """libvirt's packed version (major * 1,000,000 + minor * 1,000 + release) as text."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"
