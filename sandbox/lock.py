"""One controller per project at a time.

Each command that changes a fleet (``up``, ``down``, ``roll``, ``rollback``, ``demo``) holds an
exclusive ``flock`` on a file named after the project and the Docker engine, under
``$XDG_RUNTIME_DIR/rolling-sandbox-locks`` (else ``/tmp/rolling-sandbox-locks``). The file holds
the holder's pid, command and start time, so a second command exits 2 naming it. The kernel
drops the lock when the holder exits, however it exits: there is nothing stale to clean up.
A process may take the lock of a project it already holds (``demo`` runs ``up`` then ``roll``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sandbox.config import Settings
from sandbox.errors import UsageError

P = ParamSpec("P")
T = TypeVar("T")
DEFAULT_ENGINE = "unix:///var/run/docker.sock"

_held: dict[Path, int] = {}  # lock file -> how many nested holds this process has on it


def lock_path(project: str) -> Path:
    """The lock file of ``project`` on the engine DOCKER_HOST names (the default socket if unset)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "rolling-sandbox-locks"
    engine = hashlib.sha256(os.environ.get("DOCKER_HOST", DEFAULT_ENGINE).encode()).hexdigest()[:12]
    return base / f"{project}.{engine}.lock"


def _command_line() -> str:
    prog = "sandbox" if sys.argv and sys.argv[0].endswith(("__main__.py", "sandbox")) else Path(sys.argv[0]).name
    return " ".join([prog, *sys.argv[1:]])


@contextmanager
def project_lock(project: str, command: str) -> Iterator[None]:
    """Hold ``project``'s lock for the block; UsageError naming the holder when another process has it."""
    path = lock_path(project)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"project: {project!r} is busy: {_holder(fd)}; wait until it ends") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "line": _command_line(),
                                  "since": time.time()}).encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder wrote it: '`sandbox roll ...` (roll, pid 42) since 12:01:02'."""
    try:
        held = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%H:%M:%S", time.localtime(float(held["since"])))
        return f"`{held['line']}` ({held['command']}, pid {held['pid']}) since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another sandbox command holds it (starting now)"


Command = Callable[Concatenate[Settings, P], Awaitable[T]]


def locked(command: str) -> Callable[[Command[P, T]], Callable[Concatenate[Settings, P], Coroutine[Any, Any, T]]]:
    """Run a command coroutine, whose first argument is its settings, holding its project's lock
    (named ``command``, or its ``kind=`` argument: a ``roll`` of kind rollback is a rollback)."""
    def wrap(fn: Command[P, T]) -> Callable[Concatenate[Settings, P], Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def run(settings: Settings, /, *args: P.args, **kwargs: P.kwargs) -> T:
            with project_lock(settings.project, str(kwargs.get("kind") or command)):
                return await fn(settings, *args, **kwargs)
        return run
    return wrap
