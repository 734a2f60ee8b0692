"""PASS or FAIL for one run, as named checks: pure functions of the report dict.

Each check has a figure (``value``), a limit and a verdict. The run passes
only when every check holds; a run with the load on and too few requests
measured never passes (no PASS without evidence). The checks:

- ``outcome``: the rollout's outcome, must be "completed";
- ``dropped``: requests that got no successful answer, at most ``max_dropped``;
- ``stall_s``: longest stretch with no successful answer, at most ``max_stall_s``;
- ``slow``: requests slower than ``slow_ms`` or never answered, at most ``max_slow``;
- ``p99_ratio``: p99 latency of the rollout over that of the warmup, at most ``max_p99_ratio``;
- ``contract_violations``: answers that broke the expected API, at most ``max_violations``;
- ``drains_timed_out``: drains that gave up at the drain timeout, must be 0;
- ``requests_measured``: requests the load generator recorded, at least ``min_requests``;
- ``load_alive``: the load generator ran for the whole run (``report["load_alive"]``,
  set by the caller; unknown counts as alive);
- ``mixed_check_1``, ``mixed_check_2``, ...: one per ``--mixed-check`` command (the
  report's ``mixed_checks`` records, see :mod:`sandbox.rollout.mixed`): it must exit 0
  within its timeout. A check that never ran (the fleet never had both versions
  attached: blue-green, naive over the whole fleet) holds but is marked
  ``skipped``, with the reason in its note, so it never passes unseen.

With the load off (``report["load"] is False``) the checks on traffic cannot
be measured: they hold, with ``note`` saying so. The same goes for the p99
ratio when the warmup got no answer to compare with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sandbox.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from sandbox.rollout import strategies

NO_LOAD = "not measured: no load"


@dataclass(frozen=True)
class Limits:
    """What a run must stay within to PASS (the settings of the same names)."""

    max_dropped: int = 0
    max_stall_s: float = 1.0
    slow_ms: float = 2000.0  # what "slow" means; measure counts them, the limit is max_slow
    max_slow: int = 0
    max_p99_ratio: float = 3.0
    max_violations: int = 0
    min_requests: int = 100

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits of a :class:`sandbox.config.Settings` (any object with these attributes)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Check:
    """One named check: its figure, its limit, whether it held."""

    name: str
    passed: bool
    value: Any
    limit: Any
    note: str | None = None
    skipped: bool = False  # it could not be measured in this run (a mixed check that never ran)

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "pass": self.passed, "value": self.value, "limit": self.limit}
        if self.note:
            out["note"] = self.note
        if self.skipped:
            out["skipped"] = True
        return out


@dataclass(frozen=True)
class Verdict:
    """Every check of one run; ``passed`` only when all of them held."""

    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        return {"pass": self.passed, "checks": [c.as_dict() for c in self.checks]}


def _at_most(name: str, value: Any, limit: float, *, load: bool) -> Check:
    if not load:
        return Check(name, True, None, limit, NO_LOAD)
    number = float(value or 0)
    return Check(name, number <= limit, value if value is not None else 0, limit)


def _p99_ratio(report: Mapping[str, Any], limit: float, *, load: bool) -> Check:
    phases = report.get("phases") or {}
    warm = ((phases.get("warmup") or {}).get("latency_ms") or {}).get("p99")
    roll = ((phases.get("rollout") or {}).get("latency_ms") or {}).get("p99")
    if not load:
        return Check("p99_ratio", True, None, limit, NO_LOAD)
    if not warm:
        return Check("p99_ratio", True, None, limit, "no warmup answers to compare with")
    if roll is None:
        return Check("p99_ratio", False, None, limit, "no answer during the rollout")
    ratio = round(float(roll) / float(warm), 2)
    return Check("p99_ratio", ratio <= limit, ratio, limit, f"rollout p99 {roll} ms, warmup p99 {warm} ms")


def _timed_out_drains(report: Mapping[str, Any]) -> Check:
    drains: Sequence[Mapping[str, Any]] = report.get("drains") or []
    count = sum(1 for d in drains if d.get("timed_out"))
    return Check("drains_timed_out", count == 0, count, 0)


def _requests(report: Mapping[str, Any], minimum: int, *, load: bool) -> Check:
    if not load:
        return Check("requests_measured", True, None, minimum, NO_LOAD)
    total = int((report.get("requests") or {}).get("total") or 0)
    return Check("requests_measured", total >= minimum, total, minimum)


def _load_alive(report: Mapping[str, Any], *, load: bool) -> Check:
    if not load:
        return Check("load_alive", True, None, True, NO_LOAD)
    alive = report.get("load_alive")
    alive = True if alive is None else bool(alive)  # unknown: the caller could not tell
    return Check("load_alive", alive, alive, True, None if alive else "the load generator died during the run")


def _mixed_checks(report: Mapping[str, Any]) -> list[Check]:
    """One check per mixed-check record: exit 0 holds; not run holds, skipped, saying why."""
    checks = []
    for record in report.get("mixed_checks") or []:
        name, command, status = str(record.get("name")), record.get("command"), record.get("status")
        if status == "not_run":
            checks.append(Check(name, True, None, 0, f"{record.get('reason')}: {command}", skipped=True))
            continue
        took = f"killed at the timeout after {record.get('duration_s')} s" if status == "timed_out" \
            else f"ran {record.get('duration_s')} s"
        note = f"{took}: {command}"
        checks.append(Check(name, status == "passed", record.get("exit_code"), 0, note))
    return checks


def load_was_on(report: Mapping[str, Any]) -> bool:
    """False only when the report says the load was off; unknown counts as on."""
    return report.get("load") is not False


def verdict(report: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Verdict:
    """Every check of ``report`` (a :func:`sandbox.results.report.build_report` dict) against ``limits``."""
    load = load_was_on(report)
    requests = report.get("requests") or {}
    exposure = report.get("exposure") or {}
    outcome = report.get("outcome")
    return Verdict((
        Check("outcome", outcome == "completed", outcome, "completed"),
        _at_most("dropped", requests.get("dropped"), limits.max_dropped, load=load),
        _at_most("stall_s", report.get("stall_s"), limits.max_stall_s, load=load),
        _at_most("slow", requests.get("slow"), limits.max_slow, load=load),
        _p99_ratio(report, limits.max_p99_ratio, load=load),
        _at_most("contract_violations", exposure.get("contract_violations"), limits.max_violations, load=load),
        _timed_out_drains(report),
        _requests(report, limits.min_requests, load=load),
        _load_alive(report, load=load),
        *_mixed_checks(report),
    ))


def verdict_of(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """The report's own ``verdict`` dict, or one computed with the default limits."""
    stored = report.get("verdict")
    return stored if isinstance(stored, Mapping) else verdict(report).as_dict()


