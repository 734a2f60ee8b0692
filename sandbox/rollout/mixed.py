"""Checks while both versions serve: the user's commands, run once the fleet is mixed.

``--mixed-check CMD`` (repeatable) names shell commands. The rehearsal runs each of
them once, one after the other, the first time the load balancer's attached set
holds servers of two versions (see :func:`is_mixed`), while the rollout waits, so
the fleet stays mixed until the last one ends. Each runs through the shell (it is
the user's command line) with :func:`environment` added to its own (``SANDBOX_URL``, the load
balancer; ``SANDBOX_PROJECT``; ``SANDBOX_VERSIONS``, the versions attached, comma-separated;
``SANDBOX_FROM`` and ``SANDBOX_TO``, the rollout's versions; ``SANDBOX_VERSION_HEADER`` and
``SANDBOX_VERSION_COOKIE``, the header and the cookie that send a request to one version on
purpose), in a session of its own, and is bounded by ``mixed_check_timeout_s``.
Its whole process group is killed when it ends, times out or is cancelled (Ctrl-C and
SIGTERM reach the controller, never the check), so nothing a check started outlives it.
Only the tail of its output is kept.

A record, one per command, is a :class:`~sandbox.results.model.MixedRecord` (in the report's
``mixed_checks``): its name, command, status (passed, failed, timed_out, not_run), exit code,
duration, the tails of its output, the servers attached by version and the batch when it ran.

``not_run`` comes with a ``reason``: the fleet was never mixed (blue-green, or naive
over the whole fleet, switch all at once), or the rollout ended first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence

from sandbox.fleet.loadbalancer import ROUTE_COOKIE, ROUTE_HEADER
from sandbox.results.model import MixedRecord

TAIL_CHARS = 2000  # of stdout and of stderr, each, kept in the report
NEVER_MIXED = "not run: the fleet never had both versions attached at once"


def is_mixed(versions: Iterable[str]) -> bool:
    """True when the attached servers' ``versions`` hold at least two different versions."""
    return len(set(versions)) >= 2


def environment(*, url: str, project: str, attached: Iterable[str], source: str, target: str) -> dict[str, str]:
    """What a check (or any command run against the mixed fleet) gets in its environment: where the
    fleet answers, which versions serve, and how to reach one of them on purpose, e.g.
    ``curl -H "$SANDBOX_VERSION_HEADER: $SANDBOX_FROM" "$SANDBOX_URL/"``."""
    return {"SANDBOX_URL": url, "SANDBOX_PROJECT": project, "SANDBOX_VERSIONS": ",".join(sorted(set(attached))),
            "SANDBOX_FROM": source, "SANDBOX_TO": target,
            "SANDBOX_VERSION_HEADER": ROUTE_HEADER, "SANDBOX_VERSION_COOKIE": ROUTE_COOKIE}


def name_of(index: int) -> str:
    """The verdict's name of the ``index``-th check (from 1)."""
    return f"mixed_check_{index}"


async def _tail(stream: asyncio.StreamReader | None, limit: int) -> str:
    """Everything ``stream`` gives until it closes, keeping only the last ``limit`` characters."""
    kept = bytearray()
    while stream is not None and (chunk := await stream.read(65536)):
        kept += chunk
        del kept[: max(0, len(kept) - 4 * limit)]  # bytes: room for multi-byte characters
    return kept.decode("utf-8", "replace")[-limit:]


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the check's whole process group (the shell and whatever it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_check(command: str, *, index: int, env: Mapping[str, str], timeout_s: float,
                    tail: int = TAIL_CHARS) -> MixedRecord:
    """Run one check through the shell with ``env`` added to this process's environment.

    Returns its record (status passed, failed or timed_out). Cancelled, it kills the check first.
    """
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **env}, start_new_session=True)
    readers = asyncio.gather(_tail(proc.stdout, tail), _tail(proc.stderr, tail))
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout_s)
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
        except BaseException:  # cancelled (a second Ctrl-C): the same, and no record
            _kill_group(proc)
            with contextlib.suppress(BaseException):  # reap it and close its pipes, briefly
                await asyncio.wait_for(asyncio.gather(proc.wait(), readers), timeout=2)
            raise
        try:
            out, err = await asyncio.wait_for(readers, timeout=5)  # a grandchild may hold the pipes open
        except TimeoutError:
            out, err = "", "(output not read: the pipes stayed open 5 s after the check ended)"
    finally:
        _kill_group(proc)  # what the check left running in the background ends with it
    code = proc.returncode if proc.returncode is not None else await proc.wait()
    status = "timed_out" if timed_out else "passed" if code == 0 else "failed"
    if timed_out:
        err = (err + f"\n(killed after {timeout_s:g} s)").lstrip("\n")
    return MixedRecord(name_of(index), command, status, exit_code=code, duration_s=round(time.monotonic() - t0, 3),
                       stdout_tail=out, stderr_tail=err)


def not_run(commands: Sequence[str], reason: str, *, start: int = 1) -> tuple[MixedRecord, ...]:
    """Records for ``commands`` that did not run, and why (numbered from ``start``)."""
    return tuple(MixedRecord(name_of(i), c, "not_run", reason=reason) for i, c in enumerate(commands, start))


def finish(commands: Sequence[str], ran: Sequence[MixedRecord] | None, outcome: str) -> tuple[MixedRecord, ...]:
    """Every command's record at the end of a run: those that ran, then the rest as not run.

    ``ran`` is None when the fleet was never mixed while checks could run.
    """
    if ran is None:
        reason = NEVER_MIXED if outcome == "completed" else \
            f"not run: the rollout ended ({outcome}) before both versions were attached at once"
        return not_run(commands, reason)
    rest = not_run(commands[len(ran):], "not run: the rollout was interrupted while the checks ran",
                   start=len(ran) + 1)
    return (*ran, *rest)


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (for a one-line hint at a check's output)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
