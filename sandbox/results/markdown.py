"""``report.md`` (key numbers, the chart, the verdict, phases, steps) and ``compare.md``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sandbox.results import analysis
from sandbox.results.compare import COMPARE_HEADERS, compare_cells, compare_fields
from sandbox.results.model import (
    LongLived,
    MixedRecord,
    Phase,
    Report,
    RollbackRehearsal,
    Step,
    num,
    rollback_rehearsals,
)
from sandbox.results.text import pct, share_pct, versions_line
from sandbox.rollout.migrate import CONTRACT
from sandbox.rollout.migrate import NAME as MIGRATION
from sandbox.rollout.migrate import STEPS as SCHEMA_STEPS

MEANINGS = (
    (
        "dropped",
        "requests sent that got no successful answer: connection errors, resets, "
        "timeouts, 5xx, and requests still unanswered when the load stopped. Target: 0.",
    ),
    ("users hit", "simulated users with at least one dropped request: how far a problem reached."),
    ("4xx", "client errors, counted apart from dropped."),
    (
        "stall",
        "longest stretch of the load with no successful answer completing; "
        "the verdict's limit is --max-stall-s.",
    ),
    ("slow", "requests that waited longer than --slow-ms, or were never answered."),
    (
        "retried",
        "requests NGINX retried on another server (proxy_next_upstream); a retry can "
        "hide a careless rollout for GET, never for POST.",
    ),
    (
        "mixed window",
        "seconds from the first answer by the new version to the last answer by "
        "the old one: both versions served the same users all that time.",
    ),
    (
        "rollout window",
        "from the first change to the load balancer's servers to the last; the exposure "
        "figures below count only requests sent within it.",
    ),
    ("users who saw both", "simulated users that got answers from both versions in the rollout window."),
    (
        "mixed fleet",
        "seconds during which the load balancer sent to both versions, and the users and "
        "requests (and their share) sent meanwhile: what a mixed fleet reached.",
    ),
    ("version flips", "times a user's answer came from another version than their previous one."),
    (
        "downgrades",
        "answers from the old version to a user who had already got the new one: "
        "the forward-compatibility risk.",
    ),
    ("contract violations", "answers that broke the API contract the user expected."),
    (
        "sessions lost",
        "users whose session was in use during the rollout on a server that was then "
        "replaced, and who had to start a new one.",
    ),
    ("peak containers", "most app containers alive at once: the cost of the strategy."),
)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def _key_numbers(report: Report) -> list[tuple[str, str]]:
    run, fig = report.run, report.figures
    req, lat, exp = fig.requests, fig.latency, fig.exposure
    total, both = exp.users_total, exp.users_saw_both
    return [
        ("outcome", str(run.outcome)),
        ("rollout duration", num(run.duration_s, " s")),
        ("peak containers", num(run.peak_instances)),
        ("unavoidable waits", num(run.unavoidable_s, " s", 2)),
        ("overhead ratio", num(run.overhead_ratio, "", 2)),
        ("requests", num(req.total)),
        ("dropped", num(req.dropped)),
        *([("first dropped (seconds since the load started)",
            "<br>".join(d.describe(run.steps_t0) for d in req.dropped_first[:5]))] if req.dropped_first else []),
        ("4xx", num(req.errors_4xx)),
        ("slow", f"{num(req.slow)} (over {num(fig.slow_ms, ' ms', 0)})"),
        ("unanswered at stop", num(req.unanswered)),
        ("retried by NGINX", num(req.retried)),
        ("stall", num(fig.stall_s, " s")),
        ("latency p50 / p95 / p99", f"{num(lat.p50)} / {num(lat.p95)} / {num(lat.p99)} ms"),
        ("versions served", versions_line(req.by_version)),
        ("mixed window", num(exp.mixed_window_s, " s")),
        ("rollout window", num(exp.rollout_window.duration_s if exp.rollout_window else None, " s")),
        (
            "mixed fleet (both versions attached)",
            f"{num(exp.mixed_fleet_s, ' s')}: {num(exp.users_exposed)}/{total} users, "
            f"{num(exp.requests_exposed)} requests ({share_pct(exp.requests_exposed_share)})",
        ),
        ("users who saw both", f"{both}/{total} ({pct(both, total)})"),
        ("downgrades", f"{num(exp.downgrades)} (to {num(exp.users_downgraded)} users)"),
        ("version flips", num(exp.version_flips)),
        *([("requests routed by header or cookie (left out of the mixed window, saw both, downgrades, flips)",
            num(exp.requests_routed))] if exp.requests_routed else []),
        ("contract violations", num(exp.contract_violations)),
        ("sessions lost", num(exp.sessions_lost)),
        ("drains timed out", num(fig.drains_timed_out)),
        ("pick order", run.order_text()),
    ]


def _verdict_section(report: Report) -> list[str]:
    """The "Verdict" part of report.md: the PASS/FAIL line, then every check."""
    rows = [[c.name, c.result, c.figure(), c.limit_text(), c.reason or ""] for c in report.verdict.checks]
    return ["## Verdict", "", f"**{report.verdict.line()}**", "",
            md_table(["check", "result", "figure", "limit", "note"], rows), ""]


def markdown_page(report: Report, *, chart_name: str = "chart.png") -> str:
    """The Markdown page: key numbers, the chart, phases, steps, what the numbers mean."""
    parts = [
        f"# Rollout report: {report.run.title()}",
        "",
        md_table(["measure", "value"], _key_numbers(report)),
        "",
        f"![chart]({chart_name})",
        "",
        *_verdict_section(report),
        *_canary_section(report),
        *_mixed_section(report.run.mixed_checks),
        *_migration_section(report.run.mixed_checks, report.extra.get("migration")),
        *_migration_section(report.run.mixed_checks, report.extra.get("contract"), CONTRACT),
        *_rollback_section(rollback_rehearsals(report.extra)),
        *_hooks_section(report.run.mixed_checks),
        *_long_lived_section(report.figures.long_lived),
        *_phases_section(report.figures.phases),
        *_steps_section(report.run.steps),
        "", "## What the numbers mean", "",
        *(f"- **{name}**: {text}" for name, text in MEANINGS),
    ]
    return "\n".join(parts) + "\n"


def _migration_section(records: Sequence[MixedRecord], block: Any, name: str = MIGRATION) -> list[str]:
    """The ``--migrate`` command (or, ``name`` contract, ``--contract``): how it ended, the answers by
    serving version after it, its output's tail."""
    record = next((r for r in records if r.name == name), None)
    if record is None:
        return []
    when = "after the last batch" if record.batch else "before the first batch"
    title = "Contract step" if name == CONTRACT else "Migration"
    parts = [f"## {title}", "", f"`{record.command}`, run once in a one-off container of the target image "
             f"{when}: {record.summary()}", ""]
    seen = block.get("by_version_after") if isinstance(block, Mapping) else None
    if isinstance(seen, Mapping) and seen:
        parts += ["Answers to requests sent after it ended, by the version that served them (an error is a "
                  "4xx or 5xx answer: the old version's are what the migration did to it):", "",
                  "| version | answers | errors |", "| --- | --- | --- |",
                  *(f"| {v} | {n.get('answers', 0)} | {n.get('errors', 0)} |" for v, n in seen.items()
                    if isinstance(n, Mapping)), ""]
    for label, tail in (("output", record.stdout_tail), ("note", record.stderr_tail)):
        if tail:
            parts += [f"{label} (tail):", "", "```", tail.rstrip(), "```", ""]
    return parts


