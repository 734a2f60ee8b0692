"""The migration step: ``roll --migrate CMD``, the release-phase pattern.

``CMD`` runs once, through ``sh -c``, in a one-off container of the *target* image on the
project's network, with the environment the new servers get (the fleet's ``up --env``, its
``DATABASE_URL``, ``--set-env``). ``--migrate-at before`` (the default) runs it after the
warmup and before the first batch: the old version serves against the new schema for the whole
rollout, so its errors from then on are the incompatibility. ``after`` runs it once every
server is new (a "contract" step). A failure before the first batch stops the roll before
anything changes (:class:`~sandbox.errors.MigrationError`, exit 1); after the rollout it fails
the verdict.

The record is a :class:`~sandbox.results.model.MixedRecord` named ``migration`` (so it is in the
report, the verdict and JUnit as mixed checks are), whose ``batch`` says when it ran (0: before
the first batch; the last batch's number: after it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from sandbox.results.model import Check, MixedRecord
from sandbox.results.records import RequestRow
from sandbox.rollout.mixed import TAIL_CHARS, last_line

NAME = "migration"
CONTRACT = "contract"  # ``--contract CMD``: run the same way once every server is new
STEPS = (NAME, CONTRACT)  # the records of the schema steps, shown apart from the mixed checks
TIMED_OUT = 124  # the exit code of a migration killed at --migrate-timeout (as timeout(1) says it)

RunOnce = Callable[[str, float], Awaitable[tuple[int, str]]]  # (command, timeout) -> (exit code, output)


def record(command: str, exit_code: int, output: str, duration_s: float, *, batch: int,
           timeout_s: float, tail: int = TAIL_CHARS, name: str = NAME) -> MixedRecord:
    """The report's record of one migration run: passed on exit 0, timed_out on 124, else failed."""
    status = "passed" if exit_code == 0 else "timed_out" if exit_code == TIMED_OUT else "failed"
    err = f"(killed after {timeout_s:g} s)" if status == "timed_out" else ""
    return MixedRecord(name, command, status, exit_code=exit_code, duration_s=round(duration_s, 3),
                       stdout_tail=output[-tail:], stderr_tail=err, batch=batch)


async def run(command: str, run_once: RunOnce, *, timeout_s: float, batch: int, name: str = NAME) -> MixedRecord:
    """Run the migration (or, ``name`` :data:`CONTRACT`, the contract step) with ``run_once``; its record."""
    t0 = time.monotonic()
    code, output = await run_once(command, timeout_s)
    return record(command, code, output, time.monotonic() - t0, batch=batch, timeout_s=timeout_s, name=name)


def not_run(command: str, reason: str, name: str = NAME) -> MixedRecord:
    """The record of a migration (or contract step) that did not run (the rollout ended first), and why."""
    return MixedRecord(name, command, "not_run", reason=reason)


def failure_line(rec: MixedRecord) -> str:
    """One line naming a failed migration: its command, exit code, duration and last output line."""
    what = "timed out" if rec.status == "timed_out" else f"exit {rec.exit_code}"
    hint = last_line(rec.stdout_tail)
    return (f"migration {rec.command!r} failed ({what}, {rec.duration_s:g} s) before the first batch; "
            f"the fleet was not changed" + (f": {hint}" if hint else ""))


def answers_after(rows: Iterable[RequestRow], since: float) -> dict[str, dict[str, int]]:
    """Per serving version, the answers to requests sent at or after ``since`` (the migration's
    end): ``{version: {"answers", "errors"}}``, where an error is a 4xx or 5xx answer. The old
    version's errors are the migration's incompatibility; requests with no answer (no version)
    are the report's drops, not counted here."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        version = row.get("version")
        if row["t"] < since or not version or not row["status"]:
            continue
        seen = out.setdefault(version, {"answers": 0, "errors": 0})
        seen["answers"] += 1
        seen["errors"] += row["status"] >= 400
    return dict(sorted(out.items()))


def errors_check(block: Mapping[str, Any], limit: int) -> Check:
    """The verdict's ``migration_errors``: error answers after the migration ended, every version's, at
    most ``limit``; its note names them by version (the old version's are the incompatibility).
    NOT_RUN when the migration did not run or no answer came after it."""
    seen = block.get("by_version_after") or {}
    if block.get("status") == "not_run" or not seen:
        return Check("migration_errors", "NOT_RUN", None, limit, "no answer after a migration to judge")
    errors = sum(int(n.get("errors", 0)) for n in seen.values())
    note = ", ".join(f"{v} {n.get('errors', 0)} of {n.get('answers', 0)}" for v, n in seen.items())
    return Check("migration_errors", "PASS" if errors <= limit else "FAIL", errors, limit,
                 f"errors of the answers after it, by version: {note}")


def summary(rec: MixedRecord, ended_at: float | None, rows: Iterable[RequestRow]) -> dict[str, object]:
    """The report's ``migration`` (or ``contract``) block: the command, when it ran and how it ended,
    and the answers by serving version from its end on."""
    return {"command": rec.command, "status": rec.status, "exit_code": rec.exit_code,
            "duration_s": rec.duration_s, "at": "before" if rec.batch == 0 else "after",
            "ended_at": ended_at,
            "by_version_after": answers_after(rows, ended_at) if ended_at is not None else {}}
