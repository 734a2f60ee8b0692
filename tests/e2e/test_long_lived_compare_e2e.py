"""`compare` with long-lived users: each strategy's row carries the long-lived figures, and the
table gains their columns. Two graceful strategies on fresh fleets of 3 (dynamic LB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e


def test_compare_shows_the_long_lived_figures_per_strategy(cli: Cli, tmp_path: Path) -> None:
    proc = cli.run("compare", "--size", "3", "--port", str(cli.port), "--strategies", "one-at-a-time,blue-green",
                   "--users", "4", "--ws-users", "4", "--sse-users", "2", "--warmup", "3", "--cooldown", "3",
                   "--report", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = {line["strategy"]: line for line in json.loads(proc.stdout)["rows"]}
    assert set(table) == {"one-at-a-time", "blue-green"}, proc.stderr
    for name, line in table.items():
        assert line["verdict"] == "PASS", (name, line)
        assert line["ll_abnormal_closes"] == 0 and line["ll_messages_lost"] == 0, (name, line)
        # every user began on a v1 server; each was closed by it and came back to a v2 one
        assert line["ll_users_switched"] == 6 and line["ll_peak_reconnects_per_s"] >= 1, (name, line)
        assert line["ll_reconnect_p99_ms"] is not None and line["ll_reconnect_p99_ms"] > 0, (name, line)
    header = (tmp_path / "compare.md").read_text().splitlines()[0]
    assert "ll abnormal" in header and "reconnect p99 ms" in header and "ll switched" in header, header
