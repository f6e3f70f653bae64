"""The pid file (``--pid-file FILE``): one server per file, and who it is.

Written once the sockets are bound (so a server that cannot listen leaves no
file), before privileges are dropped (so it may live in root's ``/run``), and
removed at exit.  A file left by a server that died (its PID is gone) is
replaced; a file naming a live process is refused, so two servers never share
one.  The file is also locked (``flock``) for the server's life: two servers
started at the same instant cannot both take it, and the lock, unlike a PID,
is never reused by an unrelated process.

Anything at the path that is not a pid file (text other than a number) is
refused and never overwritten: as root, ``--pid-file /etc/passwd`` must not
destroy it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os

from tcpkit.errors import Error

log = logging.getLogger("tcpkit")
MAX_SIZE = 64  # a pid file holds one number; anything longer is not one


class PidFileError(Error):
    """The pid file cannot be taken; the message is for the user (exit 1)."""


class PidFile:
    """A taken pid file; :meth:`release` removes it (only in the process that took it)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._inode = os.fstat(fd).st_ino
        self._owner = os.getpid()

    @classmethod
    def take(cls, path: str) -> PidFile:
        """Create (or replace a stale) ``path`` holding this process's PID."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PidFileError(f"cannot write pid file {path}: {exc.strerror or exc}") from None
        try:
            _lock(fd, path)
            _check_stale(fd, path)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def warn_if_unremovable(self) -> None:
        """Say now (after a privilege drop) if the file cannot be removed at exit."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.access(directory, os.W_OK | os.X_OK):
            log.warning("pid file %s will stay after exit: its directory is not writable "
                        "by this user (a stale pid file is replaced at the next start)",
                        self.path, extra={"event": "pid_file"})

    def release(self) -> None:
        """Remove the file if it is still ours; forked children leave it alone."""
        if os.getpid() != self._owner or self._fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path, follow_symlinks=False).st_ino == self._inode:
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PidFileError(f"cannot lock pid file {path}: {exc.strerror}") from None
        pid = _read_pid(fd, path)
        raise PidFileError(f"pid file {path} is held by a running server"
                           f"{f' (PID {pid})' if pid else ''}") from None


def _check_stale(fd: int, path: str) -> None:
    """Refuse unless the file is new, empty, or names a process that is gone."""
    pid = _read_pid(fd, path)
    if pid is None or pid == os.getpid():  # new, or a previous life of this PID
        return
    if _alive(pid):
        raise PidFileError(f"pid file {path} names a running process (PID {pid}); "
                           f"is tcpkit already running?")
    log.info("replacing stale pid file %s (PID %d is gone)", path, pid,
             extra={"event": "pid_file"})


def _read_pid(fd: int, path: str) -> int | None:
    text = os.pread(fd, MAX_SIZE + 1, 0)
    if not text.strip():
        return None
    if len(text) > MAX_SIZE or not text.strip().isdigit() or int(text) <= 0:
        raise PidFileError(f"{path} exists and is not a pid file; not overwriting it")
    return int(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
