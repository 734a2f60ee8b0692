"""Present a measured run: a report dict, a terminal summary, JSON, a chart, Markdown.

:func:`build_report` joins the run's metadata (strategy, fleet size, outcome...)
with the numbers of :func:`sandbox.results.measure.measure` and the controller's steps.
Everything else here only reads that dict, so a saved ``report.json`` can be
rendered again later. matplotlib is imported inside :func:`write_chart` only,
so importing this module stays fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.results.overhead import overhead
from sandbox.results.records import Event
from sandbox.results.verdict import DEFAULT_LIMITS, Limits, failed_names, load_was_on, verdict, verdict_of
from sandbox.rollout import strategies
from sandbox.rollout.mixed import last_line
from sandbox.rollout.mixed import summary as mixed_summary

OUTCOMES = ("completed", "rolled_back", "failed", "interrupted")

STEP_EXTRA_FIELDS = ("version", "slot", "batch", "address", "detail")

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


# --------------------------------------------------------------------------- the report dict


def _outcome_from_steps(steps: Sequence[Mapping[str, Any]]) -> str:
    phases = {s.get("phase") for s in steps}
    if "interrupted" in phases:
        return "interrupted"
    if "rollback-end" in phases or "rollback-start" in phases:
        return "rolled_back"
    if "failed" in phases:
        return "failed"
    return "completed"


def _step_entries(steps: Sequence[Mapping[str, Any]]) -> tuple[float | None, list[dict[str, Any]]]:
    ordered = sorted(steps, key=lambda e: float(e.get("t") or 0.0))
    if not ordered:
        return None, []
    t0 = float(ordered[0]["t"])
    entries = []
    for step in ordered:
        entry: dict[str, Any] = {
            "t": round(float(step["t"]) - t0, 3),
            "phase": step.get("phase"),
            "instance": step.get("instance"),
        }
        for key in STEP_EXTRA_FIELDS:
            if step.get(key) is not None:
                entry[key] = step[key]
        entries.append(entry)
    return t0, entries


def build_report(
    *,
    meta: Mapping[str, Any],
    measured: Mapping[str, Any],
    steps: Sequence[Event],
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """The report of one run, JSON-able.

    ``meta`` brings strategy, size, batch, mode, from_version, to_version,
    outcome, duration_s, project, sticky, users and, if known,
    peak_instances; missing ones fall back to what ``measured`` (from
    :func:`sandbox.results.measure.measure`) and ``steps`` imply. Step times are
    seconds since the first step, rounded to the ms; ``steps_t0`` keeps the
    first step's unix time and ``window`` the load's, so the chart can line
    them up.

    ``meta["load"]`` (False when no load ran; unknown counts as on) and
    ``meta["load_alive"]`` (False when the load generator died; unknown counts
    as alive) feed the ``verdict``: every check against ``limits``
    (:func:`sandbox.results.verdict.verdict`).
    """
    exposure = dict(measured.get("exposure") or {})
    rollout = measured.get("rollout") or {}
    requests = measured.get("requests") or {}
    latency = measured.get("latency_ms") or {}
    t0, entries = _step_entries(steps)

    def pick(key: str, fallback: Any) -> Any:
        value = meta.get(key)
        return fallback if value is None else value

    report: dict[str, Any] = {key: meta.get(key) for key in ("strategy", "size", "batch", "mode")}
    report.update({
        "from_version": pick("from_version", exposure.get("from_version")),
        "to_version": pick("to_version", exposure.get("to_version")),
        "outcome": pick("outcome", _outcome_from_steps(steps)),
        "duration_s": pick("duration_s", rollout.get("duration_s")),
        "peak_instances": pick("peak_instances", rollout.get("peak_instances")),
    })
    report.update({key: meta.get(key) for key in (
        "project", "sticky", "lb_apply", "client_keepalive_s", "users", "load", "load_alive")})
    report.update({"seed": meta.get("seed"), "pick_order": list(meta.get("pick_order") or []),
                   "mixed_checks": [dict(r) for r in meta.get("mixed_checks") or []]})
    report.update({
        "requests": dict(requests),
        "latency_ms": {k: latency.get(k) for k in ("p50", "p95", "p99", "max")},
        "stall_s": measured.get("stall_s"),
        "stall_at_s": measured.get("stall_at_s"),
        "slow": requests.get("slow"),
        "slow_ms": (measured.get("settings") or {}).get("slow_ms"),
        "exposure": exposure,
        "phases": dict(measured.get("phases") or {}),
        "drains": list(measured.get("drains") or []),
        "steps": entries,
        "steps_t0": t0,
        "window": dict(measured.get("window") or {}),
    })
    report.update(overhead(report["duration_s"], steps))
    report["verdict"] = verdict(report, limits).as_dict()
    return report


# --------------------------------------------------------------------------- formatting helpers


def _num(value: Any, unit: str = "", digits: int = 1) -> str:
    """A number for people: "-" when unknown, ints plain, floats to ``digits``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = str(value) if isinstance(value, int) else f"{value:.{digits}f}"
    return f"{text}{unit}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "-"


