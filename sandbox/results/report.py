"""Build one run's :class:`~sandbox.results.model.Report`, write its files, compare several.

:func:`build_report` joins the run's metadata (strategy, fleet size, outcome...) with the
numbers of :func:`sandbox.results.measure.measure` and the controller's steps, and judges
them (:func:`sandbox.results.verdict.verdict`). The renderers read the object:
:mod:`~sandbox.results.text` (terminal), :mod:`~sandbox.results.markdown` (``report.md``),
:mod:`~sandbox.results.chart` (``chart.png``), :mod:`~sandbox.results.junit`; ``report.json``
is :meth:`Report.to_json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.results.chart import write_chart
from sandbox.results.files import write_atomic, write_text_atomic
from sandbox.results.markdown import markdown_page
from sandbox.results.model import Figures, MixedRecord, Report, Rollout, Step
from sandbox.results.overhead import overhead
from sandbox.results.records import Event
from sandbox.results.verdict import DEFAULT_LIMITS, Limits, verdict


def _outcome_from_steps(steps: Sequence[Event]) -> str:
    phases = {s.get("phase") for s in steps}
    if "interrupted" in phases:
        return "interrupted"
    if "rollback-end" in phases or "rollback-start" in phases:
        return "rolled_back"
    if "failed" in phases:
        return "failed"
    return "completed"


def _steps(events: Sequence[Event]) -> tuple[float | None, tuple[Step, ...]]:
    """The steps in time order, ``t`` in seconds since the first (to the ms), and its unix time."""
    ordered = sorted(events, key=lambda e: float(e.get("t") or 0.0))
    if not ordered:
        return None, ()
    t0 = float(ordered[0]["t"])
    return t0, tuple(Step.from_json({**e, "t": round(float(e["t"]) - t0, 3)}) for e in ordered)


def build_report(
    *,
    meta: Mapping[str, Any],
    measured: Mapping[str, Any],
    steps: Sequence[Event],
    limits: Limits = DEFAULT_LIMITS,
) -> Report:
    """The report of one run, judged against ``limits``.

    ``meta`` brings strategy, size, batch, mode, from_version, to_version,
    outcome, duration_s, project, sticky, users and, if known,
    peak_instances; missing ones fall back to what ``measured`` (from
    :func:`sandbox.results.measure.measure`) and ``steps`` imply. ``steps_t0``
    keeps the first step's unix time and the figures' ``window`` the load's, so the chart can
    line them up. ``meta["load"]`` (False when no load ran; unknown counts as on) and
    ``meta["load_alive"]`` (False when the load generator died; unknown counts as alive) feed
    the verdict.
    """
    figures = Figures.from_measured(measured)
    rollout = measured.get("rollout") or {}
    t0, entries = _steps(steps)

    def pick(key: str, fallback: Any) -> Any:
        value = meta.get(key)
        return fallback if value is None else value

    duration = pick("duration_s", rollout.get("duration_s"))
    waits = overhead(duration, steps)
    run = Rollout(
        **{key: meta.get(key) for key in ("strategy", "size", "batch", "mode", "project", "sticky", "lb_apply",
                                          "client_keepalive_s", "users", "load", "load_alive", "seed",
                                          "detach_lag_s")},
        from_version=pick("from_version", figures.exposure.from_version),
        to_version=pick("to_version", figures.exposure.to_version),
        outcome=pick("outcome", _outcome_from_steps(steps)),
        duration_s=duration,
        peak_instances=pick("peak_instances", rollout.get("peak_instances")),
        pick_order=tuple(tuple(b) for b in meta.get("pick_order") or []),
        mixed_checks=tuple(MixedRecord.from_json(r) for r in meta.get("mixed_checks") or []),
        steps=entries,
        steps_t0=t0,
        unavoidable_s=waits["unavoidable_s"],
        overhead_ratio=waits["overhead_ratio"],
    )
    return Report(run, figures, verdict(run, figures, limits))


REPORT_FILES = {"json": "report.json", "chart": "chart.png", "markdown": "report.md"}


def write_report_dir(report: Report, directory: Path) -> dict[str, Path]:
    """Write ``report.json``, ``chart.png`` and ``report.md`` into ``directory``, each atomically
    (OSError on a full disk leaves no half-written file).

    Returns their paths under the keys "json", "chart" and "markdown".
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {key: directory / name for key, name in REPORT_FILES.items()}
    write_text_atomic(paths["json"], json.dumps(report.to_json(), indent=2) + "\n")
    write_atomic(paths["chart"], lambda tmp: write_chart(report, tmp))
    write_text_atomic(paths["markdown"], markdown_page(report, chart_name=paths["chart"].name))
    return paths


def clear_report_dir(directory: Path) -> None:
    """Remove an earlier run's report files from ``directory`` (at the start of a run, so a stale
    ``report.json`` never sits beside new rows)."""
    for name in REPORT_FILES.values():
        (Path(directory) / name).unlink(missing_ok=True)