def _rollback_section(rehearsals: Sequence[RollbackRehearsal]) -> list[str]:
    """The rollback rehearsals: the old version's image served against the database after the
    rollout (and after the contract step), off the load balancer, and whether a rollback would work."""
    if not rehearsals:
        return []
    rows = [(r.after, r.version, r.requests if r.status == "ran" else "-", r.errors if r.status == "ran" else "-",
             r.answer, r.first_error or r.reason or "") for r in rehearsals]
    return ["## Rollback safety", "",
            "The old version's image served against the database as it was then, off the load balancer, "
            "under the toy's request mix (an error is a 4xx/5xx answer or none):", "",
            md_table(["after", "old version", "requests", "errors", "rollback safe", "first error"], rows), ""]


def _canary_section(report: Report) -> list[str]:
    """The canary's steps: weight, observed share, answers per version, each criterion and its status."""
    run = report.run
    if not run.canary:
        return []
    new, old = str(run.to_version), str(run.from_version)
    rows = [list(analysis.table_row(s, new, old)) for s in run.canary]
    notes = [f"- step {s.step}: {s.reason}" for s in run.canary if s.status == "failed" and s.reason]
    return ["## Canary", "",
            f"At each step the load balancer sent *weight* of the requests to {new}; *share* is the share of "
            f"answers that came from {new} over the step's window, then each criterion compares {new} with "
            f"{old} over that same window (error ratio, p99 by the `--max-p99-ms` rule, contract violations, "
            "mixed checks). INCONCLUSIVE (too few answers) extends the step, never passes it; a FAIL aborts.",
            "", md_table(list(analysis.TABLE_HEAD), rows), "", *notes, *([""] if notes else [])]


