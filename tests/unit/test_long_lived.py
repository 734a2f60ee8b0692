"""Long-lived connections: message-gap accounting, reconnect delays, the figures and their checks (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox.config import Settings
from sandbox.load.longlived import (
    DEFAULT_RETRY_MS,
    MAX_BACKOFF_MS,
    MessageTally,
    SseParser,
    backoff_ms,
    connection_row,
    dump_long_lived_row,
    message_number,
    parse_long_lived_rows,
    ws_close,
    ws_close_kind,
)
from sandbox.load.run import LONG_LIVED_LOCUSTFILE, LoadRun, LoadSettings
from sandbox.results.long_lived import long_lived
from sandbox.results.markdown import markdown_page
from sandbox.results.model import Figures, LongLived, Report, Rollout
from sandbox.results.records import LongLivedRow
from sandbox.results.text import summary_text
from sandbox.results.verdict import Limits, verdict


# -- the message numbering of one connection --------------------------------------------------------
def tally(*numbers: int) -> MessageTally:
    t = MessageTally()
    for n in numbers:
        t.see(n)
    return t


@pytest.mark.parametrize(("numbers", "received", "lost", "duplicated"), [
    ((), 0, 0, 0),
    ((1, 2, 3, 4), 4, 0, 0),
    ((1, 2, 4, 5), 4, 1, 0),  # 3 never came
    ((1, 5), 2, 3, 0),  # 2, 3, 4
    ((3, 4), 2, 2, 0),  # the first two never came
    ((1, 2, 2, 3), 4, 0, 1),
    ((1, 3, 2), 3, 0, 0),  # late, not lost
    ((1, 3, 3, 5), 4, 2, 1),
])
def test_gaps_and_repeats_in_the_numbering(numbers: tuple[int, ...], received: int, lost: int,
                                           duplicated: int) -> None:
    t = tally(*numbers)
    assert (t.received, t.lost, t.duplicated) == (received, lost, duplicated)
    if numbers:
        assert (t.first, t.last) == (numbers[0], max(numbers))


@pytest.mark.parametrize(("text", "number"), [
    ('{"tick": 7, "version": "v1"}', 7), ('{"tick": 0}', None), ('{"tick": true}', None),
    ('{"tick": "3"}', None), ("hello", None), ("[1]", None), (b'{"tick": 2}', 2),
])
def test_message_number(text: str | bytes, number: int | None) -> None:
    assert message_number(text) == number


# -- reconnecting ----------------------------------------------------------------------------------
def test_backoff_is_full_jitter_below_the_hint_doubling_per_failure_up_to_the_cap() -> None:
    almost = 0.999999
    assert backoff_ms(0, None, lambda: 0.0) == 0.0
    assert backoff_ms(0, None, lambda: almost) == pytest.approx(DEFAULT_RETRY_MS, rel=1e-5)
    assert backoff_ms(0, 250.0, lambda: almost) == pytest.approx(250.0, rel=1e-5)  # the server's retry:
    assert backoff_ms(0, 250.0, lambda: 0.5) == pytest.approx(125.0)
    assert backoff_ms(2, 250.0, lambda: almost) == pytest.approx(1000.0, rel=1e-5)
    assert backoff_ms(40, 250.0, lambda: almost) == pytest.approx(MAX_BACKOFF_MS, rel=1e-5)


def test_sse_parser_reads_ticks_and_the_goodbye_hint() -> None:
    parser = SseParser()
    lines = ["id: 1", "event: tick", 'data: {"tick": 1}', "", ": a comment", "",
             "event: bye", "retry: 1000", "data: stopping", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.event, e.id, e.retry_ms) for e in events] == [("tick", "1", None), ("bye", None, 1000.0)]
    assert message_number(events[0].data) == 1 and events[1].data == "stopping"


def test_ws_close_codes() -> None:
    assert ws_close((1001).to_bytes(2, "big") + b"server stopping") == (1001, "server stopping")
    assert ws_close(b"") == (1005, "")
    assert [ws_close_kind(c) for c in (1000, 1001, 1012, 1006, 1011)] == \
        ["clean", "clean", "clean", "abnormal", "abnormal"]


# -- the figures -----------------------------------------------------------------------------------
def row(user: str, conn: int, *, t_open: float | None = 100.0, close: str = "clean", code: str = "1001",
        kind: str = "ws", numbers: tuple[int, ...] = (1, 2, 3), previous_end: float | None = None,
        t_end: float = 110.0) -> LongLivedRow:
    return connection_row(kind=kind, user=user, conn=conn, rid="ll-x", t=t_open or 99.0,  # type: ignore[arg-type]
                          t_open=t_open, t_end=t_end, status=101 if t_open else 0, version="v1", instance="i",
                          tally=tally(*numbers), close=close, code=code,  # type: ignore[arg-type]
                          previous_end=previous_end, retry_ms=None)


def test_the_row_times_a_reconnect_from_the_previous_end_and_round_trips() -> None:
    r = row("u1", 2, t_open=100.25, previous_end=100.0)
    assert r["reconnect_ms"] == 250.0 and r["lost"] == 0 and r["messages"] == 3
    assert row("u1", 1)["reconnect_ms"] is None
    assert row("u1", 3, t_open=None, previous_end=100.0, close="failed", code="ConnectionRefusedError")[
        "reconnect_ms"] is None
    assert parse_long_lived_rows([dump_long_lived_row(r), "", "junk", '{"kind": "other"}']) == [r]


def test_figures_sum_closes_losses_and_reconnects() -> None:
    rows = [
        row("u1", 1, close="clean", code="1001", t_end=110.0),
        row("u1", 2, t_open=110.2, previous_end=110.0, close="stop", code="stop", numbers=(1, 2, 4)),
        row("u2", 1, kind="sse", close="abnormal", code="cut", numbers=(1, 1, 2)),
        row("u2", 2, t_open=None, close="failed", code="HTTP 502", numbers=()),
        row("u2", 3, kind="sse", t_open=110.9, previous_end=110.0, close="clean", code="end"),
        row("u3", 1, t_open=111.5, previous_end=110.0, close="clean", code="1001"),
    ]
    f = long_lived(rows)
    assert (f.users, f.opened, f.failed) == (3, 5, 1)
    assert (f.clean_closes, f.abnormal_closes, f.open_at_stop) == (3, 1, 1)
    assert f.closes == {"sse cut": 1, "sse end": 1, "ws 1001": 2, "ws stop": 1}
    assert (f.messages, f.messages_lost, f.messages_duplicated) == (15, 1, 1)
    assert f.reconnects == 3
    assert (f.reconnect_p50_ms, f.reconnect_p99_ms) == (900.0, 1500.0)
    assert f.peak_reconnects_per_s == 2  # 110.2 and 110.9 in the same second, 111.5 in the next
    assert LongLived.from_json(json.loads(json.dumps(f.to_json()))) == f
    assert Figures.from_json(Figures(long_lived=f).to_json()).long_lived == f
    assert long_lived([]) == LongLived() and not LongLived().ran


# -- the checks ------------------------------------------------------------------------------------
def checks(figures: LongLived, *, users: int = 2, limits: Limits | None = None) -> dict[str, tuple[str, Any]]:
    run = Rollout(outcome="completed", load=True, load_alive=True, long_lived_users=users)
    judged = verdict(run, Figures(long_lived=figures), limits or Limits())
    return {c.name: (c.status, c.value) for c in judged.checks
            if c.name in ("abnormal_closes", "messages_lost", "reconnect_p99_ms")}


def test_no_long_lived_users_no_long_lived_checks() -> None:
    assert checks(LongLived(), users=0) == {}


def test_long_lived_users_that_never_ran_are_skipped_never_passed() -> None:
    assert checks(LongLived()) == {"abnormal_closes": ("SKIP", None), "messages_lost": ("SKIP", None),
                                   "reconnect_p99_ms": ("SKIP", None)}


def test_clean_run_passes_and_each_figure_over_its_limit_fails() -> None:
    good = LongLived(users=2, opened=4, clean_closes=2, messages=40, reconnects=2, reconnect_p50_ms=400.0,
                     reconnect_p99_ms=900.0)
    assert checks(good) == {"abnormal_closes": ("PASS", 0), "messages_lost": ("PASS", 0),
                            "reconnect_p99_ms": ("PASS", 900.0)}
    bad = LongLived(users=2, opened=4, abnormal_closes=2, messages=40, messages_lost=1, reconnects=2,
                    reconnect_p99_ms=2500.0)
    assert checks(bad) == {"abnormal_closes": ("FAIL", 2), "messages_lost": ("FAIL", 1),
                           "reconnect_p99_ms": ("FAIL", 2500.0)}
    assert checks(bad, limits=Limits(max_abnormal_closes=2, max_messages_lost=1, max_reconnect_p99_ms=3000))[
        "reconnect_p99_ms"] == ("PASS", 2500.0)
    no_reconnect = LongLived(users=1, opened=1, open_at_stop=1, messages=5)
    assert checks(no_reconnect)["reconnect_p99_ms"] == ("SKIP", None)


def test_default_limits_come_from_the_settings() -> None:
    limits = Limits.from_settings(Settings(max_reconnect_p99_ms=1500))
    assert (limits.max_abnormal_closes, limits.max_messages_lost, limits.max_reconnect_p99_ms) == (0, 0, 1500)
    assert Limits().max_reconnect_p99_ms == 2000.0


# -- outputs ---------------------------------------------------------------------------------------
def test_text_and_markdown_show_the_figures_only_when_long_lived_traffic_ran() -> None:
    figures = LongLived(users=2, opened=3, abnormal_closes=1, closes={"ws 1006": 1}, messages=12,
                        messages_lost=2, reconnects=1, reconnect_p50_ms=300.0, reconnect_p99_ms=300.0,
                        peak_reconnects_per_s=1)
    run = Rollout(outcome="completed", load=True, load_alive=True, long_lived_users=2)
    report = Report(run, Figures(long_lived=figures), verdict(run, Figures(long_lived=figures)))
    text = summary_text(report)
    assert "  closes         0 clean, 1 abnormal, 0 open at stop (ws 1006 1)" in text
    assert "  messages       12 received, 2 lost, 0 duplicated" in text
    assert text.splitlines()[-1].endswith("; abnormal_closes 1 (max 0); messages_lost 2 (max 0)")
    assert "## Long-lived connections" in markdown_page(report)
    plain = Report(Rollout(outcome="completed"), Figures(), verdict(Rollout(outcome="completed"), Figures()))
    assert "long-lived" not in summary_text(plain) and "Long-lived" not in markdown_page(plain)


# -- the load's command line -----------------------------------------------------------------------
def test_long_lived_users_add_their_locustfile_and_count(tmp_path: Path) -> None:
    plain = LoadRun("http://x", LoadSettings(users=5), tmp_path / "rows").command()
    assert str(LONG_LIVED_LOCUSTFILE) not in plain[plain.index("-f") + 1] and plain[plain.index("-u") + 1] == "5"
    run = LoadRun("http://x", LoadSettings(users=5, ws_users=3, sse_users=2), tmp_path / "rows")
    cmd = run.command()
    assert cmd[cmd.index("-f") + 1].endswith(f",{LONG_LIVED_LOCUSTFILE}") and cmd[cmd.index("-u") + 1] == "10"
    env = run.environment()
    assert (env["ROLLING_SANDBOX_WS_USERS"], env["ROLLING_SANDBOX_SSE_USERS"]) == ("3", "2")
    assert env["ROLLING_SANDBOX_LONG_LIVED_ROWS"] == str(run.long_lived_path)
