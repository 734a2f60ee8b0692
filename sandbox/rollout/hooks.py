"""Hooks: ``--hook EVENT=CMD``, the user's commands run on the host at four points of a ``roll``.

::

    pre-rollout    after the warmup, before the migration and the first batch; a failure stops the
                   roll before anything changes (:class:`~sandbox.errors.HookError`, exit 1)
    post-batch     after each batch's last step (the load balancer as the batch left it); a failure
                   fails the rollout as a failed batch does: the automatic rollback
    post-rollout   once every server is new (after ``--migrate-at after``); a failure fails the verdict
    on-rollback    when a rollback starts (automatic, or ``sandbox abort``); reported, the rollback goes on

The flag is repeatable, and an event may have several commands: they run one after the other in
the order given, and the first that fails ends that event's run (the rest are ``not_run``). Each
runs as a mixed check does (:func:`sandbox.rollout.mixed.run_check`: ``sh -c``, a session of its
own, killed with its process group at ``--hook-timeout``), with :func:`environment` added.

Each run is a :class:`~sandbox.results.model.MixedRecord` with its ``event`` (and ``batch`` for
post-batch), so it is in the report, the verdict and JUnit as the mixed checks and the migration are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from sandbox.results.model import MixedRecord
from sandbox.rollout import mixed
from sandbox.rollout.mixed import last_line, run_check

Event = Literal["pre-rollout", "post-batch", "post-rollout", "on-rollback"]
EVENTS: tuple[Event, ...] = get_args(Event)
PREFIX = "hook_"  # every hook record's name starts so (the renderers tell them from mixed checks by ``event``)


@dataclass(frozen=True)
class Hook:
    """One ``--hook EVENT=CMD``."""

    event: Event
    command: str


def parse(text: str) -> Hook:
    """``"post-batch=./smoke.sh"`` as a :class:`Hook`; ValueError naming what is wrong."""
    event, sep, command = str(text).partition("=")
    event = event.strip()
    if not sep:
        raise ValueError(f"{text!r} must be EVENT=CMD, EVENT one of {', '.join(EVENTS)}")
    if event not in EVENTS:
        raise ValueError(f"{text!r}: unknown event {event!r}; one of {', '.join(EVENTS)}")
    if not command.strip():
        raise ValueError(f"{text!r}: the {event} hook's command is empty")
    return Hook(event, command.strip())  # narrowed to Event by the check above


def parse_all(values: Iterable[str]) -> tuple[Hook, ...]:
    """Every ``--hook``, in the order given."""
    return tuple(parse(v) for v in values)


def check(values: tuple[str, ...]) -> None:
    """The setting's check: a tuple of valid ``EVENT=CMD`` (ValueError with the first bad one)."""
    if not isinstance(values, tuple):
        raise ValueError("must be a list of EVENT=CMD")
    parse_all(values)


def of(hooks: Sequence[Hook], event: Event) -> tuple[str, ...]:
    """The commands of ``event``, in order."""
    return tuple(h.command for h in hooks if h.event == event)


def name_of(event: Event, index: int, count: int, batch: int | None = None) -> str:
    """The record's (and the verdict's) name: ``hook_pre_rollout``, ``hook_post_batch_b2``, with
    ``_2`` ... when ``event`` has ``count`` > 1 commands (``index`` from 1)."""
    name = PREFIX + event.replace("-", "_")
    if batch is not None:
        name += f"_b{batch}"
    return name + (f"_{index}" if count > 1 else "")


def host_database_url(app_url: str, host_port: int | None) -> str:
    """The fleet's ``DATABASE_URL`` as the host reaches it: the same user, password and database
    on ``127.0.0.1:host_port`` (the port its server publishes); "" without a URL or a port."""
    if not app_url or host_port is None:
        return ""
    url = urlsplit(app_url)
    auth = url.netloc.rpartition("@")[0]
    return urlunsplit(url._replace(netloc=f"{auth}@127.0.0.1:{host_port}" if auth else f"127.0.0.1:{host_port}"))


def environment(*, url: str, project: str, source: str, target: str, event: Event, batch: int | None,
                database_url: str) -> dict[str, str]:
    """What a hook finds in its environment, beside this process's: ``SANDBOX_URL`` (the load
    balancer on 127.0.0.1), ``SANDBOX_PROJECT``, ``SANDBOX_VERSIONS`` (``from,to`` of the roll),
    ``SANDBOX_EVENT``, ``SANDBOX_BATCH`` (the batch just done for post-batch, from 1; ``0`` for the
    other events) and ``DATABASE_URL`` (the project's PostgreSQL through its port on 127.0.0.1; ""
    when the fleet has none); and, as a mixed check gets them, ``SANDBOX_FROM``, ``SANDBOX_TO``,
    ``SANDBOX_VERSION_HEADER`` and ``SANDBOX_VERSION_COOKIE`` to reach one version on purpose."""
    return {**mixed.environment(url=url, project=project, attached=(source, target), source=source, target=target),
            "SANDBOX_VERSIONS": f"{source},{target}", "SANDBOX_EVENT": event, "SANDBOX_BATCH": str(batch or 0),
            "DATABASE_URL": database_url}


async def run(event: Event, commands: Sequence[str], *, env: Mapping[str, str], timeout_s: float,
              batch: int | None = None) -> list[MixedRecord]:
    """Run ``event``'s commands in order; their records. The first that fails ends the run: the
    rest are recorded ``not_run``."""
    out: list[MixedRecord] = []
    for index, command in enumerate(commands, 1):
        name = name_of(event, index, len(commands), batch)
        if out and out[-1].status != "passed":
            out.append(MixedRecord(name, command, "not_run", reason=f"not run: {out[-1].name} failed first",
                                   event=event, batch=batch))
            continue
        record = await run_check(command, index=index, env=env, timeout_s=timeout_s)
        out.append(dataclasses.replace(record, name=name, event=event, batch=batch))
    return out


def not_run(event: Event, commands: Sequence[str], reason: str) -> list[MixedRecord]:
    """Records for ``event``'s commands that did not run, and why."""
    return [MixedRecord(name_of(event, i, len(commands)), c, "not_run", reason=reason, event=event)
            for i, c in enumerate(commands, 1)]


def failed(records: Iterable[MixedRecord]) -> MixedRecord | None:
    """The first record that ran and did not pass, or None."""
    return next((r for r in records if r.status in ("failed", "timed_out")), None)


def failure_line(rec: MixedRecord, consequence: str) -> str:
    """One line naming a failed hook: its event, command, exit code, duration and last output line,
    and ``consequence`` ("the fleet was not changed")."""
    what = f"timed out after {rec.duration_s:g} s" if rec.status == "timed_out" else \
        f"exit {rec.exit_code}, {rec.duration_s:g} s"
    hint = (last_line(rec.stderr_tail) if rec.status == "failed" else "") or last_line(rec.stdout_tail)
    return f"{rec.event} hook {rec.command!r} failed ({what}); {consequence}" + (f": {hint}" if hint else "")


def is_hook(record: MixedRecord) -> bool:
    """Whether ``record`` is a hook's (not a mixed check's nor the migration's)."""
    return record.event is not None