def exit_code(report: Mapping[str, Any], outcome: str | None = None) -> int:
    """130 when the run was interrupted, 1 when its verdict fails, else 0."""
    if (outcome or report.get("outcome")) == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if verdict_of(report).get("pass") else EXIT_FAILURE


def judged_in_compare(report: Mapping[str, Any]) -> bool:
    """Whether ``compare`` holds this strategy to its verdict: not naive, a baseline that drops by design."""
    return strategies.of(report.get("strategy")).judged_in_compare


def compare_exit_code(reports: Sequence[Mapping[str, Any]]) -> int:
    """``compare``: 130 when a run was interrupted; 1 when any strategy other than naive
    failed its verdict (or nothing was run); else 0. Naive is there to show drops."""
    if any(r.get("outcome") == "interrupted" for r in reports):
        return EXIT_INTERRUPTED
    if not reports:
        return EXIT_FAILURE
    graceful = [r for r in reports if judged_in_compare(r)]
    return EXIT_OK if all(verdict_of(r).get("pass") for r in graceful) else EXIT_FAILURE


def failed_names(report: Mapping[str, Any]) -> list[str]:
    """Names of the checks the report failed."""
    return [str(c.get("name")) for c in verdict_of(report).get("checks") or [] if not c.get("pass")]
