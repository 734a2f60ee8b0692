"""Live traffic: Locust, headless, in its own process.

Locust runs on gevent and monkey-patches the standard library when imported, so
this module never imports it: :class:`LoadRun` starts
``python -m locust`` as a subprocess and reads the request rows it appends to a
JSON-lines file (one :class:`~sandbox.results.records.RequestRow` per request started;
see ``sandbox/load/locustfile.py`` for how they are written and how a custom
locustfile gets them).

Command line used (locust 2.x)::

    <python> -m locust -f <locustfile> --headless -u <users> -r <spawn_rate>
             --host <url> --only-summary --loglevel WARNING
             --stop-timeout <stop_timeout_s>

with no ``--csv``/``--html`` and the web UI off (``--headless``). The process
runs in its own session (a Ctrl-C at the controller's terminal does not reach
it), with stdin from /dev/null (no keyboard poller), its working directory set
to the rows file's directory (so no ``locust.conf``/``pyproject.toml`` of the
user's current directory is read) and every ``LOCUST_*`` variable removed from
its environment. Its stdout and stderr go to ``<rows>.locust.log``.

Stopping sends SIGTERM: Locust kills the users that are between requests at
once, gives the users waiting for an answer up to ``stop_timeout_s`` to get it
(so stopping a healthy load drops nothing), then kills them; the recorder
writes an ``unanswered`` row for each request still waiting, and Locust exits.
If it has not exited ``stop_timeout_s + grace_s`` after the SIGTERM it is
killed (rows of requests still in flight are then lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from sandbox.errors import SandboxError
from sandbox.load.rows import (
    ENV_PARENT_PID,
    ENV_READY,
    ENV_ROWS,
    ENV_TIMEOUT,
    ENV_V2_MODE,
    parse_rows,
)
from sandbox.results.records import RequestRow

log = logging.getLogger("sandbox.load.run")

DEFAULT_LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent


class TrafficError(SandboxError):
    """The load generator could not be started, or died."""


@dataclass(frozen=True)
class LoadSettings:
    users: int = 20
    spawn_rate: float = 20.0  # users started per second
    locustfile: Path | None = None  # None = sandbox/load/locustfile.py
    v2_mode: Literal["compatible", "breaking"] = "compatible"
    timeout_s: float = 10.0  # client timeout of each request
    # At stop, seconds a user may still wait for the answer it is waiting for
    # (Locust's --stop-timeout, whole seconds); still waiting then = unanswered.
    stop_timeout_s: int = 2


class LoadRun:
    """Locust headless in a subprocess, writing rows to ``rows_path``.

    ``start_timeout_s`` bounds :meth:`start`: Locust must have started its test
    (or written a row) by then.
    """

    def __init__(
        self,
        url: str,
        settings: LoadSettings,
        rows_path: Path,
        *,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.settings = settings
        self.rows_path = Path(rows_path).resolve()
        self.log_path = self.rows_path.with_name(self.rows_path.name + ".locust.log")
        self._ready_path = self.rows_path.with_name(self.rows_path.name + ".ready")
        self.start_timeout_s = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._offset = 0
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = False

    # ------------------------------------------------------------------ properties

    @property
    def locustfile(self) -> Path:
        return (self.settings.locustfile or DEFAULT_LOCUSTFILE).resolve()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """Locust's exit code once it has exited (0, or 1 when it saw failed requests)."""
        return self._proc.returncode if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "locust",
            "-f", str(self.locustfile),
            "--headless",
            "-u", str(s.users),
            "-r", f"{s.spawn_rate:g}",
            "--host", self.url,
            "--only-summary",
            "--loglevel", "WARNING",
            "--stop-timeout", str(s.stop_timeout_s),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
        pythonpath = [str(_PACKAGE_PARENT)]
        if env.get("PYTHONPATH"):
            pythonpath.append(env["PYTHONPATH"])
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1",
                ENV_ROWS: str(self.rows_path),
                ENV_READY: str(self._ready_path),
                ENV_V2_MODE: self.settings.v2_mode,
                ENV_TIMEOUT: f"{self.settings.timeout_s:g}",
                ENV_PARENT_PID: str(os.getpid()),
            }
        )
        return env

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Start Locust and wait until its test has started (or a first row exists).

        Raises :class:`TrafficError` (with Locust's last log line) when the
        locustfile is missing, Locust exits early, or nothing happens within
        ``start_timeout_s``.
        """
        if self._proc is not None:
            raise TrafficError("this load run was already started")
        s = self.settings
        if s.users < 1:
            raise TrafficError(f"users must be >= 1, got {s.users}")
        if not s.spawn_rate > 0:
            raise TrafficError(f"spawn_rate must be > 0, got {s.spawn_rate}")
        if not isinstance(s.stop_timeout_s, int) or s.stop_timeout_s < 0:
            raise TrafficError(
                f"stop_timeout_s must be a whole number >= 0, got {s.stop_timeout_s}"
            )
        if not s.timeout_s > 0:
            raise TrafficError(f"timeout_s must be > 0, got {s.timeout_s}")
        locustfile = self.locustfile
        if not locustfile.is_file():
            raise TrafficError(f"locustfile not found: {locustfile}")

        self.rows_path.parent.mkdir(parents=True, exist_ok=True)
        self.rows_path.write_bytes(b"")  # a fresh file: rows of this run only
        self._ready_path.unlink(missing_ok=True)
        self._offset = 0
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()

        cmd = self.command()
        log.info("starting locust: %s", " ".join(cmd))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=self._log_file,
                cwd=str(self.rows_path.parent),
                env=self.environment(),
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise TrafficError(f"could not start locust: {exc}") from exc

        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                if self._ready_path.exists() or self._has_rows():
                    log.info("locust is running (pid %d, %d users)", self._proc.pid, s.users)
                    return
                if self._proc.returncode is not None:
                    raise TrafficError(
                        f"locust exited with code {self._proc.returncode} before sending "
                        f"any request: {self.last_log_line() or 'no output'}"
                    )
                if time.monotonic() > deadline:
                    raise TrafficError(
                        f"locust sent no request within {self.start_timeout_s:g} s: "
                        f"{self.last_log_line() or 'no output'}"
                    )
                await asyncio.sleep(0.05)
        except BaseException:
            await self.stop(grace_s=2)
            raise

    async def stop(self, grace_s: float = 10) -> None:
        """SIGTERM Locust (it records what is in flight and exits).

        Locust gives waiting users ``settings.stop_timeout_s`` to get their
        answers; it is SIGKILLed ``stop_timeout_s + grace_s`` after the SIGTERM.

        Idempotent and safe to call concurrently; a no-op before :meth:`start`.
        """
        if self._proc is None:
            return
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace_s: float) -> None:
        proc = self._proc
        assert proc is not None
        deadline = self.settings.stop_timeout_s + grace_s
        try:
            if proc.returncode is not None:
                log.warning(
                    "locust had already exited (code %s): %s",
                    proc.returncode,
                    self.last_log_line() or "no output",
                )
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=deadline)
            except TimeoutError:
                log.warning("locust did not exit %g s after SIGTERM; killing it", deadline)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            log.info("locust exited with code %s", proc.returncode)
        finally:
            self._stopped = True
            self._close_log()
            self._ready_path.unlink(missing_ok=True)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> LoadRun:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ rows

    def _has_rows(self) -> bool:
        try:
            return self.rows_path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def new_rows(self) -> list[RequestRow]:
        """Rows appended since the last call (complete lines only; a partial last line waits)."""
        try:
            with open(self.rows_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        return parse_rows(chunk[: end + 1].splitlines())

    def all_rows(self) -> list[RequestRow]:
        """Every row in the file (a partial last line is ignored while Locust runs)."""
        try:
            data = self.rows_path.read_bytes()
        except FileNotFoundError:
            return []
        if not self.running:
            return parse_rows(data.splitlines())
        end = data.rfind(b"\n")
        return parse_rows(data[: end + 1].splitlines()) if end >= 0 else []

    def last_log_line(self) -> str:
        """The last non-empty line Locust wrote to stdout/stderr (for error messages)."""
        try:
            data = self.log_path.read_bytes()[-8192:]
        except OSError:
            return ""
        for line in reversed(data.decode("utf-8", "replace").splitlines()):
            if line.strip():
                return line.strip()
        return ""
