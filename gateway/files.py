"""Writing the deployment's own files durably: a new file, or a file replaced atomically.

Why one module: ``gateway keys rotate`` (keys, certificates, the config) and ``gateway keys
revoke`` (the CRL) change files a running or restarting gateway reads. Each must be complete on
disk before it is used, and a replacement must be all old or all new even across a crash: write
a temporary file, fsync it, rename it over the old one, fsync the directory (the rename itself
is durable only then).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Busy", "exclusive", "replace_durably", "write_new"]


class Busy(Exception):
    """Another command holds the deployment's lock (:func:`exclusive`)."""


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the deployment directory's lock while a command reads, edits and rewrites its files.

    Why: ``gateway keys rotate`` and ``gateway keys revoke`` read a file, change it and write it
    back. Two at once (two operators, a cron job beside a person) each wrote its edit over the
    other's: a revocation silently lost from the CRL, or a retired key dropped from the config.
    ``flock`` on the directory itself leaves no lock file behind, and the kernel releases it
    when the process dies. Raises :class:`Busy` at once rather than queueing behind the other.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(
                f"another `gateway keys` command is changing {directory}; run this one when it "
                "is done"
            ) from None
        yield
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, *, mode: int, durable_name: bool = True) -> None:
    """Create ``path`` with ``mode`` from its first byte (never overwrite: an existing key file
    may be in use), write ``data`` and fsync it, then its directory (``durable_name``).

    Why the directory: fsync of the file makes its bytes durable, not its name. ``gateway keys
    rotate`` writes the new key and certificate, then points the config at them; without the
    directory fsync a crash could keep the new config and lose the files it names.
    ``durable_name=False`` for a temporary file that is renamed (and its directory fsynced) next.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if durable_name:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_durably(
    path: Path, data: bytes, *, tag: str, mode: int, final_mode: int | None = None
) -> None:
    """Replace ``path`` by ``data`` atomically and durably, through ``.<name>.<tag>``.

    The temporary file is created with ``mode``; ``final_mode``, when given, is set before the
    rename (to keep a file's own mode exactly, whatever the umask).
    """
    tmp = path.with_name(f".{path.name}.{tag}")
    tmp.unlink(missing_ok=True)
    write_new(tmp, data, mode=mode, durable_name=False)
    if final_mode is not None:
        os.chmod(tmp, final_mode)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
