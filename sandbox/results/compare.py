"""Several runs side by side: the rows of ``compare.json``, and their cells for the tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sandbox.results.model import Json, Report, num, rollback_rehearsals

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
    "ll_abnormal_closes": "ll abnormal",
    "ll_messages_lost": "ll lost",
    "ll_reconnect_p99_ms": "reconnect p99 ms",
    "ll_peak_reconnects_per_s": "reconnects/s peak",
    "ll_users_switched": "ll switched",
    "old_version_errors": "old-version errors",
    "rollback_safe": "rollback safe",
}

# the long-lived connections' columns (``--ws-users`` / ``--sse-users``), before the verdict, in a
# table where some run had them; in ``compare.json`` always (None for a run without)
LONG_LIVED_FIELDS = ("ll_abnormal_closes", "ll_messages_lost", "ll_reconnect_p99_ms", "ll_peak_reconnects_per_s",
                     "ll_users_switched")

# a roll with --migrate (and --contract): the old version's error answers after the migration ended
# (while it still served: the incompatibility) and the rollback rehearsals' answers, before the
# verdict in a table where some run had a migration; in ``compare.json`` always (None for a run without)
MIGRATION_FIELDS = ("old_version_errors", "rollback_safe")
TEXT_FIELDS = ("strategy", "outcome", "verdict", "rollback_safe")  # shown as given, not as numbers


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
        **_long_lived(report),
        **_migration(report),
        "pass": report.passed,
        "verdict": report.verdict.cell(),
        "failed_checks": report.verdict.failed_names,
    }


def _long_lived(report: Report) -> Json:
    ll = report.figures.long_lived
    if not (ll.ran or report.run.long_lived_users):
        return dict.fromkeys(LONG_LIVED_FIELDS)
    return {"ll_abnormal_closes": ll.abnormal_closes, "ll_messages_lost": ll.messages_lost,
            "ll_reconnect_p99_ms": ll.reconnect_p99_ms, "ll_peak_reconnects_per_s": ll.peak_reconnects_per_s,
            "ll_users_switched": ll.users_switched}


def _migration(report: Report) -> Json:
    """``old_version_errors``: the rolled-from version's error answers to requests sent after the
    migration ended; ``rollback_safe``: each rollback rehearsal's answer, "yes", "no" or "unknown",
    joined as "yes; after contract: no" (None without a migration)."""
    block = report.extra.get("migration")
    seen = block.get("by_version_after") if isinstance(block, Mapping) else None
    old = seen.get(str(report.run.from_version)) if isinstance(seen, Mapping) else None
    rehearsals = rollback_rehearsals(report.extra)
    safe = "; ".join(r.answer if r.after == "rollout" else f"after {r.after}: {r.answer}" for r in rehearsals)
    return {"old_version_errors": (int(old.get("errors", 0)) if isinstance(old, Mapping)
                                   else 0 if isinstance(seen, Mapping) else None),
            "rollback_safe": safe or None}


def compare_fields(reports: Sequence[Report]) -> tuple[str, ...]:
    """The table's columns: :data:`COMPARE_FIELDS`, with :data:`LONG_LIVED_FIELDS` before the
    verdict when some run had long-lived users, and :data:`MIGRATION_FIELDS` when some run had
    a migration."""
    fields: tuple[str, ...] = COMPARE_FIELDS[:-1]
    if any(r.figures.long_lived.ran or r.run.long_lived_users for r in reports):
        fields += LONG_LIVED_FIELDS
    if any("migration" in r.extra or "contract" in r.extra for r in reports):
        fields += MIGRATION_FIELDS
    return (*fields, COMPARE_FIELDS[-1])


def compare_json(reports: Sequence[Report]) -> dict[str, list[Json]]:
    """``compare.json``: one row per report (:func:`compare_row`)."""
    return {"rows": [compare_row(r) for r in reports]}


def compare_cells(reports: Sequence[Report]) -> list[list[str]]:
    """The rows of the comparison table as text, one cell per :func:`compare_fields`."""
    return [
        [num(line.get(key)) if key not in TEXT_FIELDS else str(line.get(key) or "-")
         for key in compare_fields(reports)]
        for line in compare_json(reports)["rows"]
    ]
