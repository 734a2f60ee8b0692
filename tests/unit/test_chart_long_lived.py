"""chart.png: with long-lived users, a fourth panel draws the connections open per version."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sandbox.results.chart import write_chart
from sandbox.results.model import Exposure, Figures, Report, Rollout, Second, Span
from sandbox.results.verdict import verdict


def report(long_lived: bool) -> Report:
    run = Rollout(strategy="one-at-a-time", from_version="v1", to_version="v2", outcome="completed")
    seconds = tuple(Second(t, {"v1": 10 - t, "v2": t}, 0, 12.0,
                           {"v1": 40 - 4 * t, "v2": 4 * t} if long_lived else {}) for t in range(10))
    figures = Figures(exposure=Exposure(from_version="v1", to_version="v2", timeline=seconds),
                      window=Span(1000.0, 1010.0, 10.0))
    return Report(run, figures, verdict(run, figures))


def test_the_open_connections_panel_only_with_long_lived_figures(tmp_path: Path) -> None:
    plain = write_chart(report(False), tmp_path / "plain.png")
    with_ll = write_chart(report(True), tmp_path / "ll.png")
    with Image.open(plain) as a, Image.open(with_ll) as b:
        assert a.size == (1100, 750) and b.size == (1100, 900), (a.size, b.size)
