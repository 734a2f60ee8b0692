"""``chart.png``: version share, p99 latency and drops per second (and, with long-lived users, the
connections open per version), with the steps drawn in.

matplotlib is imported inside :func:`write_chart` only, so importing this module stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbox.results.model import Report, num

V1_COLOR = "#4C72B0"
V2_COLOR = "#DD8452"
DROP_COLOR = "#C44E52"
P99_COLOR = "#8172B3"
STEP_COLORS = {
    "term": "#FF1493",
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


def write_chart(report: Report, path: Path) -> Path:
    """Draw the run as a PNG: version share, p99 latency and drops per second, with steps.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    exp = report.figures.exposure
    buckets = list(exp.timeline)
    from_v = str(report.run.from_version or "")
    to_v = str(report.run.to_version or "")
    colors = _version_colors(from_v, to_v)

    # --ws-users / --sse-users: a fourth panel, the long-lived connections open per version
    long_lived = any(b.long_lived_open for b in buckets)
    fig = Figure(figsize=(11, 9.0 if long_lived else 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ratios = [2.0, 1.3, 1.0, *([1.3] if long_lived else [])]
    axes = list(fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios}))
    share_ax, p99_ax, drop_ax = axes[:3]
    ll_ax = axes[3] if long_lived else None
    if buckets:
        window = report.figures.window
        end = max(buckets[-1].t + 1, window.duration_s if window else 0.0)
        # each second's value at its middle, held flat to both edges of the window
        xs = [0.0] + [b.t + 0.5 for b in buckets] + [end]
        padded = [buckets[0], *buckets, buckets[-1]]
        versions = list(dict.fromkeys((from_v, to_v)))
        totals = [sum(b.answers.get(v, 0) for v in versions) for b in padded]
        shares = [
            [
                100.0 * b.answers.get(v, 0) / tot if tot else 0.0
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
        p99 = [b.p99_ms if b.p99_ms is not None else math.nan for b in buckets]
        p99_ax.plot(xs[1:-1], p99, color=P99_COLOR, lw=1.4, marker=".", ms=3, label="p99")
        slow_ms = report.figures.slow_ms
        finite = [v for v in p99 if not math.isnan(v)]
        if slow_ms and finite and max(finite) >= slow_ms / 2:
            p99_ax.axhline(slow_ms, color=DROP_COLOR, ls=":", lw=1, label="slow")
        drop_ax.bar(
            [b.t for b in buckets],
            [b.dropped for b in buckets],
            width=1.0,
            align="edge",
            color=DROP_COLOR,
            label="dropped",
        )
        if ll_ax is not None:
            for v in versions:
                ll_ax.plot(xs[1:-1], [b.long_lived_open.get(v, 0) for b in buckets], color=colors.get(v, V1_COLOR),
                           lw=1.6, label=f"{v} open")
            ll_ax.set_ylabel("open ws/sse")
            ll_ax.set_ylim(bottom=0)
            ll_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
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
    axes[-1].set_xlabel("seconds since the load started")
    for ax in axes:
        ax.grid(True, axis="y", color="#dddddd", lw=0.6)
        ax.set_axisbelow(True)

    phases_seen = _draw_steps(report, axes)
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
        f"{report.run.title()}: {report.run.outcome}  "
        f"({num(report.figures.requests.dropped)} dropped, "
        f"mixed window {num(exp.mixed_window_s, ' s')})",
        fontsize=11,
    )
    fig.savefig(path, format="png")
    return Path(path)


def _step_offset(report: Report) -> float:
    """Seconds to subtract from a step's ``t`` to place it on the load's time axis."""
    window, t0 = report.figures.window, report.run.steps_t0
    if window is None or t0 is None:
        return 0.0
    return window.start - t0


def _draw_steps(report: Report, axes: Sequence[Any]) -> list[str]:
    """Vertical lines for steps, a light "batch n" label per batch; returns phases drawn."""
    offset = _step_offset(report)
    seen: list[str] = []
    batches_labelled: set[Any] = set()
    top = axes[0]
    for step in report.run.steps:
        phase = step.phase
        x = step.t - offset
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
        batch = step.batch
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
