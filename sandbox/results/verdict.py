"""PASS or FAIL for one run, as named checks: a pure function of the measured figures and the limits.

:func:`verdict` judges a :class:`~sandbox.results.model.Rollout` record and its
:class:`~sandbox.results.model.Figures` against :class:`Limits`; it never reads a report back.
The run passes only when every check holds; a run with the load on and too few requests
measured never passes (no PASS without evidence). The checks:

- ``outcome``: the rollout's outcome, must be "completed";
- ``dropped``: requests that got no successful answer, at most ``max_dropped``;
- ``stall_s``: longest stretch with no successful answer, at most ``max_stall_s``;
- ``slow``: requests slower than ``slow_ms`` or never answered, at most ``max_slow``;
- ``p99_ratio``: the rollout's p99 latency against ``max_p99_ms`` and the steady (warmup) p99,
  see :func:`p99_check`;
- ``contract_violations``: answers that broke the expected API, at most ``max_violations``;
- ``not_found``: 404 and 410 answers from the rollout's start on (an endpoint one version lacks),
  at most ``max_not_found``;
- ``drains_timed_out``: drains that gave up at the drain timeout, or could not tell (an app with
  no ``/metrics`` in reload mode), must be 0;
- ``requests_measured``: requests the load generator recorded, at least ``min_requests`` (and never 0);
- ``rows_lost``: requests the load generator sent but wrote no row for, must be 0;
- ``unrecorded``: the load's requests NGINX answered that have no row, must be 0 (``rows_lost`` and
  ``unrecorded`` are SKIP, saying why, when the count or the LB's log is missing);
- ``load_alive``: the load generator ran for the whole run (unknown counts as not alive);
- ``abnormal_closes``, ``messages_lost``: long-lived connections (``--ws-users``, ``--sse-users``)
  that ended without the server's goodbye, and numbered messages missing, at most
  ``max_abnormal_closes`` / ``max_messages_lost`` (0), only in a run with such users;
- ``reconnect_p99_ms``: the p99 of the time from a long-lived connection's end to the same user's
  next one open, at most ``max_reconnect_p99_ms``. These three are SKIP when no long-lived
  connection ran (the reconnect one also when none reconnected);
- ``mixed_check_1``, ``mixed_check_2``, ...: one per ``--mixed-check`` command: it must exit 0
  within its timeout. A check that never ran (the fleet never had both versions attached) is
  NOT_RUN, with its reason, so it never passes unseen.

With the load off the checks on traffic cannot be measured: they hold, saying so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields

from sandbox.config import Settings
from sandbox.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from sandbox.results.model import (
    P99,
    Alive,
    AtLeast,
    Check,
    Equals,
    ExitZero,
    Figures,
    LikeForLike,
    LongLived,
    MixedRecord,
    Report,
    RollbackRehearsal,
    Rollout,
    Seconds,
    Status,
    Verdict,
)
from sandbox.rollout import strategies

NO_LOAD = "not measured: no load"


_DEFAULT = Settings()  # each limit's default: its setting's


@dataclass(frozen=True)
class Limits:
    """What a run must stay within to PASS (the settings of the same names, and their defaults)."""

    max_dropped: int = _DEFAULT.max_dropped
    max_stall_s: float = _DEFAULT.max_stall_s
    slow_ms: float = _DEFAULT.slow_ms  # what "slow" means; measure counts them, the limit is max_slow
    max_slow: int = _DEFAULT.max_slow
    max_p99_ratio: float = _DEFAULT.max_p99_ratio
    max_p99_ms: float = _DEFAULT.max_p99_ms
    min_latency_samples: int = _DEFAULT.min_latency_samples
    max_violations: int = _DEFAULT.max_violations
    max_not_found: int = _DEFAULT.max_not_found
    max_migration_errors: int = _DEFAULT.max_migration_errors
    min_requests: int = _DEFAULT.min_requests
    max_abnormal_closes: int = _DEFAULT.max_abnormal_closes
    max_messages_lost: int = _DEFAULT.max_messages_lost
    max_reconnect_p99_ms: float = _DEFAULT.max_reconnect_p99_ms

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits of these settings."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_LIMITS = Limits()


def _held(ok: bool) -> Status:
    return "PASS" if ok else "FAIL"


def _at_most(kind: type[Check], name: str, value: float | None, limit: float, *, load: bool,
             unit: str = "") -> Check:
    if not load:
        return kind(name, "PASS", None, limit, NO_LOAD, unit)
    figure = value if value is not None else 0
    return kind(name, _held(float(figure) <= limit), figure, limit, None, unit)


def p99_check(like: LikeForLike, limits: Limits, *, load: bool) -> P99:
    """The latency check: does the rollout's p99 show a rise users feel?

    Both phases are measured over the same requests (the method and path classes, and the users,
    that appear in both), so a rollout that happens to send other requests is not compared with
    a warmup that did not. Let S be the steady (warmup) p99, R the rollout's.

    - SKIP when either phase has fewer than ``min_latency_samples`` such answers: a p99 of a few
      answers is one slow request, not a figure (never PASS without evidence).
    - FAIL when R > ``max_p99_ms`` (users feel it) and either S <= ``max_p99_ms`` (the fleet was
      fine before: the rollout made it slow) or R / S > ``max_p99_ratio`` (a fleet already over
      the bound before the rollout fails only when the rollout multiplied its p99).
    - PASS otherwise: a rise that stays under ``max_p99_ms`` (100 to 330 ms while double-half creates
      9 containers at once on 2 cores; 2 ms to 20 ms while servers boot on
      a shared machine) is noise users cannot feel, whatever its ratio.
    """
    steady, rollout = like.steady, like.rollout
    ratio = (round(rollout.p99_ms / steady.p99_ms, 2)
             if rollout.p99_ms is not None and steady.p99_ms else None)
    samples = {"steady": steady.samples, "rollout": rollout.samples}

    def check(status: Status, reason: str) -> P99:
        return P99("p99_ratio", status, ratio, limits.max_p99_ratio, reason, rollout_p99_ms=rollout.p99_ms,
                   steady_p99_ms=steady.p99_ms, max_p99_ms=limits.max_p99_ms, samples=samples,
                   min_samples=limits.min_latency_samples)

    if not load:
        return check("PASS", NO_LOAD)
    fewest = limits.min_latency_samples
    if steady.samples < fewest or rollout.samples < fewest or rollout.p99_ms is None or steady.p99_ms is None:
        return check("SKIP", f"too few answers to compare: {steady.samples} steady, {rollout.samples} rollout "
                             f"of the same requests (min {fewest}, --min-latency-samples)")
    r, s = rollout.p99_ms, steady.p99_ms
    felt = r > limits.max_p99_ms and (s <= limits.max_p99_ms or (ratio or 0) > limits.max_p99_ratio)
    return check(_held(not felt), f"steady p99 {s} ms; {rollout.samples} rollout and {steady.samples} steady "
                                  "answers of the same requests")


def _mixed_check(record: MixedRecord) -> Check:
    """Exit 0 passes; not run is NOT_RUN, saying why."""
    if record.status == "not_run":
        return ExitZero(record.name, "NOT_RUN", None, 0, f"{record.reason}: {record.command}")
    took = (f"killed at the timeout after {record.duration_s} s" if record.status == "timed_out"
            else f"ran {record.duration_s} s")
    return ExitZero(record.name, _held(record.status == "passed"), record.exit_code, 0, f"{took}: {record.command}")


def _load_alive(run: Rollout) -> Check:
    if not run.load_on:
        return Alive("load_alive", "PASS", None, True, NO_LOAD)
    if run.load_alive is None:  # no PASS without evidence
        return Alive("load_alive", "FAIL", None, True, "unknown whether the load generator ran for the whole run")
    alive = bool(run.load_alive)
    return Alive("load_alive", _held(alive), alive, True, None if alive else "the load generator died during the run")


def _none_lost(name: str, value: int | None, unknown: str, *, load: bool) -> Check:
    """A count that must be 0; SKIP, saying why, when it could not be counted."""
    if not load:
        return Check(name, "PASS", None, 0, NO_LOAD)
    if value is None:
        return Check(name, "SKIP", None, 0, unknown)
    return Check(name, _held(value == 0), value, 0)


def _drains(figures: Figures) -> Check:
    timed_out = figures.drains_timed_out
    reasons = sorted({d.reason for d in figures.drains if d.timed_out and d.reason})
    return Check("drains_timed_out", _held(timed_out == 0), timed_out, 0, "; ".join(reasons) or None)


NO_LONG_LIVED = "not measured: no long-lived connection ran"


def long_lived_checks(run: Rollout, figures: LongLived, limits: Limits) -> tuple[Check, ...]:
    """``abnormal_closes``, ``messages_lost`` and ``reconnect_p99_ms``, for a run with long-lived users
    (none for a run without: its verdict is what it always was); each SKIP when no long-lived connection
    ran (and ``reconnect_p99_ms`` when none reconnected: no figure to judge)."""
    if not (run.long_lived_users or figures.ran):
        return ()
    if not figures.ran:
        return (Check("abnormal_closes", "SKIP", None, limits.max_abnormal_closes, NO_LONG_LIVED),
                Check("messages_lost", "SKIP", None, limits.max_messages_lost, NO_LONG_LIVED),
                Check("reconnect_p99_ms", "SKIP", None, limits.max_reconnect_p99_ms, NO_LONG_LIVED, " ms"))
    closes = ", ".join(f"{k} {v}" for k, v in figures.closes.items()) or None
    abnormal = Check("abnormal_closes", _held(figures.abnormal_closes <= limits.max_abnormal_closes),
                     figures.abnormal_closes, limits.max_abnormal_closes, closes)
    lost = Check("messages_lost", _held(figures.messages_lost <= limits.max_messages_lost), figures.messages_lost,
                 limits.max_messages_lost, f"of {figures.messages} received")
    p99 = figures.reconnect_p99_ms
    reconnect = (Check("reconnect_p99_ms", "SKIP", None, limits.max_reconnect_p99_ms, "no connection reconnected",
                       " ms") if p99 is None else
                 Check("reconnect_p99_ms", _held(p99 <= limits.max_reconnect_p99_ms), p99,
                       limits.max_reconnect_p99_ms, f"{figures.reconnects} reconnects", " ms"))
    return abnormal, lost, reconnect


def verdict(run: Rollout, figures: Figures, limits: Limits = DEFAULT_LIMITS) -> Verdict:
    """Every check of one run's record and figures against ``limits``."""
    load = run.load_on
    req = figures.requests
    least = max(1, limits.min_requests)  # with the load on, nothing measured never passes
    total = AtLeast("requests_measured", _held(req.total >= least), req.total, least) \
        if load else AtLeast("requests_measured", "PASS", None, limits.min_requests, NO_LOAD)
    return Verdict((
        Equals("outcome", _held(run.outcome == "completed"), run.outcome, "completed"),
        _at_most(Check, "dropped", req.dropped, limits.max_dropped, load=load),
        _at_most(Seconds, "stall_s", figures.stall_s, limits.max_stall_s, load=load),
        _at_most(Check, "slow", req.slow, limits.max_slow, load=load, unit=f" over {_ms(figures.slow_ms)}"),
        p99_check(figures.like_for_like, limits, load=load),
        _at_most(Check, "contract_violations", figures.exposure.contract_violations, limits.max_violations,
                 load=load),
        _at_most(Check, "not_found", req.not_found, limits.max_not_found, load=load, unit=" (404/410)"),
        _drains(figures),
        total,
        _none_lost("rows_lost", figures.rows_lost, "the load generator left no count of what it sent", load=load),
        _none_lost("unrecorded", figures.unrecorded, "the load balancer's log was not read", load=load),
        _load_alive(run),
        *long_lived_checks(run, figures.long_lived, limits),
        *(_mixed_check(r) for r in run.mixed_checks),
    ))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def exit_code(report: Report, outcome: str | None = None) -> int:
    """130 when the run was interrupted, 1 when its verdict fails, else 0."""
    if (outcome or report.run.outcome) == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if report.passed else EXIT_FAILURE


