"""Several runs side by side: the rows of ``compare.json``, and their cells for the tables."""

from __future__ import annotations

from collections.abc import Sequence

from sandbox.results.model import Json, Report, num

COMPARE_FIELDS = (
    "strategy",
    "batch",
    "outcome",
    "duration_s",
    "peak_instances",
    "dropped",
    "users_hit",
    "users_total",
    "stall_s",
    "mixed_window_s",
    "users_saw_both",
    "downgrades",
    "contract_violations",
    "sessions_lost",
    "verdict",
)

COMPARE_HEADERS = {
    "strategy": "strategy",
    "batch": "batch",
    "outcome": "outcome",
    "duration_s": "duration s",
    "peak_instances": "peak containers",
    "dropped": "dropped",
    "users_hit": "users hit",
    "users_total": "users",
    "stall_s": "stall s",
    "mixed_window_s": "mixed window s",
    "users_saw_both": "saw both",
    "downgrades": "downgrades",
    "contract_violations": "contract violations",
    "sessions_lost": "sessions lost",
    "verdict": "verdict",
}


def compare_row(report: Report) -> Json:
    """One line of ``compare.json``: the numbers that tell strategies apart."""
    run, fig, exp = report.run, report.figures, report.figures.exposure
    return {
        "strategy": run.strategy,
        "batch": run.batch,
        "outcome": run.outcome,
        "duration_s": run.duration_s,
        "peak_instances": run.peak_instances,
        "requests": fig.requests.total,
        "dropped": fig.requests.dropped,
        "users_hit": exp.users_hit,
        "users_total": exp.users_total,
        "stall_s": fig.stall_s,
        "mixed_window_s": exp.mixed_window_s,
        "users_saw_both": exp.users_saw_both,
        "users_saw_both_share": exp.users_saw_both_share,
        "downgrades": exp.downgrades,
        "contract_violations": exp.contract_violations,
        "sessions_lost": exp.sessions_lost,
        "version_flips": exp.version_flips,
        "mixed_fleet_s": exp.mixed_fleet_s,
        "users_exposed_share": exp.users_exposed_share,
        "requests_exposed_share": exp.requests_exposed_share,
        "pass": report.passed,
        "verdict": report.verdict.cell(),
        "failed_checks": report.verdict.failed_names,
    }


def compare_json(reports: Sequence[Report]) -> dict[str, list[Json]]:
    """``compare.json``: one row per report (:func:`compare_row`)."""
    return {"rows": [compare_row(r) for r in reports]}


def compare_cells(reports: Sequence[Report]) -> list[list[str]]:
    """The rows of the comparison table as text, one cell per :data:`COMPARE_FIELDS`."""
    return [
        [num(line.get(key)) if key not in ("strategy", "outcome", "verdict") else str(line.get(key) or "-")
         for key in COMPARE_FIELDS]
        for line in compare_json(reports)["rows"]
    ]
