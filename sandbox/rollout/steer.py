"""Steering a running rollout from another terminal: pause, resume, abort, promote.

The controller of a ``roll`` (``rollback``, ``demo``) serves a Unix socket next to its project's
lock (:func:`socket_path`), mode 0600, on its own asyncio loop: only its user (and root) can
connect, and each request names its sender by the kernel's peer credentials (pid, user), not by
what it says. One JSON line in (``{"command": "pause"}``), one JSON line out: the state the
command left, at once (it never waits for a step).

:class:`Steering` is the state machine; the executor awaits :meth:`Steering.gate` before each
step, so a pause holds *between* steps, never inside one, with the fleet as it is and the load
balancer serving. ``abort`` raises :class:`~sandbox.errors.Aborted` at the next gate (the step
under way finishes first), which the rehearsal rolls back with the same care as a failed rollout.
``promote`` ends a pause and skips every later one. A pause longer than ``pause_timeout_s`` ends
as ``on_pause_timeout`` says: abort (the default) or resume.

States: ``running``, ``paused``, ``aborting`` (asked, the step under way finishing),
``rolling-back``, ``stopping`` (Ctrl-C, or an abort of a rollback: the batch under way finishes),
``ended``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sandbox.errors import Aborted, SandboxError, UsageError
from sandbox.lock import lock_path
from sandbox.rollout import plan as planner

log = logging.getLogger("sandbox.rollout.steer")

Command = Literal["pause", "resume", "abort", "promote", "state"]
COMMANDS: tuple[Command, ...] = ("pause", "resume", "abort", "promote", "state")
State = Literal["running", "paused", "aborting", "rolling-back", "stopping", "ended"]
ANSWER_TIMEOUT_S = 5.0  # the controller answers from its loop at once; this only bounds a stuck one
MAX_REQUEST = 4096


def socket_path(project: str) -> Path:
    """The control socket of ``project``'s running rollout: its lock file's name, ``.sock``."""
    return lock_path(project).with_suffix(".sock")


@dataclass(frozen=True)
class Who:
    """Who asked: a process (by its peer credentials), the plan, or the pause timeout."""

    user: str
    pid: int | None = None

    def __str__(self) -> str:
        return f"{self.user} (pid {self.pid})" if self.pid is not None else self.user

    def as_json(self) -> dict[str, Any]:
        return {"user": self.user, "pid": self.pid}


PLAN = Who("the plan (--pause-after-batch)")
PLAN_MIXED = Who("the plan (--pause-at-mixed)")
TIMEOUT = Who("--pause-timeout")
Emit = Callable[[str, dict[str, object]], None]  # (phase, detail): an event of the rollout


class Steering:
    """The steering state of one rollout; answers are dicts (``ok``, ``state``, ``message``, ...)."""

    def __init__(self, *, pause_at: int | None = None, pause_after_batch: int | None = None,
                 pause_timeout_s: float = 600.0, on_pause_timeout: str = "abort", can_roll_back: bool = True,
                 planned: Who = PLAN, stop: asyncio.Event | None = None, emit: Emit | None = None,
                 say: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.pause_at = pause_at  # the step index the plan pauses before (planner.pause_point)
        self.pause_after_batch = pause_after_batch
        self.planned = planned  # who the plan's pause is by: PLAN (--pause-after-batch) or PLAN_MIXED
        self.pause_timeout_s = pause_timeout_s
        self.on_pause_timeout = on_pause_timeout
        self.can_roll_back = can_roll_back  # False (a rollback itself): abort stops at the batch's end
        self.stop = stop if stop is not None else asyncio.Event()
        self._emit = emit
        self._say = say
        self._clock = clock
        self.state: State = "running"
        self.promoted = False
        self.promotions = 0  # promote commands taken (a manual canary step ends at each)
        self.promote_note: str | None = None  # what a promote does, when not "no more pauses" (a manual canary)
        self.paused_by: Who | None = None
        self.paused_since: float | None = None  # clock()
        self.paused_s = 0.0  # time spent paused, all pauses
        self.aborted_by: Who | None = None
        self.step: int | None = None  # index of the next step to run (or the one running)
        self.batch: int | None = None  # its batch
        self._changed = asyncio.Event()

    # -- the commands --------------------------------------------------------------------------
    def handle(self, command: str, who: Who) -> dict[str, Any]:
        """Apply ``command`` and answer with the state it left."""
        if command == "pause":
            return self.pause(who)
        if command == "resume":
            return self.resume(who)
        if command == "abort":
            return self.abort(who)
        if command == "promote":
            return self.promote(who)
        if command == "state":
            return self.answer(True, self.describe())
        return self.answer(False, f"unknown command {command!r}; one of {', '.join(COMMANDS)}")

    def pause(self, who: Who) -> dict[str, Any]:
        if self.state == "paused":
            return self.answer(True, f"already paused by {self.paused_by}")
        if self.state != "running":
            return self.answer(False, f"cannot pause: {self.describe()}")
        self.state, self.paused_by, self.paused_since = "paused", who, self._clock()
        self._event("paused", who, reason="plan" if who == self.planned else "request")
        self._changed.set()
        return self.answer(True, f"by {who}, holding before the " + (
            "next step" if self.step is not None else "first step"))

    def resume(self, who: Who) -> dict[str, Any]:
        if self.state != "paused":
            return self.answer(self.state == "running", f"not paused: {self.describe()}")
        self._unpause(who, "resumed")
        return self.answer(True, f"resumed by {who}")

    def abort(self, who: Who) -> dict[str, Any]:
        if self.state in ("aborting", "rolling-back", "stopping"):
            return self.answer(True, f"already {self.describe()}")
        if self.state == "ended":
            return self.answer(False, "the rollout has ended")
        if self.state == "paused":
            self._unpause(who, None)
        self.aborted_by = who
        if self.can_roll_back:
            self.state = "aborting"
            self._event("abort", who)
            self._changed.set()
            return self.answer(True, f"asked by {who}: rolls back once the step under way is done")
        self.state = "stopping"
        self._event("abort", who, detail="a rollback is not rolled back: it stops once its batch is done")
        self.stop.set()
        self._changed.set()
        return self.answer(True, f"asked by {who}: the batch under way finishes, then it stops")

    def promote(self, who: Who) -> dict[str, Any]:
        if self.state not in ("running", "paused"):
            return self.answer(False, f"cannot promote: {self.describe()}")
        self.promoted = True
        self.promotions += 1
        self._event("promote", who)
        if self.state == "paused":
            self._unpause(who, "resumed")
        self._changed.set()
        return self.answer(True, f"promoted by {who}: {self.promote_note or 'no more pauses, running to the end'}")

    def answer(self, ok: bool, message: str) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": ok, "state": self.state, "message": message, "promoted": self.promoted,
                               "step": self.step, "batch": self.batch}
        if self.state == "paused" and self.paused_by is not None:
            out["paused_by"] = self.paused_by.as_json()
            out["paused_s"] = round(self._clock() - (self.paused_since or self._clock()), 1)
            out["pause_timeout_s"] = self.pause_timeout_s
        return out

    def describe(self) -> str:
        """The state in words: 'paused by alice (pid 42) for 12 s, before batch 2'."""
        where = f", before batch {self.batch}" if self.batch is not None else ""
        if self.state == "paused":
            held = self._clock() - (self.paused_since or self._clock())
            return f"paused by {self.paused_by} for {held:.0f} s{where}"
        if self.state == "running":
            return "running" + (" (promoted)" if self.promoted else "") + where
        if self.state == "aborting":
            return f"aborting (asked by {self.aborted_by}): rolls back once the step under way is done"
        return self.state

    # -- the executor's side -------------------------------------------------------------------
    async def gate(self, step: planner.Step, index: int) -> None:
        """Awaited before step ``index``: returns to run it; holds while paused; raises Aborted
        after an abort (or a pause timeout that aborts). Returns at once after a stop request."""
        self.step, self.batch = index, step.batch_no
        if self.stop.is_set() or self.state in ("rolling-back", "stopping", "ended"):
            return
        if index == self.pause_at and not self.promoted and self.state == "running":
            self.pause(self.planned)
            if self._say is not None:
                where = ("at the first moment both versions serve, as planned (--pause-at-mixed; a request "
                         "with header X-Sandbox-Version: NAME reaches version NAME)" if self.planned == PLAN_MIXED
                         else f"after batch {self.pause_after_batch} as planned")
                self._say(f"paused {where}: `sandbox resume` goes on, `sandbox abort` rolls back (after "
                          f"{self.pause_timeout_s:g} s: {self.on_pause_timeout})")
        await self.wait_while_paused()
        if self.state == "paused" and self.stop.is_set():  # Ctrl-C while paused: the batch winds down
            self._unpause(Who("Ctrl-C"), None)
            self.state = "stopping"
        if self.state == "aborting":
            raise Aborted(f"aborted by {self.aborted_by}")

    async def wait_while_paused(self) -> None:
        """Hold while paused; a pause longer than ``pause_timeout_s`` ends as ``on_pause_timeout`` says.
        Returns at once after a stop request (also awaited by a canary's hold: ``rollout.canary``)."""
        while self.state == "paused" and not self.stop.is_set():
            self._changed.clear()
            left = self.pause_timeout_s - (self._clock() - (self.paused_since or self._clock()))
            if left <= 0:
                self._timed_out()
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wait_changed()

    async def _wait_changed(self) -> None:
        stop = asyncio.ensure_future(self.stop.wait())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({stop, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            changed.cancel()

    def _timed_out(self) -> None:
        held = round(self._clock() - (self.paused_since or self._clock()), 1)
        if self._say is not None:
            self._say(f"paused for {held:g} s, past --pause-timeout {self.pause_timeout_s:g} s: "
                      f"{'aborting' if self.on_pause_timeout == 'abort' else 'resuming'}")
        self._event("pause-timeout", TIMEOUT, paused_s=held, then=self.on_pause_timeout)
        if self.on_pause_timeout == "abort":
            self.abort(TIMEOUT)
        else:
            self._unpause(TIMEOUT, "resumed")

    def rolling_back(self) -> None:
        """The rollout is rolling back now: nothing to pause any more."""
        self.state = "rolling-back"
        self._changed.set()

    def ended(self) -> None:
        self.state = "ended"
        self._changed.set()

    def _unpause(self, who: Who, phase: str | None) -> None:
        held = self._clock() - (self.paused_since or self._clock())
        self.paused_s += held
        self.state, self.paused_by, self.paused_since = "running", None, None
        if phase is not None:
            self._event(phase, who, paused_s=round(held, 3))
        self._changed.set()

    def _event(self, phase: str, who: Who, **detail: object) -> None:
        if self._emit is not None:
            fields: dict[str, object] = {"by": who.user, **({"pid": who.pid} if who.pid is not None else {})}
            self._emit(phase, {**fields, **detail})


# -- the socket -----------------------------------------------------------------------------------
def _peer(writer: asyncio.StreamWriter) -> Who:
    """The connecting process, by the kernel's word (SO_PEERCRED: pid, uid, gid)."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    except (OSError, AttributeError):
        return Who("unknown")
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    return Who(user, pid)


class ControlServer:
    """Serves ``steering`` on ``project``'s control socket while the block runs (``async with``)."""

    def __init__(self, project: str, steering: Steering) -> None:
        self.path = socket_path(project)
        self.steering = steering
        self._server: asyncio.Server | None = None
        self.problem: str | None = None  # why it could not serve (the rollout runs anyway, unsteerable)

    async def __aenter__(self) -> ControlServer:
        try:
            await self._listen()
        except OSError as exc:
            self.problem = f"cannot serve {self.path}: {exc.strerror or exc}"
            log.warning("steering is off for this rollout: %s", self.problem)
        return self

    async def _listen(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # bound under a private name, made 0600, then renamed into place: never reachable with
        # wider permissions (we hold the project's lock, so a socket left there is a dead one's)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            sock.listen(8)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    async def __aexit__(self, *exc: object) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        who = _peer(writer)
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                line = await reader.readline()
            request = json.loads(line[:MAX_REQUEST] or b"{}")
            command = str(request.get("command", "")) if isinstance(request, dict) else ""
            answer = self.steering.handle(command, who)
            if command != "state":
                log.info("%s from %s: %s", command, who, answer["message"])
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ValueError, OSError) as exc:
            log.debug("control socket: a bad request from %s: %s", who, exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def send(project: str, command: str, *, timeout_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
    """Send ``command`` to ``project``'s running rollout; its answer, with ``answer_ms`` (the round
    trip). UsageError (exit 2) when no rollout of that project is running (no socket, or nobody
    listening on it)."""
    path = socket_path(project)
    nothing = f"project {project!r}: no rollout is running (nothing to {command})"
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(json.dumps({"command": command}).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (FileNotFoundError, ConnectionRefusedError):
        raise UsageError(nothing) from None
    except PermissionError:
        raise UsageError(f"project {project!r}: its rollout is run by another user; only they can steer it "
                         f"({path})") from None
    except TimeoutError:
        raise SandboxError(f"project {project!r}: the rollout's controller did not answer within "
                           f"{timeout_s:g} s ({path})") from None
    if not line:
        raise UsageError(nothing)
    answer: dict[str, Any] = json.loads(line)
    answer["answer_ms"] = round((time.monotonic() - t0) * 1000, 1)  # the round trip, as this client saw it
    return answer


async def query(project: str) -> dict[str, Any] | None:
    """The running rollout's steering state, or None when none runs (for ``status``)."""
    try:
        return await send(project, "state", timeout_s=ANSWER_TIMEOUT_S)
    except (SandboxError, ValueError, OSError):
        return None