def _versions_line(by_version: Mapping[str, int]) -> str:
    toy = not any(n for v, n in by_version.items() if v not in ("v1", "v2", "unknown"))
    shown = [f"{v} {n}" for v, n in by_version.items() if n or (toy and v in ("v1", "v2"))]
    return ", ".join(shown) or "-"


def _title(report: Mapping[str, Any]) -> str:
    parts = [str(report.get("strategy") or "run")]
    if report.get("size") is not None:
        parts.append(f"{report['size']} servers")
    batch = report.get("batch")
    if batch is not None and strategies.of(report.get("strategy")).title_names_batch(batch):
        parts.append(f"batch {batch}")
    if report.get("mode"):
        parts.append(str(report["mode"]))
    if report.get("from_version") and report.get("to_version"):
        parts.append(f"{report['from_version']} -> {report['to_version']}")
    return ", ".join(parts)


def _figure(name: str, value: Any, report: Mapping[str, Any]) -> str:
    if value is None:
        return "-"
    if name == "stall_s":
        return _num(value, " s", 2)
    if name == "p99_ratio":
        return _num(value, "x", 2)
    if name == "slow":
        return f"{value} over {_num(report.get('slow_ms'), ' ms', 0)}"
    if name == "load_alive":
        return "yes" if value else "no"
    if name.startswith("mixed_check"):
        return f"exit {value}"
    return str(value)


def _limit(name: str, limit: Any) -> str:
    if name == "outcome":
        return f"must be {limit}"
    if name.startswith("mixed_check"):
        return f"must exit {limit}"
    if name == "load_alive":
        return "must be yes"
    if name == "requests_measured":
        return f"min {limit}"
    if name == "stall_s":
        return f"max {_num(float(limit), ' s', 2)}"
    if name == "p99_ratio":
        return f"max {_num(float(limit), 'x', 2)}"
    return f"max {limit}"


