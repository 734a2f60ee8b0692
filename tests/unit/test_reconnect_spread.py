"""``reconnect_spread_ms`` (p95 - p5 of the reconnect times) and ``reconnect_hint_ms`` (the hint
the servers' goodbyes gave most often): whether a reconnect storm is spread over the hint's window."""

from __future__ import annotations

import json

from sandbox.load.longlived import MessageTally, connection_row
from sandbox.results.long_lived import long_lived
from sandbox.results.model import Figures, LongLived
from sandbox.results.records import LongLivedRow


def reconnected(user: str, wait_s: float, *, retry_ms: float | None = 500.0, end: float = 100.0) -> LongLivedRow:
    """A user's second connection, opened ``wait_s`` after its first one ended at ``end``;
    ``retry_ms`` is the hint that second connection ended with."""
    tally = MessageTally()
    tally.see(1)
    return connection_row(kind="ws", user=user, conn=2, rid="ll-x", t=end + wait_s, t_open=end + wait_s,
                          t_end=end + 10, status=101, version="v2", instance="i", tally=tally, close="clean",
                          code="1001", previous_end=end, retry_ms=retry_ms)


def test_a_spread_storm_spans_most_of_the_hint_and_a_bunched_one_does_not() -> None:
    spread = long_lived([reconnected(f"u{i}", i / 100 * 0.5) for i in range(100)])  # 0, 5, ... 495 ms
    assert spread.reconnects == 100
    assert spread.reconnect_spread_ms == 450.0  # p95 475 ms - p5 25 ms
    assert spread.reconnect_hint_ms == 500.0
    bunched = long_lived([reconnected(f"u{i}", 0.3 + i / 100_000) for i in range(100)])  # all within 1 ms
    assert bunched.reconnect_spread_ms is not None and bunched.reconnect_spread_ms < 1.0
    assert bunched.peak_reconnects_per_s == 100 == spread.peak_reconnects_per_s  # the peak alone cannot tell


def test_the_hint_is_the_most_common_one_and_none_without_any() -> None:
    rows = [reconnected("a", 0.1, retry_ms=1000.0), reconnected("b", 0.2, retry_ms=500.0),
            reconnected("c", 0.3, retry_ms=500.0), reconnected("d", 0.4, retry_ms=None)]
    assert long_lived(rows).reconnect_hint_ms == 500.0
    assert long_lived([reconnected("a", 0.1, retry_ms=None)]).reconnect_hint_ms is None
    assert long_lived([reconnected("a", 0.1, retry_ms=700.0), reconnected("b", 0.1, retry_ms=300.0)]
                      ).reconnect_hint_ms == 700.0  # a tie: the larger


def test_no_reconnect_no_spread_and_the_figures_round_trip() -> None:
    none = long_lived([])
    assert (none.reconnect_spread_ms, none.reconnect_hint_ms) == (None, None)
    one = long_lived([reconnected("a", 0.25)])
    assert one.reconnect_spread_ms == 0.0
    f = long_lived([reconnected(f"u{i}", i / 10) for i in range(10)])
    assert LongLived.from_json(json.loads(json.dumps(f.to_json()))) == f
    assert Figures.from_json(Figures(long_lived=f).to_json()).long_lived == f
    # nearest rank of 10 values: p95 900 ms - p5 0 ms
    assert f.to_json()["reconnect_spread_ms"] == f.reconnect_spread_ms == 900.0


def test_the_summary_line_shows_the_spread_beside_the_hint() -> None:
    f = LongLived(users=2, opened=4, reconnects=2, reconnect_p50_ms=200.0, reconnect_p99_ms=480.0,
                  peak_reconnects_per_s=2, reconnect_spread_ms=430.0, reconnect_hint_ms=500.0)
    assert dict(f.rows())["reconnects"] == ("2, p50 200.0 ms, p99 480.0 ms, peak 2/s, "
                                           "spread p5-p95 430.0 ms (hint 500.0 ms)")
