"""Live traffic: Locust, headless, in its own processes.

Locust runs on gevent and monkey-patches the standard library when imported, so
this module never imports it: :class:`LoadRun` starts ``python -m locust`` as a
subprocess and reads the request rows its processes append to one JSON-lines
file (one :class:`~sandbox.results.records.RequestRow` per request started; see
``sandbox/load/recording.py`` for how they are written, for any user class).

Command line used (locust 2.x)::

    <python> -m locust -f <recorder_locustfile.py>,<locustfile> [--processes <workers>]
             --headless -u <users> -r <spawn_rate> --host <url> --only-summary
             --loglevel WARNING --stop-timeout <stop_timeout_s>

``--processes N`` (when ``workers`` > 1) makes the process a master that forks N
workers; the users are spread over the workers. There is no ``--csv``/``--html``
and the web UI is off (``--headless``). The processes run in their own session
and process group (a Ctrl-C at the controller's terminal does not reach them),
with stdin from /dev/null (no keyboard poller), the working directory set to
the rows file's directory (so no ``locust.conf``/``pyproject.toml`` of the
user's current directory is read) and every ``LOCUST_*`` variable removed from
the environment. Their stdout and stderr go to ``<rows>.locust.log``.

Stopping sends SIGTERM to the process group: each process kills the users that
are between requests at once, gives the users waiting for an answer up to
``stop_timeout_s`` to get it (so stopping a healthy load drops nothing), then
kills them; the recorder writes an ``unanswered`` row for each request still
waiting, and the process exits. A group still alive ``stop_timeout_s + grace_s``
after the SIGTERM gets SIGUSR1 (each process writes its in-flight rows and exits
at once) and only ``FLUSH_GRACE_S`` later SIGKILL. Each process that exits by
itself writes its count (requests sent, rows written; ``rows.read_counts``).
:attr:`LoadRun.end` tells how it went; :meth:`LoadRun.alive` tells whether Locust still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from sandbox.errors import TrafficError
from sandbox.load.longlived import (
    DEFAULT_SSE_PATH,
    DEFAULT_WS_PATH,
    ENV_LONG_LIVED_ROWS,
    ENV_SSE_PATH,
    ENV_SSE_USERS,
    ENV_WS_PATH,
    ENV_WS_USERS,
    parse_long_lived_rows,
)
from sandbox.load.rows import (
    ENV_PARENT_PID,
    ENV_READY,
    ENV_ROWS,
    ENV_TIMEOUT,
    ENV_V2_MODE,
    ENV_WAIT_MAX,
    ENV_WAIT_MIN,
    V2Mode,
    parse_rows,
    read_counts,
)
from sandbox.poll import poll
from sandbox.ports import free_port
from sandbox.results.records import LongLivedRow, RequestRow

log = logging.getLogger("sandbox.load.run")

DEFAULT_LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
#: The default users for your own app: GETs of --path values.
PATHS_LOCUSTFILE = Path(__file__).resolve().with_name("paths_locustfile.py")
#: Loaded ahead of every locustfile: installs the recorder (see recording.py).
RECORDER_LOCUSTFILE = Path(__file__).resolve().with_name("recorder_locustfile.py")
#: Loaded after it when ``ws_users`` or ``sse_users`` is above 0.
LONG_LIVED_LOCUSTFILE = Path(__file__).resolve().with_name("longlived_locustfile.py")
#: The most Locust worker processes a run may have.
MAX_WORKERS = 16
#: Seconds between SIGUSR1 ("write what is in flight and exit") and SIGKILL.
FLUSH_GRACE_S = 3.0
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class LoadSettings:
    users: int = 20
    spawn_rate: float = 20.0  # users started per second
    locustfile: Path | None = None  # None = sandbox/load/locustfile.py (paths_locustfile.py with paths)
    paths: tuple[str, ...] = ()  # your own app without a locustfile: GET these (default users)
    v2_mode: V2Mode = "compatible"
    timeout_s: float = 10.0  # client timeout of each request
    # Load-generating processes: 1 = one Locust process; N > 1 = a master and N
    # worker processes (Locust's --processes N).
    workers: int = 1
    # Think time of the default users between requests: uniform in [min, max] s.
    think_s: tuple[float, float] = (0.05, 0.2)
    # At stop, seconds a user may still wait for the answer it is waiting for
    # (Locust's --stop-timeout, whole seconds); still waiting then = unanswered.
    stop_timeout_s: int = 2
    # Users holding a WebSocket / an event stream open beside the HTTP users (``longlived_locustfile.py``).
    ws_users: int = 0
    sse_users: int = 0
    ws_path: str = DEFAULT_WS_PATH  # where the ws users connect (--ws-path)
    sse_path: str = DEFAULT_SSE_PATH  # where the sse users connect (--sse-path)

    @property
    def long_lived_users(self) -> int:
        return self.ws_users + self.sse_users


@dataclass(frozen=True)
class LoadEnd:
    """How a load run ended, for the report and the verdict."""

    exit_code: int | None  # Locust's main process (1 = it saw failed requests; < 0 = a signal)
    died_early: bool  # it (or one of its workers) had exited before the controller asked it to stop
    died_at: float | None  # unix time the controller first saw it gone (when it died early)
    flushed_by_signal: bool  # it did not stop in time and was told to write its rows and exit
    killed: bool  # it ignored that too and was SIGKILLed (rows of requests in flight may be lost)
    sent: int | None = None  # requests its processes sent (each owes one row); None: no process said
    written: int | None = None  # rows its processes wrote

    def to_dict(self) -> dict[str, object]:
        return {
            "exit_code": self.exit_code, "died_early": self.died_early, "died_at": self.died_at,
            "flushed_by_signal": self.flushed_by_signal, "killed": self.killed,
            "sent": self.sent, "written": self.written,
        }  # fmt: skip


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of group ``pgid`` (Linux /proc)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    pids: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count)."""
    return bool(group_members(pgid))


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
        #: one row per long-lived connection (``LongLivedRow``), apart from the request rows
        self.long_lived_path = self.rows_path.with_name(self.rows_path.name + ".long-lived")
        self.start_timeout_s = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._offset = 0
        self._stop_task: asyncio.Task[None] | None = None
        self._stopped = False
        self._died_at: float | None = None
        self._end: LoadEnd | None = None

    # ------------------------------------------------------------------ properties

    @property
    def locustfile(self) -> Path:
        if self.settings.locustfile is None and self.settings.paths:
            return PATHS_LOCUSTFILE.resolve()
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
        """Locust's command line (a multi-process one gets a free port for its master)."""
        s = self.settings
        processes = []
        if s.workers > 1:  # the master's port: a free one, not Locust's fixed 5557 (two runs side by side)
            port = str(free_port())
            processes = ["--processes", str(s.workers), "--master-bind-port", port, "--master-port", port]
        files = [RECORDER_LOCUSTFILE, self.locustfile, *([LONG_LIVED_LOCUSTFILE] if s.long_lived_users else [])]
        return [
            sys.executable, "-m", "locust",
            "-f", ",".join(map(str, files)),
            *processes,
            "--headless",
            "-u", str(s.users + s.long_lived_users),
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
                ENV_WAIT_MIN: f"{self.settings.think_s[0]:g}",
                ENV_WAIT_MAX: f"{self.settings.think_s[1]:g}",
                ENV_PARENT_PID: str(os.getpid()),
                "ROLLING_SANDBOX_PATHS": json.dumps(list(self.settings.paths)),
                ENV_WS_USERS: str(self.settings.ws_users),
                ENV_SSE_USERS: str(self.settings.sse_users),
                ENV_WS_PATH: self.settings.ws_path,
                ENV_SSE_PATH: self.settings.sse_path,
                ENV_LONG_LIVED_ROWS: str(self.long_lived_path),
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
        self._check_settings()
        self.rows_path.parent.mkdir(parents=True, exist_ok=True)
        self.rows_path.write_bytes(b"")  # a fresh file: rows of this run only
        self.long_lived_path.write_bytes(b"")
        read_counts(self.rows_path)  # and no earlier run's counts
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
        try:
            await self._wait_started()
        except BaseException:
            await self.stop(grace_s=2)
            raise

    def _check_settings(self) -> None:
        """Raise TrafficError naming the first setting Locust could not run with."""
        s = self.settings
        if s.users < 1:
            raise TrafficError(f"users must be >= 1, got {s.users}")
        if not s.spawn_rate > 0:
            raise TrafficError(f"spawn_rate must be > 0, got {s.spawn_rate}")
        if not isinstance(s.stop_timeout_s, int) or s.stop_timeout_s < 0:
            raise TrafficError(f"stop_timeout_s must be a whole number >= 0, got {s.stop_timeout_s}")
        if not s.timeout_s > 0:
            raise TrafficError(f"timeout_s must be > 0, got {s.timeout_s}")
        if not 1 <= s.workers <= MAX_WORKERS:
            raise TrafficError(f"workers must be between 1 and {MAX_WORKERS}, got {s.workers}")
        if not 0 <= s.think_s[0] <= s.think_s[1]:
            raise TrafficError(f"think_s must be 0 <= min <= max, got {s.think_s}")
        if s.ws_users < 0 or s.sse_users < 0:
            raise TrafficError(f"ws_users and sse_users must be >= 0, got {s.ws_users} and {s.sse_users}")
        if not self.locustfile.is_file():
            raise TrafficError(f"locustfile not found: {self.locustfile}")

    async def _wait_started(self) -> None:
        """Until Locust says its test started or a first row exists; TrafficError if it exits or stays silent."""
        assert self._proc is not None
        proc = self._proc

        async def started() -> bool | None:
            if self._ready_path.exists() or self._has_rows():
                return True
            if proc.returncode is not None:
                raise TrafficError(f"locust exited with code {proc.returncode} before sending "
                                   f"any request: {self.last_log_line() or 'no output'}")
            return None

        if await poll(started, timeout=self.start_timeout_s, interval=0.05) is None:
            raise TrafficError(f"locust sent no request within {self.start_timeout_s:g} s: "
                               f"{self.last_log_line() or 'no output'}")
        log.info("locust is running (pid %d, %d users)", proc.pid, self.settings.users)

    async def stop(self, grace_s: float = 10) -> None:
        """Stop Locust; every request it started is in the rows file afterwards.

        SIGTERM to Locust's process group (master and workers): each process
        gives waiting users ``settings.stop_timeout_s`` to get their answers,
        writes an ``unanswered`` row for each request still waiting, and exits.
        A process still there ``stop_timeout_s + grace_s`` later gets SIGUSR1
        (write what is in flight, exit at once), and only ``FLUSH_GRACE_S``
        after that SIGKILL. :attr:`end` then says how it ended.

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
        died_early = proc.returncode is not None or self._died_at is not None
        if proc.returncode is not None:
            self._note_death()
            log.warning("locust had already exited (code %s): %s",
                        proc.returncode, self.last_log_line() or "no output")
        flushed = killed = False
        try:
            self._signal_group(signal.SIGTERM)
            if not await self._wait_group(self.settings.stop_timeout_s + grace_s):
                log.warning("locust did not stop %g s after SIGTERM; asking it to write what is "
                            "in flight and exit", self.settings.stop_timeout_s + grace_s)
                flushed = True
                self._signal_group(signal.SIGUSR1)
                if not await self._wait_group(FLUSH_GRACE_S):
                    log.warning("locust did not exit %g s after SIGUSR1; killing it", FLUSH_GRACE_S)
                    killed = True
                    self._signal_group(signal.SIGKILL)
                    await self._wait_group(FLUSH_GRACE_S)
            await proc.wait()
            log.info("locust exited with code %s", proc.returncode)
        finally:
            counts = read_counts(self.rows_path) or {}
            self._end = LoadEnd(exit_code=proc.returncode, died_early=died_early, died_at=self._died_at,
                                flushed_by_signal=flushed, killed=killed, sent=counts.get("sent"),
                                written=counts.get("written"))
            self._stopped = True
            self._close_log()
            self._ready_path.unlink(missing_ok=True)

    def _signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to Locust's process group (its own session: master and workers)."""
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def _wait_group(self, timeout_s: float) -> bool:
        """Wait until no live process is left in Locust's group; False on timeout."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.returncode is not None and not group_alive(self._proc.pid):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ liveness

    def alive(self) -> bool:
        """True while Locust runs whole: its main process and, with workers, every worker.

        Call it during the rollout (it reads /proc: a few ms). The first call
        that finds a process gone notes the time (:attr:`LoadEnd.died_at`).
        """
        if self._proc is None:
            return False
        if self._proc.returncode is None and (
            self.settings.workers == 1 or len(group_members(self._proc.pid)) > self.settings.workers
        ):
            return True
        self._note_death()
        return False

    def _note_death(self) -> None:
        if self._died_at is None and not self._stopped and self._stop_task is None:
            self._died_at = time.time()
            what = "exited" if self.returncode is not None else "lost a worker process"
            log.warning("locust %s by itself (code %s): %s",
                        what, self.returncode, self.last_log_line() or "no output")

    @property
    def end(self) -> LoadEnd | None:
        """How the run ended; None until :meth:`stop` has finished."""
        return self._end

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

    def long_lived_rows(self) -> list[LongLivedRow]:
        """One row per long-lived connection that has ended (all of them once Locust has stopped)."""
        try:
            data = self.long_lived_path.read_bytes()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        return parse_long_lived_rows(data[: end + 1].splitlines()) if end >= 0 else []

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