def check_line(check: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """One check for people: "FAIL stall_s  5.02 s (max 1.00 s)"."""
    name = str(check.get("name"))
    text = f"{_result(check)} {name:<20} " \
           f"{_figure(name, check.get('value'), report)} ({_limit(name, check.get('limit'))})"
    return f"{text}: {check['note']}" if check.get("note") else text


def _result(check: Mapping[str, Any]) -> str:
    """PASS, FAIL, or SKIP for a check that could not run (it holds, and says so)."""
    return "SKIP" if check.get("skipped") else "PASS" if check.get("pass") else "FAIL"


def verdict_line(report: Mapping[str, Any]) -> str:
    """"PASS: all 9 checks held" (naming those skipped) or "FAIL: stall_s ...; mixed_check_1 exit 3
    (must exit 0): CMD" (the checks that failed, a mixed check with its command)."""
    result = verdict_of(report)
    checks = list(result.get("checks") or [])
    if result.get("pass"):
        skipped = [str(c.get("name")) for c in checks if c.get("skipped")]
        return f"PASS: all {len(checks)} checks held" + (
            f" ({len(skipped)} not run: {', '.join(skipped)})" if skipped else "")
    failed = [c for c in checks if not c.get("pass")]
    return "FAIL: " + "; ".join(
        f"{c.get('name')} {_figure(str(c.get('name')), c.get('value'), report)} "
        f"({_limit(str(c.get('name')), c.get('limit'))})"
        + (f": {c.get('note')}" if str(c.get("name")).startswith("mixed_check") else "")
        for c in failed) if failed else "FAIL: no checks"


def _phase_line(name: str, phase: Mapping[str, Any]) -> str:
    lat = phase.get("latency_ms") or {}
    return (
        f"  {name:<9} {_num(phase.get('duration_s'), ' s'):>8}  "
        f"{phase.get('requests', 0)} req  {_num(phase.get('rps'), '/s')}  "
        f"{phase.get('dropped', 0)} dropped  {phase.get('errors_4xx', 0)} 4xx  "
        f"p50/p95/p99 {_num(lat.get('p50'))}/{_num(lat.get('p95'))}/{_num(lat.get('p99'))} ms"
    )


def _drains_line(drains: Sequence[Mapping[str, Any]]) -> str | None:
    if not drains:
        return None
    durations = [float(d["duration_s"]) for d in drains if d.get("duration_s") is not None]
    in_flight = [int(d["in_flight"]) for d in drains if d.get("in_flight") is not None]
    longest = _num(max(durations), " s") if durations else "-"
    most = str(max(in_flight)) if in_flight else "-"
    timed_out = sum(1 for d in drains if d.get("timed_out"))
    return (f"drains           {len(drains)}, longest {longest}, most in flight {most}, "
            f"{timed_out} timed out")


# --------------------------------------------------------------------------- terminal summary


def _exposure_lines(report: Mapping[str, Any]) -> list[str]:
    req = report.get("requests") or {}
    exp = report.get("exposure") or {}
    old, new = report.get("from_version") or "v1", report.get("to_version") or "v2"
    users_total = int(exp.get("users_total") or 0)
    saw_both = int(exp.get("users_saw_both") or 0)
    window = exp.get("rollout_window") or {}
    return [
        f"versions served  {_versions_line(req.get('by_version') or {})}",
        f"mixed window     {_num(exp.get('mixed_window_s'), ' s')}  "
        f"(first {new} answer to last {old} answer)",
        f"mixed fleet      {_num(exp.get('mixed_fleet_s'), ' s')} with both versions attached: "
        f"{exp.get('users_exposed', 0)}/{users_total} users "
        f"({_pct(int(exp.get('users_exposed') or 0), users_total)}) and "
        f"{exp.get('requests_exposed', 0)} requests ({_share_pct(exp.get('requests_exposed_share'))}) sent meanwhile",
        f"rollout window   {_num(window.get('duration_s'), ' s')}  (first to last change of the "
        f"balancer's servers); within it:",
        f"  saw both       {saw_both}/{users_total} users ({_pct(saw_both, users_total)})",
        f"  downgrades     {exp.get('downgrades', 0)} to {exp.get('users_downgraded', 0)} users  "
        f"(got {old} after {new}: forward-compatibility risk)",
        f"  version flips  {exp.get('version_flips', 0)}",
        f"contract         {exp.get('contract_violations', 0)} violations  "
        "(answers that broke the expected API)",
        f"sessions lost    {exp.get('sessions_lost', 0)}  "
        "(users whose session, in use during the rollout, died with its server)",
    ]


def _share_pct(share: Any) -> str:
    return "-" if share is None else f"{100.0 * float(share):.0f}%"


def _overhead_line(report: Mapping[str, Any]) -> str:
    return (f"overhead         ratio {_num(report.get('overhead_ratio'), '', 2)}: "
            f"{_num(report.get('duration_s'), ' s', 2)} rollout / {_num(report.get('unavoidable_s'), ' s', 2)} "
            "unavoidable waits (per batch: boot to first healthy + drain until idle + stop)")


def summary_text(report: Mapping[str, Any]) -> str:
    """A plain-text summary for people (no colour codes): the numbers, every check of the
    verdict with its figure and its limit, and a last PASS/FAIL line naming what failed."""
    req = report.get("requests") or {}
    lat = report.get("latency_ms") or {}
    exp = report.get("exposure") or {}
    users_total = int(exp.get("users_total") or 0)
    lines = [
        f"rolling-sandbox: {_title(report)}",
        f"outcome          {report.get('outcome')}, "
        f"rollout took {_num(report.get('duration_s'), ' s')}",
        f"peak containers  {_num(report.get('peak_instances'))}  (app containers alive at once)",
        _overhead_line(report),
    ]
    if not load_was_on(report):
        lines.append("traffic          none (--no-load): no requests were measured")
    elif not req.get("total"):
        lines.append("traffic          the load ran but no requests were measured")
    else:
        lines += [
            f"requests         {req.get('total', 0)} sent, {req.get('ok', 0)} ok, "
            f"{req.get('dropped', 0)} dropped ({exp.get('users_hit', 0)}/{users_total} users hit), "
            f"{req.get('errors_4xx', 0)} 4xx",
            f"waiting          {req.get('slow', 0)} slow (> {_num(report.get('slow_ms'), ' ms', 0)}), "
            f"{req.get('unanswered', 0)} unanswered at stop, "
            f"{req.get('retried', 0)} retried by NGINX",
            f"stall            {_num(report.get('stall_s'), ' s', 2)} from "
            f"{_num(report.get('stall_at_s'), ' s', 1)}  (longest stretch with no successful answer, "
            "seconds since the load started)",
            f"latency          p50 {_num(lat.get('p50'), ' ms')}  p95 {_num(lat.get('p95'), ' ms')}  "
            f"p99 {_num(lat.get('p99'), ' ms')}  max {_num(lat.get('max'), ' ms')}",
            *_exposure_lines(report),
        ]
    drains = _drains_line(report.get("drains") or [])
    if drains:
        lines.append(drains)
    phases = report.get("phases") or {}
    if phases and req.get("total"):
        lines.append("phases")
        lines.extend(_phase_line(name, phase) for name, phase in phases.items())
    lines.extend(_order_and_mixed_lines(report))
    lines.append("checks")
    lines.extend(f"  {check_line(c, report)}" for c in verdict_of(report).get("checks") or [])
    lines.append(verdict_line(report))
    return "\n".join(lines)


def order_text(report: Mapping[str, Any]) -> str:
    """"[3] [1] [2] (seed 7)": the slots of each batch in the order they were picked."""
    batches = " ".join(f"[{', '.join(map(str, b))}]" for b in report.get("pick_order") or []) or "-"
    seed = report.get("seed")
    return f"{batches} ({'seed ' + str(seed) if seed is not None else 'slot order, no --seed'})"


def _order_and_mixed_lines(report: Mapping[str, Any]) -> list[str]:
    """The pick order, and one line per mixed check with the last line of a failing one's output."""
    seeded = report.get("seed") is not None and report.get("pick_order")
    lines = [f"pick order       {order_text(report)}"] if seeded else []
    records = report.get("mixed_checks") or []
    if records:
        lines.append("mixed checks     run once both versions were attached (SANDBOX_URL = the load balancer)")
    for record in records:
        lines.append(f"  {record.get('name')}: {mixed_summary(record)}")
        hint = last_line(str(record.get("stderr_tail") or record.get("stdout_tail") or ""))
        if record.get("status") in ("failed", "timed_out") and hint:
            lines.append(f"    {hint}")
    return lines


# --------------------------------------------------------------------------- files


def write_report_dir(report: Mapping[str, Any], directory: Path) -> dict[str, Path]:
    """Write ``report.json``, ``chart.png`` and ``report.md`` into ``directory``.

    Returns their paths under the keys "json", "chart" and "markdown".
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": directory / "report.json",
        "chart": directory / "chart.png",
        "markdown": directory / "report.md",
    }
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_chart(report, paths["chart"])
    paths["markdown"].write_text(
        markdown_page(report, chart_name=paths["chart"].name), encoding="utf-8"
    )
    return paths


# --------------------------------------------------------------------------- chart

V1_COLOR = "#4C72B0"
V2_COLOR = "#DD8452"
DROP_COLOR = "#C44E52"
P99_COLOR = "#8172B3"
STEP_COLORS = {
    "detach": "#E1812C",
    "drain": "#B8860B",
    "stop": "#C44E52",
    "kill": "#8B0000",
    "swap": "#8172B3",
    "start": "#7F7F7F",
    "ready": "#55A868",
    "attach": "#2E8B57",
    "switch": "#000000",
}
MARKER_PHASES = (
    "rollout-start",
    "rollout-end",
    "rollback-start",
    "rollback-end",
    "failed",
    "interrupted",
)


def _version_colors(from_v: str, to_v: str) -> dict[str, str]:
    """The old version is always blue and the new one orange, whichever way it rolls."""
    return {from_v: V1_COLOR, to_v: V2_COLOR}


def write_chart(report: Mapping[str, Any], path: Path) -> Path:
    """Draw the run as a PNG: version share, p99 latency and drops per second, with steps.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    exp = report.get("exposure") or {}
    buckets = list(exp.get("timeline") or [])
    from_v = str(report.get("from_version") or "v1")
    to_v = str(report.get("to_version") or "v2")
    colors = _version_colors(from_v, to_v)

    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    share_ax, p99_ax, drop_ax = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [2.0, 1.3, 1.0]}
    )
    if buckets:
        end = max(buckets[-1]["t"] + 1, float((report.get("window") or {}).get("duration_s") or 0))
        # each second's value at its middle, held flat to both edges of the window
        xs = [0.0] + [b["t"] + 0.5 for b in buckets] + [end]
        padded = [buckets[0], *buckets, buckets[-1]]
        versions = list(dict.fromkeys((from_v, to_v)))
        totals = [sum(b.get(v, 0) for v in versions) for b in padded]
        shares = [
            [
                100.0 * b.get(v, 0) / tot if tot else 0.0
                for b, tot in zip(padded, totals, strict=True)
            ]
            for v in versions
        ]
        share_ax.stackplot(
            xs,
            *shares,
            labels=[f"{v} answers" for v in versions],
            colors=[colors.get(v, V1_COLOR) for v in versions],
            alpha=0.85,
        )
        p99 = [b["p99_ms"] if b.get("p99_ms") is not None else math.nan for b in buckets]
        p99_ax.plot(xs[1:-1], p99, color=P99_COLOR, lw=1.4, marker=".", ms=3, label="p99")
        slow_ms = report.get("slow_ms")
        finite = [v for v in p99 if not math.isnan(v)]
        if slow_ms and finite and max(finite) >= slow_ms / 2:
            p99_ax.axhline(slow_ms, color=DROP_COLOR, ls=":", lw=1, label="slow")
        drop_ax.bar(
            [b["t"] for b in buckets],
            [b.get("dropped", 0) for b in buckets],
            width=1.0,
            align="edge",
            color=DROP_COLOR,
            label="dropped",
        )
        share_ax.set_xlim(0, end)
    else:
        share_ax.text(
            0.5,
            0.5,
            "no traffic recorded",
            ha="center",
            va="center",
            transform=share_ax.transAxes,
            color="#777777",
        )

    share_ax.set_ylim(0, 100)
    share_ax.set_ylabel("share of answers (%)")
    p99_ax.set_ylabel("p99 latency (ms)")
    drop_ax.set_ylabel("dropped / s")
    drop_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    drop_ax.set_ylim(bottom=0, top=max(1.0, drop_ax.get_ylim()[1]))  # 0 dropped: a flat floor, not -0.05..0.05
    drop_ax.set_xlabel("seconds since the load started")
    for ax in (share_ax, p99_ax, drop_ax):
        ax.grid(True, axis="y", color="#dddddd", lw=0.6)
        ax.set_axisbelow(True)

    phases_seen = _draw_steps(report, (share_ax, p99_ax, drop_ax))
    handles, labels = share_ax.get_legend_handles_labels()
    for phase in phases_seen:
        handles.append(Line2D([], [], color=STEP_COLORS.get(phase, "#000000"), lw=1))
        labels.append(phase)
    if handles:
        share_ax.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False
        )
    if p99_ax.get_legend_handles_labels()[0]:
        p99_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

    fig.suptitle(
        f"{_title(report)}: {report.get('outcome')}  "
        f"({_num((report.get('requests') or {}).get('dropped', 0))} dropped, "
        f"mixed window {_num(exp.get('mixed_window_s'), ' s')})",
        fontsize=11,
    )
    fig.savefig(path, format="png")
    return Path(path)


