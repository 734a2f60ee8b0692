"""The terminal view: one row per slot, a batch bar, live figures; narration pauses the first batch only."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from sandbox.rollout.plan import Ref, Step
from sandbox.ui.progress import LiveProgress, Progress, TrafficMonitor, batch_bar, figures_text, slot_cell


@pytest.mark.parametrize("current, total, expected", [
    (1, 4, "[░░░░░░░░] batch 1 of 4"),
    (3, 4, "[████░░░░] batch 3 of 4"),
    (4, 4, "[██████░░] batch 4 of 4"),
    (0, 0, "[░░░░░░░░] no batch yet"),
])
def test_batch_bar(current: int, total: int, expected: str) -> None:
    assert batch_bar(current, total, width=8) == expected


def test_a_finished_rollout_fills_the_bar() -> None:
    assert batch_bar(4, 4, width=8, finished=True) == "[████████] batch 4 of 4"


def test_slot_cell_hides_removed_servers_and_shows_in_flight() -> None:
    servers = [{"version": "v1", "state": "removed"}, {"version": "v1", "state": "draining", "in_flight": 4},
               {"version": "v2", "state": "starting"}]
    assert slot_cell(servers) == "v1 draining (4 in flight) → v2 starting"
    assert slot_cell([{"version": "v1", "state": "removed"}]) == "empty"


def test_traffic_figures_by_version_p99_and_dropped() -> None:
    now = time.time()
    monitor = TrafficMonitor()
    rows = [{"t": now - 1, "t_end": now - 1, "status": 200, "version": "v1", "latency_ms": 10.0}] * 6
    rows += [{"t": now - 1, "t_end": now - 0.5, "status": 200, "version": "v2", "latency_ms": 90.0}] * 2
    rows += [{"t": now - 4, "t_end": now - 4, "status": 200, "version": "v1", "latency_ms": 500.0}]  # p99 only
    rows += [{"t": now - 1, "t_end": None, "status": 0, "version": None, "latency_ms": None}]  # dropped
    monitor.add(rows)  # type: ignore[arg-type]
    figures = monitor.figures(now)
    assert figures["rps"] == {"v1": 3.0, "v2": 1.0}  # answers in the last 2 s / 2 s
    assert figures["p99_ms"] == 500.0 and figures["dropped"] == 1 and figures["total"] == 10
    assert figures_text({"rps": figures["rps"], "p99_ms": 500.0, "dropped": 1}) == \
        "v1 3 req/s  v2 1 req/s  p99 500 ms  dropped 1"


def render(progress: LiveProgress) -> str:
    out = io.StringIO()
    from rich.console import Console
    Console(file=out, width=120, color_system=None).print(progress._render())
    return out.getvalue()


def test_the_live_table_has_one_row_per_slot_after_a_whole_rollout() -> None:
    progress = LiveProgress(io.StringIO())
    progress.state.configure(strategy="one-at-a-time", size=3)
    for n in (1, 2, 3):
        progress.seed(f"app-{n}-a", n, "v1", True)
    t = time.time()
    for n in (1, 2, 3):
        for phase, name, version in (("detach", "a", "v1"), ("drain", "a", "v1"), ("stop", "a", "v1"),
                                     ("start", "b", "v2"), ("ready", "b", "v2"), ("attach", "b", "v2")):
            progress.event({"t": t, "phase": phase, "instance": f"app-{n}-{name}", "slot": n, "version": version,
                            "batch": n})
    text = render(progress)
    rows = [line for line in text.splitlines() if "app-" in line and ("attached" in line or "removed" in line)]
    assert len(rows) == 3, text  # 6 containers were started or removed, 3 slots remain
    assert all("v2 attached" in row for row in rows)
    assert "batch 3 of 3" in text and "removed" not in text


def test_plain_progress_prints_one_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    progress.event({"t": time.time(), "phase": "detach", "instance": "app-1-a", "version": "v1",
                    "detail": {"in_flight": 2}})
    assert stream.getvalue().rstrip().endswith("detach         app-1-a v1 in_flight=2")
    assert "\x1b" not in stream.getvalue()


def test_narration_pauses_at_each_step_of_the_first_batch_only() -> None:
    stream = io.StringIO()
    progress = Progress(stream, narrate=True, pause_s=0.05)
    progress.state.configure(strategy="one-at-a-time", size=3)
    steps = [Step(action, (Ref(1, "x"),), 1) for action in ("detach", "drain", "stop", "start", "ready", "attach")]
    steps += [Step(action, (Ref(2, "y"),), 2) for action in ("detach", "drain")]

    async def run() -> float:
        t0 = time.monotonic()
        for step in steps[:6]:
            await progress.before_step(step)
        t1 = time.monotonic()
        for step in steps[6:]:
            await progress.before_step(step)
        assert time.monotonic() - t1 < 0.04  # batch 2: no pause
        return t1 - t0

    first_batch_s = asyncio.run(run())
    lines = [line for line in stream.getvalue().splitlines() if "narration" in line]
    assert len(lines) == 7  # pick, then one per step of batch 1
    assert "picks slot 1" in lines[0] and "Drain" in lines[2]
    assert first_batch_s >= 7 * 0.05
    assert progress.state.snapshot()["step"]["slots"] == [2]


def test_without_narration_before_step_only_tracks_the_step() -> None:
    progress = Progress(io.StringIO())
    asyncio.run(progress.before_step(Step("drain", (Ref(4, "x"),), 2)))
    snap = progress.state.snapshot()
    assert snap["step"]["label"] == "wait for in-flight requests" and snap["narration"] is None
