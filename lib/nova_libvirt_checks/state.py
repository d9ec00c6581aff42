"""State kept between runs (previous counter samples, cached metadata, Keystone tokens).

One private directory per user: created 0700, refused when it is a symlink or belongs to
someone else. Files are written to a temporary file and renamed into place under an exclusive
lock, so a reader sees the old or the new content, never half of one; concurrent runs merge
their updates instead of overwriting each other. A file that cannot be read or parsed means
a fresh start, with a note, never a failed check (JSON nested too deeply for the parser
included). A file that cannot be written leaves the old one intact. What a check reads back
from a usable file it still validates field by field: the file may be damaged or edited.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from typing import Callable, Optional

MAX_STATE_BYTES = 64 * 1024 * 1024
ENV_DIR = "NOVA_LIBVIRT_CHECKS_STATE_DIR"


class StateError(Exception):
    """The state cannot be used; the message says why, in one line."""


def default_dir() -> str:
    return os.environ.get(ENV_DIR) or f"/var/tmp/nova-libvirt-checks-{os.getuid()}"


def private_dir(path: str) -> str:
    """Create `path` (one level) 0700 if missing; refuse it unless it is ours and private."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateError(f"cannot create state directory {path}: {exc.strerror}") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise StateError(f"refusing state directory {path}: it is a symlink")
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"refusing state directory {path}: not a directory")
    if info.st_uid != os.geteuid():
        raise StateError(f"refusing state directory {path}: owned by uid {info.st_uid}, "
                         f"not by us (uid {os.geteuid()})")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def file_for(kind: str, key: str, directory: Optional[str] = None) -> str:
    """The state file of one check (`kind`) for one peer (`key`, e.g. a libvirt URI)."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return os.path.join(directory or default_dir(), f"{kind}-{digest}.json")


class StateFile:
    """A JSON document on disk. `load()` never raises; `update()` raises StateError."""

    def __init__(self, path: str, lock_wait: float = 2.0) -> None:
        self.path = path
        self.lock_wait = lock_wait
        self.notes = []

    def load(self) -> dict:
        """The stored document, or {} (with a note in self.notes) when there is none usable."""
        try:
            private_dir(os.path.dirname(self.path))
            return self._read()
        except FileNotFoundError:
            return {}
        except StateError as exc:
            self.notes.append(str(exc))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.notes.append(f"state file {self.path} unusable ({reason[:80]}); starting afresh")
        return {}

    def _read(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(f"refusing state file {self.path}: it is a symlink") from None
            raise
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise StateError(f"refusing state file {self.path}: not a regular file of ours")
            raw = handle.read(MAX_STATE_BYTES + 1)
        if len(raw) > MAX_STATE_BYTES:
            raise ValueError("too large")
        try:
            document = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document

    def update(self, change: Callable[[dict], dict]) -> None:
        """Under the lock: read the current document, apply `change(document) -> document`,
        and replace the file atomically."""
        directory = private_dir(os.path.dirname(self.path))
        try:
            lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600)
        except OSError as exc:
            raise StateError(f"state not saved: {self.path}.lock: {exc.strerror}") from None
        try:
            self._lock(lock_fd)
            try:
                current = self._read()
            except (OSError, ValueError, StateError):
                current = {}
            document = change(current)
            self._write(directory, document)
        finally:
            os.close(lock_fd)

    def _lock(self, fd):
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(f"state not saved: {self.path} stayed locked by another run "
                                     f"for {self.lock_wait:g} s") from None
                time.sleep(0.005)

    def _write(self, directory, document):
        data = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        tmp_path = None
        try:
            fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp_path, self.path)
        except OSError as exc:
            if tmp_path:
                try:
                    os.unlink(tmp_path)
                except OSError:
                    pass
            raise StateError(f"state not saved: {exc.strerror or exc}") from None


def boot_id() -> str:
    """Identifies this boot: time.monotonic() values are comparable only within one."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"