def _step_offset(report: Mapping[str, Any]) -> float:
    """Seconds to subtract from a step's ``t`` to place it on the load's time axis."""
    start = (report.get("window") or {}).get("start")
    t0 = report.get("steps_t0")
    if start is None or t0 is None:
        return 0.0
    return float(start) - float(t0)


def _draw_steps(report: Mapping[str, Any], axes: Sequence[Any]) -> list[str]:
    """Vertical lines for steps, a light "batch n" label per batch; returns phases drawn."""
    offset = _step_offset(report)
    seen: list[str] = []
    batches_labelled: set[Any] = set()
    top = axes[0]
    for step in report.get("steps") or []:
        phase = str(step.get("phase"))
        x = float(step["t"]) - offset
        if phase in MARKER_PHASES:
            for ax in axes:
                ax.axvline(x, color="#222222", ls="--", lw=1.0, alpha=0.7)
            top.annotate(
                phase,
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=7,
                color="#222222",
                rotation=90,
                va="bottom",
            )
            continue
        if phase not in STEP_COLORS:
            continue
        if phase not in seen:
            seen.append(phase)
        for ax in axes:
            ax.axvline(x, color=STEP_COLORS[phase], lw=0.8, alpha=0.45)
        batch = step.get("batch")
        if batch is not None and batch not in batches_labelled:
            batches_labelled.add(batch)
            top.annotate(
                f"batch {batch}",
                (x, 0.97),
                xycoords=("data", "axes fraction"),
                xytext=(2, 0),
                textcoords="offset points",
                fontsize=7,
                color="#555555",
                va="top",
            )
    return seen


