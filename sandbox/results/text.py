"""A report for people at a terminal: the summary of one run, the comparison of several.

Plain text, no colour codes. Every check prints itself (:meth:`sandbox.results.model.Check.line`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sandbox.results import analysis
from sandbox.results.compare import COMPARE_HEADERS, compare_cells, compare_fields
from sandbox.results.model import Drain, MixedRecord, Phase, Report, num, rollback_rehearsals
from sandbox.rollout.migrate import STEPS as SCHEMA_STEPS
from sandbox.rollout.mixed import last_line


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "-"


def share_pct(share: float | None) -> str:
    return "-" if share is None else f"{100.0 * float(share):.0f}%"


def versions_line(by_version: Mapping[str, int]) -> str:
    """"v1 120, v2 80": successful answers by version (the rollout's own shown even at 0)."""
    shown = [f"{v} {n}" for v, n in by_version.items() if n or v != "unknown"]
    return ", ".join(shown) or "-"


def _phase_line(name: str, phase: Phase) -> str:
    lat = phase.latency
    return (
        f"  {name:<9} {num(phase.duration_s, ' s'):>8}  "
        f"{phase.requests} req  {num(phase.rps, '/s')}  "
        f"{phase.dropped} dropped  {phase.errors_4xx} 4xx  "
        f"p50/p95/p99 {num(lat.p50)}/{num(lat.p95)}/{num(lat.p99)} ms"
    )


def _drains_line(drains: Sequence[Drain]) -> str | None:
    if not drains:
        return None
    durations = [d.duration_s for d in drains if d.duration_s is not None]
    in_flight = [d.in_flight for d in drains if d.in_flight is not None]
    longest = num(max(durations), " s") if durations else "-"
    most = str(max(in_flight)) if in_flight else "-"
    timed_out = sum(1 for d in drains if d.timed_out)
    return (f"drains           {len(drains)}, longest {longest}, most in flight {most}, "
            f"{timed_out} timed out")


def _exposure_lines(report: Report) -> list[str]:
    exp = report.figures.exposure
    old, new = report.run.from_version or "?", report.run.to_version or "?"
    window = exp.rollout_window
    return [
        f"versions served  {versions_line(report.figures.requests.by_version)}",
        f"mixed window     {num(exp.mixed_window_s, ' s')}  (first {new} answer to last {old} answer)",
        f"mixed fleet      {num(exp.mixed_fleet_s, ' s')} with both versions attached: "
        f"{exp.users_exposed}/{exp.users_total} users ({pct(exp.users_exposed, exp.users_total)}) and "
        f"{exp.requests_exposed} requests ({share_pct(exp.requests_exposed_share)}) sent meanwhile",
        f"rollout window   {num(window.duration_s if window else None, ' s')}  (first to last change of the "
        f"balancer's servers); within it:",
        f"  saw both       {exp.users_saw_both}/{exp.users_total} users ({pct(exp.users_saw_both, exp.users_total)})",
        f"  downgrades     {exp.downgrades} to {exp.users_downgraded} users  "
        f"(got {old} after {new}: forward-compatibility risk)",
        f"  version flips  {exp.version_flips}",
        *([f"  routed         {exp.requests_routed} requests named their version (header X-Sandbox-Version or "
           "cookie sandbox_version): left out of the three lines above and of the mixed window"]
          if exp.requests_routed else []),
        f"contract         {exp.contract_violations} violations  (answers that broke the expected API); "
        f"{exp.users_failed}/{exp.users_total} users met a failure ({share_pct(exp.users_failed_share)}: "
        "a dropped request or a broken contract)",
        f"sessions lost    {exp.sessions_lost}  (users whose session, in use during the rollout, died with its server)",
    ]


def _overhead_line(report: Report) -> str:
    run = report.run
    return (f"overhead         ratio {num(run.overhead_ratio, '', 2)}: "
            f"{num(run.duration_s, ' s', 2)} rollout / {num(run.unavoidable_s, ' s', 2)} "
            "unavoidable waits (per batch: boot to first healthy + drain until idle + stop)")


def _traffic_lines(report: Report) -> list[str]:
    fig, req = report.figures, report.figures.requests
    if not report.run.load_on:
        return ["traffic          none (--no-load): no requests were measured"]
    if not req.total:
        return ["traffic          the load ran but no requests were measured"]
    lat = fig.latency
    return [
        f"requests         {req.total} sent, {req.ok} ok, "
        f"{req.dropped} dropped ({fig.exposure.users_hit}/{fig.exposure.users_total} users hit), "
        f"{req.errors_4xx} 4xx",
        *(f"  dropped        {d.describe(report.run.steps_t0)}" for d in req.dropped_first[:3]),
        f"waiting          {req.slow} slow (> {num(fig.slow_ms, ' ms', 0)}), "
        f"{req.unanswered} unanswered at stop, {req.retried} retried by NGINX",
        f"stall            {num(fig.stall_s, ' s', 2)} from {num(fig.stall_at_s, ' s', 1)}  "
        "(longest stretch with no successful answer, seconds since the load started)",
        f"latency          p50 {num(lat.p50, ' ms')}  p95 {num(lat.p95, ' ms')}  "
        f"p99 {num(lat.p99, ' ms')}  max {num(lat.max, ' ms')}",
        *_exposure_lines(report),
    ]


def summary_text(report: Report) -> str:
    """A plain-text summary for people (no colour codes): the numbers, every check of the
    verdict with its figure and its limit, and a last PASS/FAIL line naming what failed."""
    run = report.run
    lines = [
        f"rolling-sandbox: {run.title()}",
        f"outcome          {run.outcome}, rollout took {num(run.duration_s, ' s')}",
        f"peak containers  {num(run.peak_instances)}  (app containers alive at once)",
        _overhead_line(report),
        *_traffic_lines(report),
    ]
    if report.figures.long_lived.ran:
        lines.append("long-lived       WebSocket and event-stream connections (--ws-users, --sse-users)")
        lines.extend(f"  {what:<14} {figure}" for what, figure in report.figures.long_lived.rows())
    if run.detach_lag_s:
        lines.append(f"detach lag       {num(run.detach_lag_s, ' s')}  (stop signal sent this long before each detach)")
    drains = _drains_line(report.figures.drains)
    if drains:
        lines.append(drains)
    if report.figures.phases and report.figures.requests.total:
        lines.append("phases")
        lines.extend(_phase_line(name, phase) for name, phase in report.figures.phases.items())
    lines.extend(fault_lines(report))
    lines.extend(_order_and_mixed_lines(report))
    lines.extend(rollback_lines(report))
    lines.extend(canary_lines(report))
    lines.append("checks")
    lines.extend(f"  {check.line()}" for check in report.verdict.checks)
    lines.append(report.verdict.line())
    return "\n".join(lines)


def fault_lines(report: Report) -> list[str]:
    """A node lost, and each server that died while attached, with the requests lost to it; then
    the slots served again (``heal-start``)."""
    faults = [f for f in report.extra.get("faults") or [] if isinstance(f, Mapping)]
    t0 = report.run.steps_t0 or 0.0  # the faults' times are unix times; the steps' are since the first step
    lines = [f"node lost        {f['node']} at {num(float(f['t']) - t0, ' s', 1)}: {len(f['servers'])} server(s) "
             f"died with it ({', '.join(f['servers'])}), {f['lost_requests']} requests lost to them"
             for f in faults if f.get("fault") == "node_lost"]
    lines += [f"server died      {f['instance']} at {num(float(f['t']) - t0, ' s', 1)} ({f.get('exit')}), "
              f"{f['lost_requests']} requests lost to it" for f in faults if f.get("fault") == "died"]
    healed = [s for s in report.run.steps if s.phase == "heal-start"]
    lines += [f"replaced         slot(s) {', '.join(map(str, (s.detail or {}).get('slots') or []))} of the dead "
              f"server(s), by a fresh {s.version} server each, from {num(s.t, ' s', 1)}" for s in healed]
    return lines


def canary_lines(report: Report) -> list[str]:
    """The canary's steps: weight, the share of answers from the new version, each criterion."""
    run = report.run
    if not run.canary:
        return []
    new, old = str(run.to_version), str(run.from_version)
    rows = [analysis.TABLE_HEAD, *(analysis.table_row(s, new, old) for s in run.canary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(analysis.TABLE_HEAD))]
    lines = [f"canary           each step: its weight, the share of answers from {new}, new against old"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"  step {s.step}: {s.reason}" for s in run.canary if s.status == "failed" and s.reason]
    return lines


def _order_and_mixed_lines(report: Report) -> list[str]:
    """The pick order, one line per mixed check with the last line of a failing one's output, the
    migration's lines, then one line per hook run."""
    run = report.run
    lines = [f"pick order       {run.order_text()}"] if run.seed is not None and run.pick_order else []
    checks = [r for r in run.mixed_checks if r.name not in SCHEMA_STEPS and r.event is None]
    if checks:
        lines.append("mixed checks     run once both versions were attached (SANDBOX_URL = the load balancer)")
    for record in run.mixed_checks:
        if record.name in SCHEMA_STEPS:
            lines += migration_lines(record, report.extra.get(record.name))
        elif record.event is None:
            lines += _record_lines(record)
    runs = [r for r in run.mixed_checks if r.event is not None]
    if runs:
        lines.append("hooks            run on the host (--hook EVENT=CMD)")
    for record in runs:
        lines += _record_lines(record)
    return lines


def _record_lines(record: MixedRecord) -> list[str]:
    """A mixed check's or a hook's line, and the last line of a failing one's output."""
    lines = [f"  {record.name}: {record.summary()}"]
    hint = last_line(record.stderr_tail or record.stdout_tail)
    if record.status in ("failed", "timed_out") and hint:
        lines.append(f"    {hint}")
    return lines


def migration_lines(record: MixedRecord, block: Any) -> list[str]:
    """The ``--migrate`` command's line, then the answers by serving version from its end on: the
    old version's errors there are what the migration did to the version still serving."""
    when = "after the last batch" if record.batch else "before the first batch"
    lines = [f"{record.name:<16} {when}: {record.summary()}"]
    hint = last_line(record.stderr_tail or record.stdout_tail)
    if record.status in ("failed", "timed_out") and hint:
        lines.append(f"    {hint}")
    seen = block.get("by_version_after") if isinstance(block, Mapping) else None
    if isinstance(seen, Mapping) and seen:
        shown = ", ".join(f"{v} {n.get('errors', 0)} errors of {n.get('answers', 0)} answers"
                          for v, n in seen.items() if isinstance(n, Mapping))
        lines.append(f"  after it        {shown}  (4xx/5xx answers by serving version, sent after it ended)")
    return lines


def rollback_lines(report: Report) -> list[str]:
    """One line per rollback rehearsal: the old version served against the schema, its requests,
    errors and first error, and whether a rollback would work."""
    rehearsals = rollback_rehearsals(report.extra)
    if not rehearsals:
        return []
    return ["rollback         rehearsed: the old version's image served against the database, off the LB",
            *(f"  {r.line()}" for r in rehearsals)]


def compare_text(reports: Sequence[Report]) -> str:
    """The comparison as aligned plain text for the terminal."""
    header = [COMPARE_HEADERS[k] for k in compare_fields(reports)]
    cells = compare_cells(reports)
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, 2, len(row) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(row) for row in cells)])