def judged_in_compare(run: Rollout) -> bool:
    """Whether ``compare`` holds this strategy to its verdict: not naive, a baseline that drops by design."""
    return strategies.of(run.strategy).judged_in_compare


def compare_exit_code(reports: Sequence[Report]) -> int:
    """``compare``: 130 when a run was interrupted; 1 when any strategy other than naive
    failed its verdict, or none was judged (nothing run, or naive alone); else 0. Naive is
    there to show drops."""
    if any(r.run.outcome == "interrupted" for r in reports):
        return EXIT_INTERRUPTED
    judged = [r for r in reports if judged_in_compare(r.run)]
    return EXIT_OK if judged and all(r.passed for r in judged) else EXIT_FAILURE


def not_run(judged: Verdict, reason: str) -> Verdict:
    """``judged``'s checks, each NOT_RUN with ``reason`` (a run that rehearsed nothing)."""
    return Verdict(tuple(dataclasses.replace(c, status="NOT_RUN", value=None, reason=reason)
                         for c in judged.checks))


def rollback_safe(rehearsal: RollbackRehearsal, required: bool) -> Check:
    """The verdict's ``rollback_safe_after_<rollout|contract>``: its figure is the old version's
    errors (limit 0). Safe passes. Unsafe fails with ``--require-rollback-safe``; without it, it
    is shown (SKIP, saying so), not judged: after a contract step a rollback cannot work, by design.
    NOT_RUN when it did not run or failed to."""
    name = f"rollback_safe_after_{rehearsal.after}"
    if rehearsal.safe is None:
        why = rehearsal.reason or "no answer"
        return Check(name, "NOT_RUN", None, 0, f"rollback to {rehearsal.version} not rehearsed: {why}")
    what = (f"{rehearsal.version} served against the schema: {rehearsal.errors} errors of "
            f"{rehearsal.requests} requests")
    if rehearsal.safe:
        return Check(name, "PASS", 0, 0, f"{what}: rollback safe")
    first = f" (first: {rehearsal.first_error})" if rehearsal.first_error else ""
    if required:
        return Check(name, "FAIL", rehearsal.errors, 0, f"{what}: a rollback would break{first}")
    return Check(name, "SKIP", rehearsal.errors, 0,
                 f"{what}: a rollback would break{first}; shown, not judged (--require-rollback-safe judges it)")