def _mixed_section(records: Sequence[MixedRecord]) -> list[str]:
    """Each mixed check: its command, how it ended, and the tail of its output."""
    records = [r for r in records if r.name not in SCHEMA_STEPS and r.event is None]  # schema steps, hooks: own
    if not records:
        return []
    parts = ["## Mixed checks", "", "Run once, while both versions were attached, with `SANDBOX_URL` set.", ""]
    for r in records:
        parts += [f"### {r.name}: {r.summary()}", "", f"`{r.command}`", ""]
        for label, tail in (("stdout", r.stdout_tail), ("stderr", r.stderr_tail)):
            if tail:
                parts += [f"{label} (tail):", "", "```", tail.rstrip(), "```", ""]
    return parts


def _hooks_section(records: Sequence[MixedRecord]) -> list[str]:
    """Each hook run: its event (and batch), command, how it ended, and the tail of its output."""
    records = [r for r in records if r.event is not None]
    if not records:
        return []
    parts = ["## Hooks", "", "Run on the host with `SANDBOX_URL`, `SANDBOX_PROJECT`, `SANDBOX_VERSIONS`, "
             "`SANDBOX_BATCH` and `DATABASE_URL` set.", "",
             md_table(["hook", "event", "batch", "result", "exit code", "duration", "command"],
                      [[r.name, r.event, "" if r.batch is None else r.batch,
                        r.status + (f" ({r.reason})" if r.reason else ""),
                        "" if r.exit_code is None else r.exit_code, num(r.duration_s, " s", 3), f"`{r.command}`"]
                       for r in records]), ""]
    for r in records:
        for label, tail in (("stdout", r.stdout_tail), ("stderr", r.stderr_tail)):
            if tail:
                parts += [f"{r.name} {label} (tail):", "", "```", tail.rstrip(), "```", ""]
    return parts


LONG_LIVED_MEANING = (
    "Users of `--ws-users` / `--sse-users` each hold one connection and reconnect when it ends. "
    "A **clean** close is the server's goodbye (WebSocket close 1000/1001/1012/1013, an event stream "
    "ending with `retry:`); **abnormal** is none (1006: the connection dropped; an event stream cut). "
    "**Lost** messages are numbers missing below the last one a connection received. A **reconnect** "
    "is timed from the end of a user's connection to its next one open, including the random wait "
    "below the server's hint that spreads the reconnects; the **peak** is the most within one second."
)


def _long_lived_section(figures: LongLived) -> list[str]:
    if not figures.ran:
        return []
    return ["## Long-lived connections", "", md_table(["measure", "value"], figures.rows()), "",
            LONG_LIVED_MEANING, ""]


def _phases_section(phases: Mapping[str, Phase]) -> list[str]:
    if not phases:
        return []
    rows = [[name, num(p.duration_s, " s"), p.requests, num(p.rps), p.dropped, p.errors_4xx,
             num(p.latency.p50), num(p.latency.p95), num(p.latency.p99)] for name, p in phases.items()]
    header = ["phase", "duration", "requests", "req/s", "dropped", "4xx", "p50 ms", "p95 ms", "p99 ms"]
    return ["## Phases", "", md_table(header, rows), ""]


def _steps_section(steps: Sequence[Step]) -> list[str]:
    if not steps:
        return ["## Steps", "", "No steps were recorded."]
    rows = [[f"{s.t:.3f}", s.phase, s.instance or "", s.version or "", "" if s.batch is None else s.batch]
            for s in steps]
    return ["## Steps", "", md_table(["t (s)", "phase", "instance", "version", "batch"], rows)]


def compare_table(reports: Sequence[Report]) -> str:
    """The comparison of several reports as a Markdown table."""
    return md_table([COMPARE_HEADERS[k] for k in compare_fields(reports)], compare_cells(reports)) + "\n"
