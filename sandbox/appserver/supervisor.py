"""PID 1 of an app container: runs ``python3 -m appserver.server`` as a child.

- SIGTERM / SIGINT: forward SIGTERM to the child, wait for it, exit with its code.
- SIGHUP: graceful reload: SIGTERM the child, wait for it, then start a new child
  from whatever code ``/srv/app`` holds now (in-place rollouts swap it first).
- Before each start, ``/srv/app/env.json`` (a JSON object of strings), if present,
  is merged into the child's environment.
- A child that exits by itself (not during a reload) ends the supervisor with
  the child's exit code (128 + signal number if a signal killed it).

As PID 1 it also reaps any orphaned processes. Standard library only.

``APP_SHELL_PID1=1`` reproduces a shell-form ``CMD`` (or an entrypoint script
without ``exec``): the supervisor replaces itself with
``/bin/sh -c 'python3 -m appserver.supervisor; exit $?'``, so a shell is PID 1
and runs the supervisor as its child. The shell forwards no signal (as PID 1 it
ignores those it has no handler for): a stop never reaches the app, and the
engine kills the container at the stop timeout; SIGHUP reloads are lost too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("appserver.supervisor")

WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
CHILD_ARGV = ("-m", "appserver.server")
SHELL_PID1 = "APP_SHELL_PID1"
SHELL = "/bin/sh"


def flag(env: Mapping[str, str], name: str) -> bool:
    """Whether ``env[name]`` says yes (1, true, yes, on)."""
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def child_env(app_dir: Path, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus the string entries of ``app_dir/env.json`` (ignored if absent or bad)."""
    env = dict(base)
    path = app_dir / "env.json"
    try:
        extra = json.loads(path.read_text())
    except FileNotFoundError:
        return env
    except (OSError, ValueError) as exc:
        log.error("ignoring %s: %s", path, exc)
        return env
    if not isinstance(extra, dict):
        log.error("ignoring %s: not a JSON object", path)
        return env
    env.update({str(k): str(v) for k, v in extra.items()})
    return env


def exit_code(status: int) -> int:
    """A shell-style exit code from a ``waitpid`` status (128 + N for signal N)."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


class Supervisor:
    """Starts, reloads and stops the server child; see the module docstring."""

    def __init__(self, app_dir: Path, argv: tuple[str, ...] = CHILD_ARGV) -> None:
        self.app_dir = app_dir
        self.argv = (sys.executable, *argv)
        self.child = 0
        self.stopping = False
        self.reloading = False

    def spawn(self) -> None:
        """Start a child with default signal handling; raises OSError if it cannot."""
        env = child_env(self.app_dir, os.environ)
        self.child = os.posix_spawn(
            self.argv[0], list(self.argv), env, setsigmask=(), setsigdef=WATCHED
        )
        log.info("started server pid %d", self.child)

    def on_signal(self, sig: int) -> int | None:
        """Handle one signal; returns the supervisor's exit code once it should exit."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                self.stopping = True
                log.info("stopping: SIGTERM to server pid %d", self.child)
                self._signal_child(signal.SIGTERM)
        elif sig == signal.SIGHUP:
            if not (self.stopping or self.reloading):
                self.reloading = True
                log.info("reloading: SIGTERM to server pid %d", self.child)
                self._signal_child(signal.SIGTERM)
        elif sig == signal.SIGCHLD:
            return self._reap()
        return None

    def _signal_child(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone; SIGCHLD follows
            os.kill(self.child, sig)

    def _reap(self) -> int | None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            if pid != self.child:
                continue  # an orphan inherited by PID 1
            code = exit_code(status)
            if self.reloading and not self.stopping:
                log.info("server pid %d exited %d; starting the new code", pid, code)
                self.reloading = False
                self.spawn()
                continue
            log.info("server pid %d exited %d", pid, code)
            return code

    def run(self) -> int:
        """Run until the child is gone for good; returns the exit code to use."""
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        for sig in WATCHED:  # PID 1 only receives signals it has a handler for
            signal.signal(sig, lambda *_: None)
        self.spawn()
        while True:
            code = self.on_signal(signal.sigwaitinfo(WATCHED).si_signo)
            if code is not None:
                return code


def main() -> int:
    """Entry point of ``python3 -m appserver.supervisor``; returns the exit code."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s supervisor: %(message)s"
    )
    if flag(os.environ, SHELL_PID1):
        exec_under_shell()
    app_dir = Path(os.environ.get("APP_DIR", "/srv/app"))
    if app_dir.is_dir():
        os.chdir(app_dir)
    return Supervisor(app_dir).run()


def exec_under_shell() -> None:
    """Become ``/bin/sh -c '<this supervisor>; exit $?'`` (``APP_SHELL_PID1``; see the module
    docstring); raises OSError if the shell cannot be started."""
    env = {k: v for k, v in os.environ.items() if k != SHELL_PID1}
    script = f"{shlex.quote(sys.executable)} -m appserver.supervisor; exit $?"
    log.warning("%s=1: a shell is now PID 1 and forwards no signal: %s -c %r", SHELL_PID1, SHELL, script)
    logging.shutdown()
    os.execve(SHELL, [SHELL, "-c", script], env)


def exit_now(code: int) -> None:
    """Flush the logs and leave without the interpreter's teardown: once drained there is nothing
    left to clean up, and the teardown cost up to 0.8 s per stop in a busy container."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