# --------------------------------------------------------------------------- Markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def _key_numbers(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    req = report.get("requests") or {}
    lat = report.get("latency_ms") or {}
    exp = report.get("exposure") or {}
    total = int(exp.get("users_total") or 0)
    both = int(exp.get("users_saw_both") or 0)
    return [
        ("outcome", str(report.get("outcome"))),
        ("rollout duration", _num(report.get("duration_s"), " s")),
        ("peak containers", _num(report.get("peak_instances"))),
        ("unavoidable waits", _num(report.get("unavoidable_s"), " s", 2)),
        ("overhead ratio", _num(report.get("overhead_ratio"), "", 2)),
        ("requests", _num(req.get("total", 0))),
        ("dropped", _num(req.get("dropped", 0))),
        ("4xx", _num(req.get("errors_4xx", 0))),
        ("slow", f"{_num(req.get('slow', 0))} (over {_num(report.get('slow_ms'), ' ms', 0)})"),
        ("unanswered at stop", _num(req.get("unanswered", 0))),
        ("retried by NGINX", _num(req.get("retried", 0))),
        ("stall", _num(report.get("stall_s"), " s")),
        (
            "latency p50 / p95 / p99",
            f"{_num(lat.get('p50'))} / {_num(lat.get('p95'))} / {_num(lat.get('p99'))} ms",
        ),
        ("versions served", _versions_line(req.get("by_version") or {})),
        ("mixed window", _num(exp.get("mixed_window_s"), " s")),
        ("rollout window", _num((exp.get("rollout_window") or {}).get("duration_s"), " s")),
        (
            "mixed fleet (both versions attached)",
            f"{_num(exp.get('mixed_fleet_s'), ' s')}: {_num(exp.get('users_exposed', 0))}/{total} users, "
            f"{_num(exp.get('requests_exposed', 0))} requests ({_share_pct(exp.get('requests_exposed_share'))})",
        ),
        ("users who saw both", f"{both}/{total} ({_pct(both, total)})"),
        (
            "downgrades",
            f"{_num(exp.get('downgrades', 0))} (to {_num(exp.get('users_downgraded', 0))} users)",
        ),
        ("version flips", _num(exp.get("version_flips", 0))),
        ("contract violations", _num(exp.get("contract_violations", 0))),
        ("sessions lost", _num(exp.get("sessions_lost", 0))),
        ("drains timed out", _num(sum(1 for d in report.get("drains") or [] if d.get("timed_out")))),
        ("pick order", order_text(report)),
    ]


