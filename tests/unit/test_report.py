"""sandbox.results.report and its renderers: the report, its JSON, the terminal summary, the files, the comparison."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from sandbox.results.compare import compare_json
from sandbox.results.markdown import compare_table
from sandbox.results.measure import measure
from sandbox.results.model import Report, Rollout
from sandbox.results.records import Event, RequestRow
from sandbox.results.report import build_report, write_report_dir
from sandbox.results.text import compare_text, summary_text
from sandbox.results.verdict import DEFAULT_LIMITS, Limits

T0 = 1_700_000_000.0

REQUIRED_KEYS = {
    "strategy",
    "size",
    "batch",
    "mode",
    "from_version",
    "to_version",
    "outcome",
    "duration_s",
    "peak_instances",
    "requests",
    "latency_ms",
    "stall_s",
    "slow",
    "exposure",
    "phases",
    "drains",
    "steps",
}

META = {
    "load_alive": True,
    "strategy": "one-at-a-time",
    "size": 3,
    "batch": 1,
    "mode": "replace",
    "from_version": "v1",
    "to_version": "v2",
    "outcome": "completed",
    "duration_s": 6.0,
    "project": "test",
    "sticky": False,
    "users": 4,
}


def _row(t: float, user: str, version: str, status: int = 200) -> RequestRow:
    return {
        "t": T0 + t,
        "t_end": T0 + t + 0.02,
        "user": user,
        "rid": f"{user}-{t}",
        "method": "GET",
        "name": "/",
        "status": status,
        "version": version if status < 500 else None,
        "instance": f"app-{int(t) % 3 + 1}/x",
        "session": "resumed",
        "latency_ms": 20.0 + t,
        "error": None if status < 500 else "502",
    }


def _events() -> list[Event]:
    events: list[dict[str, Any]] = [
        {"t": T0 - 0.5, "phase": "load-start", "instance": None},
        {
            "t": T0 + 2.0,
            "phase": "rollout-start",
            "instance": None,
            "version": "v2",
            "detail": {"instances": 3},
        },
    ]
    for i in range(3):
        base = T0 + 2.0 + i * 1.5
        name = f"app-{i + 1}"
        events += [
            {"t": base, "phase": "detach", "instance": name, "batch": i + 1, "slot": i + 1},
            {
                "t": base + 0.2,
                "phase": "drain",
                "instance": name,
                "batch": i + 1,
                "detail": {"duration_s": 0.2, "in_flight": 1},
            },
            {"t": base + 0.3, "phase": "stop", "instance": name, "batch": i + 1},
            {
                "t": base + 0.4,
                "phase": "start",
                "instance": f"{name}b",
                "version": "v2",
                "batch": i + 1,
                "address": f"10.0.0.{i + 10}:8000",
            },
            {"t": base + 1.0, "phase": "attach", "instance": f"{name}b", "batch": i + 1},
        ]
    events += [
        {"t": T0 + 8.0, "phase": "rollout-end", "instance": None},
        {"t": T0 + 10.0, "phase": "load-stop", "instance": None},
    ]
    return events  # type: ignore[return-value]


def _rows(dropped: int = 0) -> list[RequestRow]:
    rows = []
    for i in range(100):
        t = i * 0.1
        version = "v1" if t < 2.0 + (i % 4) * 1.5 else "v2"
        rows.append(_row(t, f"u{i % 4}", version))
    for k in range(dropped):
        rows.append(_row(5.0 + k * 0.01, "u0", "v1", status=502))
    return rows


# 100 requests: enough for every check once the p99 check accepts so few answers
LIMITS = dataclasses.replace(DEFAULT_LIMITS, min_latency_samples=10)


def _report(dropped: int = 0, limits: Limits = LIMITS, **meta: Any) -> Report:
    events = _events()
    rows = _rows(dropped)
    figures = measure(rows, events, nginx=[], sent=len(rows))
    return build_report(run=Rollout(**{**META, **meta}), figures=figures, steps=events, limits=limits)


def test_build_report_has_every_required_key() -> None:
    report = _report().to_json()
    assert report.keys() >= REQUIRED_KEYS
    assert report["outcome"] == "completed"
    assert report["peak_instances"] == 3  # from measure: stop before each start
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"}
    assert {"total", "dropped", "errors_4xx", "by_version"} <= report["requests"].keys()
    assert report["slow"] == report["requests"]["slow"] == 0
    json.dumps(report)


def test_build_report_steps_are_relative_to_the_first_event() -> None:
    steps = _report().to_json()["steps"]
    assert steps[0] == {"t": 0.0, "phase": "load-start", "instance": None}
    rollout_start = steps[1]
    assert rollout_start["t"] == 2.5
    assert rollout_start["version"] == "v2"
    detach = steps[2]
    assert detach == {"t": 2.5, "phase": "detach", "instance": "app-1", "slot": 1, "batch": 1}
    assert [s["t"] for s in steps] == sorted(s["t"] for s in steps)


def test_build_report_the_record_wins_and_falls_back() -> None:
    assert _report(peak_instances=6).run.peak_instances == 6
    events = [*_events(), {"t": T0 + 9.0, "phase": "rollback-end", "instance": None}]
    bare = build_report(run=Rollout(), figures=measure(_rows(), events), steps=events).to_json()  # type: ignore[arg-type]
    assert bare["outcome"] == "rolled_back"
    assert bare["duration_s"] == 6.0
    assert (bare["from_version"], bare["to_version"]) == ("v1", "v2")


CHECK_NAMES = ["outcome", "dropped", "stall_s", "slow", "p99_ratio", "contract_violations", "not_found",
               "drains_timed_out", "requests_measured", "rows_lost", "unrecorded", "load_alive"]


def test_summary_text_pass() -> None:
    report = _report()
    text = summary_text(report)
    assert "\x1b[" not in text
    assert "0 dropped" in text
    assert "mixed window" in text
    assert "downgrades" in text
    assert "sessions lost" in text
    assert "Target: 0" not in text
    assert text.splitlines()[-1] == "PASS: all 12 checks held"
    assert report.to_json()["verdict"]["pass"] is True
    assert [c["name"] for c in report.to_json()["verdict"]["checks"]] == CHECK_NAMES
    # every check is listed with its figure and its limit
    checks = text.split("\nchecks\n")[1].splitlines()[:-1]
    assert len(checks) == len(CHECK_NAMES)
    assert all(line.strip().startswith("PASS ") for line in checks)
    assert "  PASS dropped              0 (max 0)" in checks
    assert "  PASS requests_measured    100 (min 100)" in checks
    assert any(line.startswith("  PASS stall_s ") and "(max 1.00 s)" in line for line in checks)
    p99 = next(line for line in checks if line.startswith("  PASS p99_ratio "))
    assert "(max 500 ms; 3.00x if steady was over it)" in p99


def test_summary_text_fail_and_allowance() -> None:
    report = _report(dropped=3)
    text = summary_text(report)
    assert "3 dropped" in text
    assert text.splitlines()[-1] == "FAIL: dropped 3 (max 0)"
    assert "  FAIL dropped              3 (max 0)" in text
    allowed = _report(dropped=3, limits=dataclasses.replace(LIMITS, max_dropped=3))
    assert summary_text(allowed).splitlines()[-1] == "PASS: all 12 checks held"
    assert _report(dropped=3, limits=dataclasses.replace(LIMITS, max_dropped=2)).passed is False


def test_an_empty_run_with_load_on_fails() -> None:
    report = build_report(run=Rollout(), figures=measure([], []), steps=[])
    text = summary_text(report)
    assert report.passed is False
    assert text.splitlines()[-1] == "FAIL: requests_measured 0 (min 100); load_alive - (must be yes)"
    assert "no requests were measured" in text and "p50" not in text


def test_a_run_without_load_passes_on_what_it_can_measure() -> None:
    report = build_report(run=Rollout(load=False, outcome="completed"), figures=measure([], []), steps=[])
    text = summary_text(report)
    assert "none (--no-load)" in text
    assert text.splitlines()[-1] == "PASS: all 12 checks held"
    assert "  PASS requests_measured    - (min 100): not measured: no load" in text


def test_a_rollout_that_did_not_complete_fails_even_with_zero_dropped() -> None:
    report = _report(outcome="rolled_back")
    assert report.figures.requests.dropped == 0
    assert summary_text(report).splitlines()[-1] == "FAIL: outcome rolled_back (must be completed)"


def test_a_timed_out_drain_is_kept_and_fails_the_run() -> None:
    events = _events()
    drain = next(e for e in events if e["phase"] == "drain")
    drain["detail"] = {"duration_s": 30.0, "in_flight": 2, "timed_out": True}
    report = build_report(run=Rollout(**META), figures=measure(_rows(), events, nginx=[], sent=len(_rows())),
                          steps=events, limits=LIMITS)
    assert [d["timed_out"] for d in report.to_json()["drains"]] == [True, False, False]
    assert summary_text(report).splitlines()[-1] == "FAIL: drains_timed_out 1 (max 0)"
    assert "1 timed out" in summary_text(report)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_write_report_dir(tmp_path: Path) -> None:
    report = _report(dropped=2)
    paths = write_report_dir(report, tmp_path / "run")
    assert set(paths) == {"json", "chart", "markdown"}
    assert json.loads(paths["json"].read_text()) == report.to_json()
    assert Report.from_json(json.loads(paths["json"].read_text())) == report  # read back whole
    png = paths["chart"].read_bytes()
    assert png[:8] == PNG_SIGNATURE
    assert len(png) > 20_000  # a real three-panel chart, not an empty canvas
    page = paths["markdown"].read_text()
    assert page.startswith("# ")
    assert "![chart](chart.png)" in page
    assert "| dropped | 2 |" in page
    assert "**FAIL: dropped 2 (max 0)**" in page
    assert "| dropped | FAIL | 2 | max 0 |  |" in page
    assert "| requests_measured | PASS | 102 | min 100 |  |" in page
    assert "## Steps" in page
    assert "| detach | app-1 |" in page
    assert "## What the numbers mean" in page


def test_write_report_dir_without_traffic(tmp_path: Path) -> None:
    report = build_report(run=Rollout(strategy="naive"), figures=measure([], []), steps=[])
    paths = write_report_dir(report, tmp_path)
    assert paths["chart"].read_bytes()[:8] == PNG_SIGNATURE
    assert "No steps were recorded." in paths["markdown"].read_text()


COMPARE_KEYS = {
    "strategy",
    "duration_s",
    "peak_instances",
    "dropped",
    "mixed_window_s",
    "users_saw_both",
    "downgrades",
    "contract_violations",
    "sessions_lost",
    "requests",
    "users_saw_both_share",
    "users_exposed_share",
    "requests_exposed_share",
    "failed_checks",
}


@pytest.fixture
def two_reports() -> list[Report]:
    return [_report(), _report(dropped=4, strategy="naive", duration_s=2.5)]


def test_compare_json(two_reports: list[Report]) -> None:
    out = compare_json(two_reports)
    assert list(out) == ["rows"]
    assert len(out["rows"]) == 2
    assert all(line.keys() >= COMPARE_KEYS for line in out["rows"])
    assert [line["strategy"] for line in out["rows"]] == ["one-at-a-time", "naive"]
    assert [line["dropped"] for line in out["rows"]] == [0, 4]
    assert out["rows"][1]["duration_s"] == 2.5
    json.dumps(out)


def test_compare_table(two_reports: list[Report]) -> None:
    lines = compare_table(two_reports).strip().splitlines()
    assert len(lines) == 4  # header, rule, one line per report
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert "dropped" in lines[0]
    assert lines[3].startswith("| naive |")
    widths = {line.count("|") for line in lines}
    assert len(widths) == 1


def test_compare_text(two_reports: list[Report]) -> None:
    lines = compare_text(two_reports).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("strategy")
    assert lines[2].startswith("naive")
    assert "|" not in lines[1]


def test_write_report_dir_is_atomic_and_a_full_disk_leaves_the_old_files(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "run"
    first = write_report_dir(_report(), directory)
    before = first["json"].read_text()

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        write_report_dir(_report(dropped=2), directory)
    monkeypatch.undo()
    assert first["json"].read_text() == before  # whole, never half-written
    assert sorted(p.name for p in directory.iterdir()) == ["chart.png", "report.json", "report.md"]  # no temp left


def test_clear_report_dir_removes_only_the_report_files(tmp_path: Path) -> None:
    from sandbox.results.report import clear_report_dir
    write_report_dir(_report(), tmp_path)
    (tmp_path / "requests.jsonl").write_text("")
    clear_report_dir(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["requests.jsonl"]
