"""`compare` with --ws-users / --sse-users: the long-lived figures per strategy, in the JSON always,
in the tables only when some run had long-lived users."""

from __future__ import annotations

from sandbox.results.compare import COMPARE_FIELDS, LONG_LIVED_FIELDS, compare_cells, compare_fields, compare_json
from sandbox.results.markdown import compare_table
from sandbox.results.model import Figures, LongLived, Report, Rollout
from sandbox.results.text import compare_text
from sandbox.results.verdict import verdict


def report(strategy: str, long_lived: LongLived | None = None) -> Report:
    run = Rollout(strategy=strategy, outcome="completed", long_lived_users=10 if long_lived else 0)
    figures = Figures(long_lived=long_lived or LongLived())
    return Report(run, figures, verdict(run, figures))


GRACEFUL = LongLived(users=10, opened=25, clean_closes=15, reconnects=15, reconnect_p99_ms=1234.5,
                     peak_reconnects_per_s=6, users_switched=10)
CUT = LongLived(users=10, opened=22, abnormal_closes=12, messages_lost=3, reconnects=12, reconnect_p99_ms=880.0,
                peak_reconnects_per_s=9, users_switched=7)


def test_the_long_lived_columns_per_strategy() -> None:
    reports = [report("one-at-a-time", GRACEFUL), report("rolling", CUT)]
    fields = compare_fields(reports)
    assert fields[-1] == "verdict" and fields[-1 - len(LONG_LIVED_FIELDS):-1] == LONG_LIVED_FIELDS
    rows = compare_json(reports)["rows"]
    assert [(r["ll_abnormal_closes"], r["ll_messages_lost"], r["ll_reconnect_p99_ms"], r["ll_peak_reconnects_per_s"],
             r["ll_users_switched"]) for r in rows] == [(0, 0, 1234.5, 6, 10), (12, 3, 880.0, 9, 7)]
    text = compare_text(reports).splitlines()
    assert "ll abnormal" in text[0] and "reconnect p99 ms" in text[0] and "reconnects/s peak" in text[0]
    cells = compare_cells(reports)[1]
    assert cells[-1 - len(LONG_LIVED_FIELDS):-1] == ["12", "3", "880.0", "9", "7"], cells
    table = compare_table(reports)
    assert "| ll abnormal | ll lost | reconnect p99 ms | reconnects/s peak | ll switched | verdict |" in table


def test_without_long_lived_users_the_table_is_as_before() -> None:
    reports = [report("one-at-a-time"), report("rolling")]
    assert compare_fields(reports) == COMPARE_FIELDS
    assert "ll abnormal" not in compare_text(reports) and "ll abnormal" not in compare_table(reports)
    assert all(row[f] is None for row in compare_json(reports)["rows"] for f in LONG_LIVED_FIELDS)
    # one run with them is enough for the columns; the other's cells say it had none
    mixed = [report("one-at-a-time"), report("rolling", CUT)]
    assert compare_fields(mixed) != COMPARE_FIELDS
    assert compare_cells(mixed)[0][-1 - len(LONG_LIVED_FIELDS):-1] == ["-"] * len(LONG_LIVED_FIELDS)
