"""A canary step's analysis: the new version against the old over the same window (pure, no I/O).

:func:`analyse` takes the request rows sent within one step's window and judges four criteria:

- ``error_ratio``: the share of the new version's requests that failed (5xx, as its answers name
  it) against ``max_error_ratio`` (``--max-error-ratio``); it FAILs only when it is also above the
  old version's share over the same window (the fleet's own noise is not the canary's fault).
- ``p99_ratio``: the new version's p99 against the old's, by the project's latency rule
  (:func:`sandbox.results.verdict.p99_check`: FAIL only above the absolute ``--max-p99-ms``, and
  then against ``--max-p99-ratio``), so that the noise of a shared machine does not abort.
- ``contract_violations``: answers that broke the API a user expects, in the window, either version
  (a breaking new version shows as violations on both sides), at most ``--max-violations``.
- ``mixed_checks``: every ``--mixed-check`` that ran passed (SKIP without any).

A criterion that cannot be judged for want of answers (either version under
``--min-latency-samples``) is INCONCLUSIVE, never PASS. The step: ``failed`` when any criterion
FAILs (a violation seen is evidence enough, however few the answers), else ``inconclusive`` when
any is INCONCLUSIVE, else ``passed``. The rollout extends an inconclusive step, up to a bound
(``sandbox.rollout.canary``), then fails it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.results.measure import is_answered, is_dropped, percentile
from sandbox.results.model import CanaryStep, Criterion, LatencySample, LikeForLike, MixedRecord
from sandbox.results.verdict import Limits, p99_check

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"


@dataclass(frozen=True)
class Window:
    """One version's figures over the window."""

    requests: int  # requests its answers name it in (answered, or failed with its X-App-Version)
    errors: int  # of those, failed (5xx)
    answers: int  # successful answers (status < 500)
    violations: int
    p99_ms: float | None
    latencies: int  # answers with a latency

    @property
    def error_ratio(self) -> float | None:
        return round(self.errors / self.requests, 4) if self.requests else None


def window(rows: Sequence[Mapping[str, Any]], version: str) -> Window:
    """``version``'s figures over ``rows``."""
    mine = [r for r in rows if r.get("version") == version]
    latencies = [float(r["latency_ms"]) for r in mine if is_answered(r) and r.get("latency_ms") is not None]
    errors = sum(1 for r in mine if is_dropped(r))
    return Window(requests=len(mine), errors=errors, answers=len(mine) - errors,
                  violations=sum(1 for r in mine if r.get("contract") == "violation"),
                  p99_ms=percentile(latencies, 99), latencies=len(latencies))


def analyse(rows: Sequence[Mapping[str, Any]], *, old: str, new: str, step: int, weight: int,
            limits: Limits, max_error_ratio: float, mixed: Sequence[MixedRecord] = (),
            window_s: float = 0.0, extensions: int = 0) -> tuple[str, CanaryStep]:
    """(``passed``/``failed``/``inconclusive``, the step's record) for the rows sent in its window."""
    o, n = window(rows, old), window(rows, new)
    fewest = limits.min_latency_samples
    few = n.requests < fewest or o.requests < fewest
    short = f"too few answers: {n.requests} {new}, {o.requests} {old} (min {fewest}, --min-latency-samples)"
    criteria = (_error_ratio(n, o, max_error_ratio, few, short),
                _p99(n, o, limits),
                _violations(rows, n, o, limits.max_violations, new, old),
                _mixed(mixed))
    statuses = {c.status for c in criteria}
    outcome = FAILED if "FAIL" in statuses else INCONCLUSIVE if "INCONCLUSIVE" in statuses else PASSED
    answered = n.answers + o.answers
    record = CanaryStep(step=step, weight=weight, status=outcome,
                        observed_share=round(n.answers / answered, 4) if answered else None,
                        samples={new: n.answers, old: o.answers}, window_s=round(window_s, 1),
                        extensions=extensions, criteria=criteria,
                        reason="; ".join(f"{c.name}: {c.detail}" for c in criteria
                                         if c.status == {FAILED: "FAIL", INCONCLUSIVE: "INCONCLUSIVE"}.get(outcome))
                        or None)
    return outcome, record