def _verdict_section(report: Mapping[str, Any]) -> list[str]:
    """The "Verdict" part of report.md: the PASS/FAIL line, then every check."""
    rows = [
        [c.get("name"), _result(c), _figure(str(c.get("name")), c.get("value"), report),
         _limit(str(c.get("name")), c.get("limit")), c.get("note") or ""]
        for c in verdict_of(report).get("checks") or []
    ]
    return ["## Verdict", "", f"**{verdict_line(report)}**", "",
            _md_table(["check", "result", "figure", "limit", "note"], rows), ""]


def markdown_page(report: Mapping[str, Any], *, chart_name: str = "chart.png") -> str:
    """The Markdown page: key numbers, the chart, phases, steps, what the numbers mean."""
    parts = [
        f"# Rollout report: {_title(report)}",
        "",
        _md_table(["measure", "value"], _key_numbers(report)),
        "",
        f"![chart]({chart_name})",
        "",
        *_verdict_section(report),
        *_mixed_section(report.get("mixed_checks") or []),
        *_phases_section(report.get("phases") or {}),
        *_steps_section(report.get("steps") or []),
        "", "## What the numbers mean", "",
        *(f"- **{name}**: {text}" for name, text in MEANINGS),
    ]
    return "\n".join(parts) + "\n"


