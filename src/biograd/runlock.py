"""One process at a time per run directory.

A run directory is trained by one process: a second ``biograd train`` or ``reproduce`` that
reaches the same run while the first is still training it (two reproductions of one store
without disjoint ``--only``, or the same command started twice) would otherwise restart it
with ``overwrite`` (a started run without a checkpoint is restarted) and the two would write
the same files. :func:`hold` takes a lock file beside the run directory,
``.NAME.lock`` (beside, not inside: an overwrite removes the directory), created atomically
with ``O_EXCL`` and holding the owner's pid, host and start time; it is removed when training
returns or raises. A process killed by a signal leaves it behind: a lock whose process no
longer exists on this host is taken over with a warning; one from another host (a shared
filesystem) is never guessed about: the error says which file to delete once that process is
known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from biograd.core.errors import BiogradError


class RunBusyError(BiogradError, RuntimeError):
    """The run directory is being trained by another process."""


def lock_path(run_dir: Path) -> Path:
    """The lock file of ``run_dir``: ``.NAME.lock`` in its parent folder."""
    return run_dir.parent / f".{run_dir.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds ``run_dir``'s lock (``pid``, ``host``, ``since``), or None when nobody does:
    no lock file, or one left by a process that no longer exists on this host."""
    path = lock_path(run_dir)
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written this instant, or garbled: count it as held
        return {"pid": None, "host": None, "since": None}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
            and not _alive(owner["pid"]):
        return None
    return owner


def _busy_message(run_dir: Path, owner: dict[str, Any]) -> str:
    since = owner.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return (f"run {str(run_dir)!r} is being trained by another process (pid {owner.get('pid')} "
            f"on {owner.get('host')}, since {when}); wait for it to finish, or give the two "
            f"reproductions disjoint --only patterns; if that process is gone, delete "
            f"{str(lock_path(run_dir))!r}")


@contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block; :class:`RunBusyError` when another live
    process holds it. A stale lock (its process gone, same host) is replaced."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = holder(run_dir)
            if owner is not None:
                raise RunBusyError(_busy_message(run_dir, owner)) from None
            print(f"biograd: warning: taking over {str(path)!r}, left by a process that no "
                  f"longer runs", file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # another process took it between our removal and our retry
        raise RunBusyError(_busy_message(run_dir, holder(run_dir) or {}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