def _error_ratio(n: Window, o: Window, limit: float, few: bool, short: str) -> Criterion:
    value, base = n.error_ratio, o.error_ratio
    detail = f"{n.errors} of {n.requests} failed ({o.errors} of {o.requests} on the old version)"
    if few:
        return Criterion("error_ratio", "INCONCLUSIVE", value, limit, base, short)
    bad = (value or 0.0) > limit and (value or 0.0) > (base or 0.0)
    return Criterion("error_ratio", "FAIL" if bad else "PASS", value, limit, base, detail)


def _p99(n: Window, o: Window, limits: Limits) -> Criterion:
    like = LikeForLike(steady=LatencySample(o.p99_ms, o.latencies), rollout=LatencySample(n.p99_ms, n.latencies))
    check = p99_check(like, limits, load=True)
    status = "INCONCLUSIVE" if check.status == "SKIP" else check.status
    detail = (f"p99 {n.p99_ms} ms new, {o.p99_ms} ms old ({n.latencies} and {o.latencies} answers); "
              f"FAIL only above {limits.max_p99_ms:g} ms (--max-p99-ms)")
    return Criterion("p99_ratio", status, check.value, limits.max_p99_ratio, None,
                     detail if status != "INCONCLUSIVE" else check.reason)


def _violations(rows: Sequence[Mapping[str, Any]], n: Window, o: Window, limit: int, new: str, old: str) -> Criterion:
    total = sum(1 for r in rows if r.get("contract") == "violation")
    return Criterion("contract_violations", "PASS" if total <= limit else "FAIL", total, limit, o.violations,
                     f"{n.violations} in answers from {new}, {o.violations} from {old}")


def _mixed(records: Sequence[MixedRecord]) -> Criterion:
    ran = [r for r in records if r.status != "not_run"]
    if not records:
        return Criterion("mixed_checks", "SKIP", None, 0, None, "no --mixed-check")
    if not ran:
        return Criterion("mixed_checks", "INCONCLUSIVE", None, 0, None, "not run yet")
    failed = [r.name for r in ran if r.status != "passed"]
    return Criterion("mixed_checks", "FAIL" if failed else "PASS", len(failed), 0, None,
                     f"failed: {', '.join(failed)}" if failed else f"{len(ran)} passed")


# --------------------------------------------------------------------------- the table every output shows

TABLE_HEAD = ("step", "weight", "share", "answers new/old", "error ratio new/old", "p99 ratio",
              "violations", "mixed checks", "extended", "status")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def table_row(step: CanaryStep, new: str, old: str) -> tuple[str, ...]:
    """One canary step as the summary, report.md and JUnit show it (``TABLE_HEAD``'s columns)."""
    by = {c.name: c for c in step.criteria}

    def cell(name: str, shown: str) -> str:
        c = by.get(name)
        return "-" if c is None else f"{shown} {c.status}" if shown else c.status

    err = by.get("error_ratio")
    err_text = "-" if err is None or err.value is None else (
        f"{_pct(float(err.value))}/{_pct(None if err.baseline is None else float(err.baseline))}")
    p99 = by.get("p99_ratio")
    viol = by.get("contract_violations")
    return (str(step.step), f"{step.weight} %", _pct(step.observed_share),
            f"{step.samples.get(new, 0)}/{step.samples.get(old, 0)}",
            cell("error_ratio", err_text),
            cell("p99_ratio", "-" if p99 is None or p99.value is None else f"{p99.value}"),
            cell("contract_violations", "" if viol is None else str(viol.value)), cell("mixed_checks", ""),
            str(step.extensions), step.status)