def _mixed_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each mixed check: its command, how it ended, and the tail of its output."""
    if not records:
        return []
    parts = ["## Mixed checks", "", "Run once, while both versions were attached, with `SANDBOX_URL` set.", ""]
    for r in records:
        parts += [f"### {r.get('name')}: {mixed_summary(r)}", "", f"`{r.get('command')}`", ""]
        for stream in ("stdout_tail", "stderr_tail"):
            if r.get(stream):
                parts += [f"{stream.replace('_tail', '')} (tail):", "", "```", str(r[stream]).rstrip(), "```", ""]
    return parts


def _phases_section(phases: Mapping[str, Any]) -> list[str]:
    if not phases:
        return []
    rows = []
    for name, p in phases.items():
        lat = p.get("latency_ms") or {}
        rows.append([name, _num(p.get("duration_s"), " s"), p.get("requests", 0), _num(p.get("rps")),
                     p.get("dropped", 0), p.get("errors_4xx", 0),
                     _num(lat.get("p50")), _num(lat.get("p95")), _num(lat.get("p99"))])
    header = ["phase", "duration", "requests", "req/s", "dropped", "4xx", "p50 ms", "p95 ms", "p99 ms"]
    return ["## Phases", "", _md_table(header, rows), ""]


def _steps_section(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    if not steps:
        return ["## Steps", "", "No steps were recorded."]
    rows = [[f"{s['t']:.3f}", s.get("phase"), s.get("instance") or "", s.get("version") or "",
             "" if s.get("batch") is None else s["batch"]] for s in steps]
    return ["## Steps", "", _md_table(["t (s)", "phase", "instance", "version", "batch"], rows)]


# --------------------------------------------------------------------------- comparing runs


def compare_json(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One line per report: the numbers that tell strategies apart."""
    out = []
    for report in rows:
        req = report.get("requests") or {}
        exp = report.get("exposure") or {}
        out.append(
            {
                "strategy": report.get("strategy"),
                "batch": report.get("batch"),
                "outcome": report.get("outcome"),
                "duration_s": report.get("duration_s"),
                "peak_instances": report.get("peak_instances"),
                "requests": req.get("total"),
                "dropped": req.get("dropped"),
                "users_hit": exp.get("users_hit"),
                "users_total": exp.get("users_total"),
                "stall_s": report.get("stall_s"),
                "mixed_window_s": exp.get("mixed_window_s"),
                "users_saw_both": exp.get("users_saw_both"),
                "users_saw_both_share": exp.get("users_saw_both_share"),
                "downgrades": exp.get("downgrades"),
                "contract_violations": exp.get("contract_violations"),
                "sessions_lost": exp.get("sessions_lost"),
                "version_flips": exp.get("version_flips"),
                "mixed_fleet_s": exp.get("mixed_fleet_s"),
                "users_exposed_share": exp.get("users_exposed_share"),
                "requests_exposed_share": exp.get("requests_exposed_share"),
                "pass": bool(verdict_of(report).get("pass")),
                "verdict": _verdict_cell(report),
                "failed_checks": failed_names(report),
            }
        )
    return {"rows": out}


def _verdict_cell(report: Mapping[str, Any]) -> str:
    """"PASS", or "FAIL" and the names of the checks that failed."""
    if verdict_of(report).get("pass"):
        return "PASS"
    return "FAIL: " + ", ".join(failed_names(report))


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


def _compare_cells(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            _num(line.get(key)) if key not in ("strategy", "outcome", "verdict") else str(line.get(key) or "-")
            for key in COMPARE_FIELDS
        ]
        for line in compare_json(rows)["rows"]
    ]


def compare_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison of several reports as a Markdown table."""
    return _md_table([COMPARE_HEADERS[k] for k in COMPARE_FIELDS], _compare_cells(rows)) + "\n"


def compare_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as aligned plain text for the terminal."""
    header = [COMPARE_HEADERS[k] for k in COMPARE_FIELDS]
    cells = _compare_cells(rows)
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, 2, len(row) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(row) for row in cells)])
